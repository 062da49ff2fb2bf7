"""The reference loader: a torch DataLoader with workers, pinned memory, non-blocking copies.

Workers decode JPEGs with `torchvision.io.decode_jpeg` and augment uint8 tensors with
`transforms.v2` (≈1.7x the PIL + v1 transforms path of the official codes on 2 cores). Each
image is decoded once and augmented into every view. The augmentation of a sample is a pure
function of (seed, epoch, slot in the epoch): each sample's draws run under its own seed (the
process's RNG state is put back afterwards), so the images do not depend on the number of
workers and a run resumed mid-epoch sees exactly the images an uninterrupted run would have seen.
`augment.policy` (RandAugment / TrivialAugmentWide / AutoAugment, torchvision v2's, on uint8) runs
last in each training view's pipeline, after the crop and flip, and under the same per-sample seed.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from fasttrain.batch import Batch
from fasttrain.compat import quiet_tvio_deprecation
from fasttrain.data.index import DatasetError, LTDataset
from fasttrain.loaders.base import LoaderBackend, register_backend, view_augments


def build_transform(augment, train: bool, is_file_dataset: bool):
    """The v2 pipeline on uint8 CHW tensors for one view (None = identity)."""
    from torchvision.transforms import v2

    if not train:
        # In-memory arrays (CIFAR) are evaluated as stored, unless training crops them ImageNet-style to
        # crop_size (e.g. CIFAR upscaled to 224 for a pretrained ViT): then the eval resize + centre crop too.
        if not is_file_dataset and augment.train != "imagenet":
            return None
        return v2.Compose([v2.Resize(augment.eval_resize, antialias=True), v2.CenterCrop(augment.crop_size)])
    ops: list = []
    if augment.train == "cifar":
        ops.append(_PadCrop(augment.crop_padding))
        if augment.flip:
            ops.append(v2.RandomHorizontalFlip())
    elif augment.train == "imagenet":
        ops.append(v2.RandomResizedCrop(augment.crop_size, scale=tuple(augment.rrc_scale),
                                        ratio=tuple(augment.rrc_ratio), antialias=True))
        if augment.color_jitter > 0 or augment.color_jitter_hue > 0:
            s = augment.color_jitter
            ops.append(v2.RandomApply([v2.ColorJitter(s, s, s, augment.color_jitter_hue)], p=augment.color_jitter_p))
        if augment.grayscale_p > 0:
            ops.append(v2.RandomGrayscale(p=augment.grayscale_p))
        if augment.blur_p > 0:
            ops.append(v2.RandomApply([v2.GaussianBlur(23, sigma=(0.1, 2.0))], p=augment.blur_p))
        if augment.flip:
            ops.append(v2.RandomHorizontalFlip())
    elif is_file_dataset:  # "none" on a file dataset still needs a fixed size to batch
        ops.append(v2.Resize(augment.eval_resize, antialias=True))
        ops.append(v2.CenterCrop(augment.crop_size))
    policy = policy_transform(augment)
    if policy is not None:
        ops.append(policy)
    return v2.Compose(ops) if ops else None


def policy_transform(augment):
    """torchvision v2's op for `augment.policy` (None for "none"), with its keys; on uint8 images,
    fill 0 and nearest interpolation (torchvision's defaults)."""
    from torchvision.transforms import v2

    policy = getattr(augment, "policy", "none")
    if policy == "none":
        return None
    if policy == "randaugment":
        return v2.RandAugment(num_ops=augment.policy_num_ops, magnitude=augment.policy_magnitude,
                              num_magnitude_bins=augment.policy_magnitude_bins)
    if policy == "trivialaugment":
        return v2.TrivialAugmentWide(num_magnitude_bins=augment.policy_magnitude_bins)
    if policy == "autoaugment":
        return v2.AutoAugment(policy=v2.AutoAugmentPolicy(augment.autoaugment_policy))
    raise ValueError(f"augment.policy: loader.backend=torch has no policy {policy!r}")


class _PadCrop(torch.nn.Module):
    """RandomCrop(size = input size, padding=p) with zero fill, as in the CIFAR recipes."""

    def __init__(self, padding: int):
        super().__init__()
        self.padding = padding

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import v2

        return v2.RandomCrop(img.shape[-2:], padding=self.padding)(img)


class _ViewsDataset(Dataset):
    """Item (slot, index) -> (uint8 views (V,3,H,W), label): decode once, augment V times, view v
    with its own transform (`transforms[v]`: the per-view augmentation of `augment.views`)."""

    def __init__(self, dataset: LTDataset, transforms: list, seed: int):
        self.ds = dataset
        self.transforms = transforms
        self.num_views = len(transforms)
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ds)

    def _load(self, index: int) -> torch.Tensor:
        if self.ds.images is not None:
            return torch.from_numpy(self.ds.images[index]).permute(2, 0, 1)
        from torchvision.io import ImageReadMode, decode_jpeg, decode_image, read_file

        path = self.ds.paths[index]
        # Scoped here rather than as an import-time filter, so importing this module changes no
        # warning settings (read_file warns too, not only the decoders).
        with quiet_tvio_deprecation():
            try:
                data = read_file(path)
            except (RuntimeError, OSError) as exc:
                raise DatasetError(f"{path}: cannot read image ({exc})") from None
            try:
                return decode_jpeg(data, mode=ImageReadMode.RGB)
            except RuntimeError:
                try:  # not a JPEG (PNG etc.)
                    return decode_image(data, mode=ImageReadMode.RGB)
                except RuntimeError as exc:
                    raise DatasetError(f"{path}: cannot decode image ({exc})") from None

    def __getitem__(self, item: tuple[int, int]):
        slot, index = item
        img = self._load(index)
        views = []
        for v, transform in enumerate(self.transforms):
            if transform is not None:
                # Per-sample seed: the augmentation depends on (seed, epoch, slot, view) only.
                # torchvision's transforms draw from the global generator only, so the seed is
                # scoped: fork_rng puts the process's RNG back afterwards (with num_workers=0 this
                # runs in the training process, whose own draws must not restart per sample).
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(hash((self.seed, self.epoch, slot, v)) & 0x7FFF_FFFF_FFFF)
                    views.append(transform(img))
            else:
                views.append(img)
        return torch.stack(views), int(self.ds.labels[index]), index


def _collate(items):
    views = torch.stack([it[0] for it in items], dim=1)  # (V, B, 3, H, W)
    labels = torch.tensor([it[1] for it in items], dtype=torch.long)
    index = torch.tensor([it[2] for it in items], dtype=torch.long)
    return views, labels, index


@register_backend("torch")
class TorchLoader(LoaderBackend):
    # The reference backend: in-memory arrays and image files alike.
    reads = ("arrays", "files")
    policies = ("randaugment", "trivialaugment", "autoaugment")  # torchvision v2's, per view (policy_transform)

    def __init__(self, dataset: LTDataset, samplers, *, batch_size: int, num_views: int, device,
                 augment, loader, train: bool, seed: int = 0):
        self._init_streams(dataset, samplers, batch_size, loader.drop_last if train else False)
        self.device = torch.device(device)
        files = dataset.paths is not None
        per_view = view_augments(augment, num_views, train)
        if all(a is augment for a in per_view):  # one transform object shared, as without augment.views
            transforms = [build_transform(augment, train, files)] * num_views
        else:
            transforms = [build_transform(a, train, files) for a in per_view]
        self.views = _ViewsDataset(dataset, transforms, seed)
        self.loader_cfg = loader
        self.set_epoch(0)

    def on_epoch(self, epoch: int) -> None:
        self.views.epoch = epoch

    def _batches(self) -> list[list[tuple[int, int]]]:
        """Per step from `position` on, the (slot, index) items of all streams, stream-major. A row's
        slot is its place in the epoch (stream s, position p of its order: s x epoch length + p),
        which seeds its augmentation."""
        out = []
        rows = self.rows.tolist()
        for step in range(self.position, len(self.step_sizes)):
            n, span = self.step_sizes[step], self.step_span(step)
            first = step * self.stream_batch  # position in each stream's order of the step's first row
            out.append([(s * self.epoch_length + first + i, rows[span.start + s * n + i])
                        for s in range(self.num_streams) for i in range(n)])
        return out

    def __iter__(self):
        workers = self.loader_cfg.num_workers
        kwargs = {}
        if workers > 0:
            kwargs = dict(prefetch_factor=self.loader_cfg.prefetch_factor, persistent_workers=False)
        dl = DataLoader(self.views, batch_sampler=self._batches(), num_workers=workers,
                        collate_fn=_collate, pin_memory=self.loader_cfg.pin_memory and self.device.type == "cuda",
                        **kwargs)
        stream_of = None
        for views, labels, index in dl:
            b = labels.shape[0] // self.num_streams
            if stream_of is None or stream_of.shape[0] != labels.shape[0]:
                stream_of = torch.arange(self.num_streams, device=self.device).repeat_interleave(b)
            nb = self.device.type == "cuda"
            batch = Batch(
                views=[v.to(self.device, non_blocking=nb).contiguous(memory_format=torch.channels_last)
                       for v in views],
                labels=labels.to(self.device, non_blocking=nb),
                stream=stream_of,
                num_streams=self.num_streams,
                geometry=[None] * len(views),
                index=index.to(self.device, non_blocking=nb),
            )
            self.position += 1
            yield batch
        self.position = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.set_epoch(state["epoch"])
        self.position = state["position"]
