"""The loaders the loader suite compares fasttrain's backends against: the official codes' PIL
pipelines, and the decode-only ceilings (read + decode every image, nothing else).

Each has the same face as a backend for the timing loop: `set_epoch(e)` and iteration giving
batches whose `views[0]` has the batch rows first.
"""
from __future__ import annotations

import torch

from fasttrain.data.index import LTDataset


class _Views:
    """A batch as the timing loop sees it: only the views' row count matters."""

    def __init__(self, views):
        self.views = views


class _PILDataset(torch.utils.data.Dataset):
    """The official codes' per-sample pipeline: PIL image → torchvision v1 transforms → float
    tensors, applied `views` times to one decoded image (GLMC's TwoCropTransform)."""

    def __init__(self, ds: LTDataset, views: int, transform):
        self.ds, self.views, self.t = ds, views, transform

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        from PIL import Image

        if self.ds.images is not None:  # CIFAR: the official datasets build PIL images from the arrays
            img = Image.fromarray(self.ds.images[i])
        else:
            with open(self.ds.paths[i], "rb") as f:
                img = Image.open(f).convert("RGB")
        return [self.t(img) for _ in range(self.views)], int(self.ds.labels[i])


def official_transform(ds: LTDataset, crop: int):
    """GLMC's training transform: CIFAR RandomCrop(32, 4) + flip, ImageNet-style
    RandomResizedCrop + flip; then ToTensor + Normalize with the dataset's statistics."""
    from torchvision import transforms as T

    geometry = ([T.RandomCrop(32, padding=4)] if ds.images is not None else [T.RandomResizedCrop(crop)])
    return T.Compose(geometry + [T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(ds.mean, ds.std)])


class OfficialLoader:
    """A torch DataLoader over `_PILDataset` in the sampler's order (the official loaders use
    the same DataLoader; only the order comes from our sampler, so every loader sees the same rows)."""

    def __init__(self, ds: LTDataset, sampler, *, batch_size: int, views: int, workers: int, crop: int):
        self.sampler = sampler
        self.data = _PILDataset(ds, views, official_transform(ds, crop))
        self.args = dict(batch_size=batch_size, num_workers=workers, prefetch_factor=2 if workers else None)

    def set_epoch(self, e: int) -> None:
        self.order = self.sampler.order(e).tolist()

    def __iter__(self):
        return (_Views(views) for views, _ in torch.utils.data.DataLoader(self.data, sampler=self.order, **self.args))


class _DecodeDataset(torch.utils.data.Dataset):
    def __init__(self, ds: LTDataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> int:
        from torchvision.io import decode_jpeg, read_file

        from fasttrain.compat import quiet_tvio_deprecation

        with quiet_tvio_deprecation():
            decode_jpeg(read_file(self.ds.paths[i]))
        return 0


class TorchDecodeOnly:
    """DataLoader workers: read + torchvision decode_jpeg at full size, nothing else."""

    def __init__(self, ds: LTDataset, sampler, batch_size: int, workers: int):
        self.ds, self.sampler, self.bs, self.workers = ds, sampler, batch_size, workers

    def set_epoch(self, e: int) -> None:
        self.order = self.sampler.order(e).tolist()

    def __iter__(self):
        dl = torch.utils.data.DataLoader(_DecodeDataset(self.ds), sampler=self.order, batch_size=self.bs,
                                         num_workers=self.workers, collate_fn=len,
                                         prefetch_factor=2 if self.workers else None)
        return (_Views([torch.empty(n, 0)]) for n in dl)


class DaliDecodeOnly:
    """DALI's CPU decoder over the same files (its file reader, no resize)."""

    def __init__(self, ds: LTDataset, sampler, batch_size: int, threads: int):
        import nvidia.dali.fn as fn
        from nvidia.dali import Pipeline

        pipe = Pipeline(batch_size=batch_size, num_threads=threads, device_id=None, prefetch_queue_depth=2)
        with pipe:
            jpegs, _ = fn.readers.file(files=list(ds.paths), labels=[int(x) for x in ds.labels],
                                       random_shuffle=True, name="files")
            pipe.set_outputs(fn.decoders.image(jpegs, device="cpu"))
        pipe.build()
        self.pipe = pipe

    def set_epoch(self, e: int) -> None:
        pass

    def __iter__(self):
        while True:
            (out,) = self.pipe.run()
            yield _Views([torch.empty(len(out), 0)])


class FfcvDecodeOnly:
    """The ffcv backend's decoder with the stored image as its output (the corpus has one size),
    decoded straight into FFCV's reused batch buffers (each batch is dropped before the next)."""

    def __init__(self, beton: str, sampler, batch_size: int, workers: int, fast_dct: bool = False):
        import numpy as np

        from fasttrain.loaders import ffcv_pipeline as fp

        self.sampler = sampler
        decoder = fp.ViewsDecoder(fp.IDENTITY, 1, None, seed=0, fast_dct=fast_dct)
        self.order = fp.SamplerOrder(np.zeros(0, np.uint64))
        self.loader, _ = fp.build(beton, batch_size, decoder, self.order, device=torch.device("cpu"),
                                  workers=workers, os_cache=True, batches_ahead=3, own_output=False)

    def set_epoch(self, e: int) -> None:
        self.order.rows = self.sampler.order(e).numpy().astype("uint64")

    def __iter__(self):
        from fasttrain.loaders.ffcv import _stop

        it = iter(self.loader)
        try:
            for (x,) in it:
                yield _Views([torch.empty(len(x), 0)])
        finally:  # a pass ends early: stop FFCV's producer thread
            _stop(it)
