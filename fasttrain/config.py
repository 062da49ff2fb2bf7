"""Typed run configuration loaded from YAML.

A config file is a nested mapping whose sections mirror the dataclasses below. It may name a
`base:` file (relative to itself) that it extends; CLI overrides `section.key=value` are
applied last. Every key is checked: an unknown key is an error naming the file, the key path
and the closest valid key; a wrong type or impossible value names the key, what was expected
and what was given. The method section is typed by the method's own dataclass (looked up in
the methods registry by `method.name`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fasttrain.augment import ERASING_MODES
from fasttrain.data import DATASETS
from fasttrain.kernels.mix import IMPLS as MIX_IMPLS
from fasttrain.kernels.soft_ce import IMPLS as LOSS_IMPLS
from fasttrain.loaders import AUGMENT_POLICIES, AUTOAUGMENT_POLICIES, BACKENDS, policy_refusal
from fasttrain.methods import METHODS
from fasttrain.models import BACKBONES, HEAD_INITS, HEAD_KINDS, PEFT_MODES, check_model_config
from fasttrain.samplers import SAMPLERS
from fasttrain.schedules import SCHEDULES
from fasttrain.schema import ConfigError, build_dataclass, option, suggest
from fasttrain.shipped import resolve_config


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    # cifar10_lt | cifar100_lt | imagenet_lt | inat2018 | places_lt | folder | synthetic
    dataset: str = "cifar10_lt"
    root: str = "data"  # dataset root folder
    imbalance_ratio: float = 100.0  # rho = n_max / n_min (CIFAR only)
    cifar_split: str = "ldam"  # ldam (seed-0 shuffle, first n_i) | glmc (choice w/o replacement)
    split_seed: int | None = None  # None: 0 for ldam, the run seed for glmc (as in the codes)
    train_list: str | None = None  # list files; None = the shipped/standard one
    test_list: str | None = None  # eval list file; None = the shipped/standard one
    val_list: str | None = None  # val list file (model selection, eval_split: val); None = the shipped one
    eval_split: str = "test"  # test | val (list-file datasets)
    few_shot_rule: str = "<20"  # <20 (standard OLTR) | <=20 (GLMC's code)
    num_classes: int | None = None  # synthetic corpus only
    synthetic_max_per_class: int = 40  # synthetic corpus: images of the largest class
    synthetic_imbalance: float = 10.0  # synthetic corpus: n_max / n_min
    synthetic_test_per_class: int = 4  # synthetic corpus: test images per class
    synthetic_size: list[int] = field(default_factory=lambda: [500, 400])  # width, height


@dataclass
class AugmentConfig:
    # cifar (pad-4 crop + flip) | imagenet (RandomResizedCrop + ...) | none
    train: str = "cifar"
    crop_padding: int = 4  # cifar: zero padding of the random crop
    crop_size: int = 224  # imagenet: output size of RandomResizedCrop / the eval centre crop
    rrc_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop area range
    rrc_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])  # RandomResizedCrop aspect range
    color_jitter: float = 0.0  # brightness = contrast = saturation strength; 0 = off
    color_jitter_p: float = 1.0  # probability of applying the colour jitter
    color_jitter_hue: float = 0.0  # hue jitter factor h <= 0.5 (torchvision's; DALI gets h*360 degrees); 0 = off
    grayscale_p: float = 0.0  # probability of RandomGrayscale
    blur_p: float = 0.0  # probability of GaussianBlur(23, sigma 0.1-2)
    flip: bool = True  # random horizontal flip
    eval_resize: int = 256  # eval: resize the short side, then centre-crop crop_size
    # Test-time ensembling: none | fivecrop (LIFT's: the eval images are resized and centre-cropped to
    # crop_size + eval_tte_expand, the model sees their four corner and centre crop_size crops, and the
    # five logits are averaged; eval_resize is not used)
    eval_tte: str = option("none", choices=("none", "fivecrop"))
    eval_tte_expand: int = option(24, gt=0)  # fivecrop: how much larger than crop_size the eval image is (LIFT: 24)
    mean: list[float] | None = None  # None = the dataset's standard statistics
    std: list[float] | None = None  # None = the dataset's standard statistics
    mix_impl: str = "auto"  # normalise/mix kernel dispatch: auto (Triton on CUDA) | triton | torch
    # Automatic augmentation policy of every training view: none | randaugment | trivialaugment | autoaugment;
    # applied by the loader on uint8 after the crop and flip (torch: torchvision v2's RandAugment /
    # TrivialAugmentWide / AutoAugment; dali: nvidia.dali.auto_aug's); tensor and ffcv refuse it by name
    policy: str = option("none", choices=AUGMENT_POLICIES)
    policy_num_ops: int = option(2, ge=1)  # randaugment: operations per image (torchvision's num_ops)
    policy_magnitude: int = option(9, ge=0)  # randaugment: magnitude bin of every operation, < policy_magnitude_bins
    policy_magnitude_bins: int = option(31, ge=2)  # randaugment / trivialaugment: number of magnitude bins
    autoaugment_policy: str = option("imagenet", choices=AUTOAUGMENT_POLICIES)  # autoaugment: imagenet | cifar10 | svhn
    # RandomErasing (timm's definition): probability of erasing one box of each training image, 0 = off;
    # done by the augmenter on the device for every loader backend, after normalisation (and after
    # MixUp / CutMix), per sample and view; draws keyed by (seed, rank, epoch, step, view): exact resume
    random_erasing: float = option(0.0, ge=0, le=1)
    # RandomErasing's fill of the box: const (zeros) | rand (one N(0, 1) value per channel) | pixel (N(0, 1)
    # per pixel), in normalised units
    random_erasing_mode: str = option("const", choices=ERASING_MODES)
    random_erasing_scale: list[float] = field(default_factory=lambda: [0.02, 0.33])  # erased area / image area range
    random_erasing_ratio: list[float] = field(default_factory=lambda: [0.3, 3.3])  # erased box height / width range
    # Per-view training augmentation (SSD's query / key views): one mapping of overrides of the keys
    # above per view, e.g. [{}, {rrc_scale: [0.2, 1.0], grayscale_p: 0.2}]; [] = every view the same
    views: list[dict] = field(default_factory=list)


@dataclass
class LoaderConfig:
    backend: str = "torch"  # torch | tensor | dali
    # rows per stream per step per process: the value you set (a loader step holds batch_size x streams rows,
    # GLMC has 2 streams); torchrun: global = x processes
    batch_size: int = 64
    eval_batch_size: int = 256  # rows per evaluation step
    num_workers: int = 2  # torch backend: DataLoader worker processes
    pin_memory: bool = True  # torch backend: pinned host memory for the copy to CUDA
    prefetch_factor: int = 2  # torch backend: batches prefetched per worker
    drop_last: bool = False  # drop the last partial training batch
    sampler: str = "instance"  # instance | class_balanced | power | class_aware | sqrt
    sampler_q: float = 1.0  # exponent for the power-law sampler (weights n_c^-q)
    class_aware_k: int = 2  # class_aware sampler: samples per drawn class
    dali_threads: int = 4  # dali: CPU threads
    dali_prefetch: int = 2  # dali: batches prepared ahead
    skip_corrupt: bool = False  # dali: skip and count unreadable JPEGs instead of failing
    dali_normalize: bool = False  # dali, 1 view, no mixing: normalised float straight from DALI
    dali_roi_decode: bool = True  # dali, 1-view training: decode only the crop window
    dali_antialias: bool = True  # antialiased downscaling like torchvision (false: faster on CPU)
    dali_reader_thread: bool = True  # read file bytes in a background thread
    ffcv_path: str | None = None  # ffcv: .beton of the training split (convert-ffcv); null = cached conversion
    ffcv_eval_path: str | None = None  # ffcv: .beton of the evaluation split; null = cached conversion
    ffcv_cache_dir: str | None = None  # ffcv: where automatic conversions go; null = beside the data
    ffcv_convert: bool = True  # ffcv: convert a split that has no .beton yet (false: error)
    ffcv_write_mode: str = "auto"  # ffcv conversion: auto (raw arrays, jpg files) | jpg | raw | proportion
    ffcv_max_resolution: int | None = None  # ffcv conversion: bound the longer side; null = keep
    ffcv_jpeg_quality: int = 90  # ffcv conversion: quality of re-encoded JPEGs
    ffcv_compress_probability: float = 0.5  # ffcv conversion, proportion mode: share stored as JPEG
    ffcv_workers: int | None = None  # ffcv: decode threads / conversion processes; null = all cores
    ffcv_os_cache: bool = True  # ffcv: read through the OS page cache (false: FFCV's process cache)
    ffcv_quasi_random: bool = False  # ffcv: page-local reordering of each stream (same samples per epoch)
    ffcv_batches_ahead: int = 3  # ffcv: batches decoded ahead
    ffcv_fast_dct: bool = False  # ffcv: fast integer IDCT (FFCV's choice; ~0.8 levels darker) vs accurate
    ffcv_resize: str = "auto"  # ffcv: auto (bilinear up to 2x downscale, INTER_AREA beyond) | linear | area


@dataclass
class ModelConfig:
    # A name or family of fasttrain.models.BACKBONES: resnet32 | resnet32_w4 | resnet10 | resnet50 |
    # resnext50_32x4d | timm/<name>[.<tag>] | torchvision/<name> | open_clip/<arch>
    arch: str = "resnet32"
    arch_kwargs: dict = field(default_factory=dict)  # library constructor arguments, e.g. {img_size: 64}
    # Model weights and inputs in torch.channels_last (NHWC) memory format: true | false (contiguous
    # NCHW) | auto (per device: fasttrain.environment.AUTO_CHANNELS_LAST)
    channels_last: bool | str = "auto"
    init_from: str | None = None  # checkpoint whose model weights initialise this run
    # Backbone weights when the run starts fresh: a .pth / .pt / .safetensors file, or
    # `library` / `library:<tag>` for torchvision's / timm's / open_clip's own weights (local cache first).
    pretrained: str | None = None
    pretrained_ignore: list[str] = field(default_factory=list)  # fnmatch patterns of file keys to drop
    pretrained_prefix: str = ""  # take only file keys under this prefix, stripped (e.g. backbone.net.)
    pretrained_strict: bool = True  # every trunk weight from the file, every file key used
    freeze: str | None = None  # null | trunk | a trunk module: freeze up to and including it
    freeze_bn: str = "eval"  # the frozen part while training: eval (fixed statistics) | train
    drop_modules: list[str] = field(default_factory=list)  # trunk modules replaced by Identity, e.g. [layer4.2]
    extra_block: str | None = None  # null | bottleneck: a trainable block on the trunk's feature map
    # What of the backbone trains: none (model.freeze decides) | full | linear_probe (heads only) | bitfit
    # (biases) | lora (q/v of ViT blocks) | adaptformer (bottleneck MLP beside each block's MLP) |
    # vpt_shallow | vpt_deep (prompt tokens); the rest of the backbone is frozen
    peft: str = option("none", choices=PEFT_MODES)
    # LoRA rank r of the q and v updates; null = LIFT's rule 2^floor(log2(classes / (2 x blocks)))
    peft_rank: int | None = option(None, gt=0)
    lora_alpha: float = option(1.0, gt=0)  # LoRA updates scaled by lora_alpha / rank (LIFT: 1, i.e. 1/r)
    adaptformer_dim: int | None = option(None, gt=0)  # AdaptFormer bottleneck width; null = LIFT's rule as peft_rank
    adaptformer_scale: float = 1.0  # AdaptFormer's scale s of the adapter output (its initial value when learnt)
    # s is a trainable scalar (LIFT, from 1.0) | false: fixed (the AdaptFormer paper: 0.1)
    adaptformer_learn_scale: bool = True
    vpt_length: int = option(10, gt=0)  # VPT: prompt tokens per prompted block (LIFT: 10)
    # The classifier of the one-head methods (ce, logit_adjust, balanced_softmax, fbl): linear (nn.Linear) |
    # cosine (scale x cosine of feature and class weight: LIFT's classifier)
    head: str = option("linear", choices=HEAD_KINDS)
    head_scale: float = option(25.0, gt=0)  # cosine head: the logit scale (LIFT: 25)
    head_learn_scale: bool = False  # cosine head: the scale is a trainable scalar starting at head_scale
    # How that head starts: random | text (its weights are the normalised text features of head_prompt per
    # class name, from the text tower of an open_clip/<arch> backbone: LIFT's initialisation)
    head_init: str = option("random", choices=HEAD_INITS)
    head_prompt: str = "a photo of a {}."  # head_init text: the prompt; {} is replaced by the class name


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw (torch's AdamW: decoupled weight decay)
    lr: float = 0.1  # base learning rate
    momentum: float = 0.9  # SGD momentum
    # L2 weight decay (SGD; AdamW's decoupled decay) of every trainable parameter, or of the decayed ones
    # only under optim.no_decay
    weight_decay: float = 2e-4
    nesterov: bool = False  # Nesterov momentum
    fused: bool = True  # torch fused SGD / AdamW on CUDA
    apex: bool = False  # apex FusedSGD when importable (SGD only)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW: (beta1, beta2)
    eps: float = option(1e-8, gt=0)  # AdamW: denominator epsilon
    # Exclude norm weights, biases (every 1-d parameter) and the backbone's token / position-embedding
    # parameters (timm's no_weight_decay()) from weight decay: auto = true for adamw, false for sgd
    no_decay: bool | str = "auto"
    # Layer-wise lr decay for timm backbones with a layer grouping (ViTs, timm CNNs): each group's lr is
    # lr x layer_decay^(depth below the head), by timm's group_matcher; null = off
    layer_decay: float | None = option(None, gt=0, le=1)
    clip_grad_norm: float | None = option(None, gt=0)  # max global L2 norm of the gradients per step; null = off


@dataclass
class ScheduleConfig:
    # constant | cosine | warmup_cosine | multistep | code_offbyone (GLMC ImageNet) | warmup_multistep
    name: str = "cosine"
    warmup_epochs: int = 0  # linear warm-up (e+1)/W for the warmup_* schedules
    milestones: list[int] = field(default_factory=list)  # multistep: 0-indexed epochs of each drop
    gamma: float = 0.1  # multistep: factor per milestone passed
    min_lr: float = 0.0  # cosine family: the floor the lr decays to
    per_step: bool = False  # update the lr every step instead of every epoch


@dataclass
class EmaConfig:
    """train.ema: an exponential moving average of the model's weights (parameters and float buffers),
    updated after every optimizer step and evaluated beside the raw model every evaluation."""

    decay: float | None = option(None, ge=0, le=1)  # EMA decay per optimizer step, e.g. 0.9998; null = no EMA
    # Warm-up (timm's use_warmup): decay_t = 1 - (1 + t / warmup_gamma)^-warmup_power, within
    # [min_decay, decay]; t counts updates after update_after_step (the first one copies the weights)
    warmup: bool = False
    warmup_gamma: float = option(1.0, gt=0)  # warm-up: inverse gamma of the decay ramp
    warmup_power: float = option(2 / 3, gt=0)  # warm-up: power of the decay ramp (3/4 for shorter runs)
    min_decay: float = option(0.0, ge=0, le=1)  # warm-up: the lowest decay used
    update_after_step: int = option(0, ge=0)  # optimizer steps before the EMA averages (it copies until then)


@dataclass
class TrainConfig:
    epochs: int = 200  # epochs of this stage (0 only for post-hoc methods such as tau_norm)
    amp: str = "auto"  # auto (bf16 on CUDA and on CPUs with native bf16, else fp32) | bf16 | fp16 | fp32 (strict)
    compile: bool = False  # torch.compile the model's forward
    log_every: int = 50  # steps between train scalars (TensorBoard, progress bar)
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated)
    save_every: int = 1  # epochs between last.pt checkpoints (the last epoch always)
    max_steps_per_epoch: int | None = None  # for smoke tests and benchmarks
    deterministic: bool = False  # torch.use_deterministic_algorithms (warn only)
    # End this invocation cleanly after N epochs (last.pt saved; continue with --resume): for
    # jobs with a wall-time limit. The schedule still follows `epochs`.
    stop_after_epochs: int | None = None
    loss_impl: str = "auto"  # fused soft-label loss dispatch: auto (Triton on CUDA) | triton | torch
    # Checkpoints inside an epoch (exact mid-epoch resume: loader position + every RNG), besides the
    # epoch-end ones of save_every; either, both or neither (null).
    save_every_steps: int | None = None  # also write last.pt every N steps of an epoch
    save_every_minutes: float | None = None  # also write last.pt when M minutes passed since the last one
    # Which evaluation picks best.pt: auto = val where the dataset has a val split (ImageNet-LT, Places-LT,
    # a folder with val/), else test (CIFAR: the official codes' habit, which leaks the test set) | val | test | last
    select_on: str = "auto"
    # Multi-process (torchrun). loader.batch_size is per process: global batch = batch_size x processes.
    sync_bn: bool = False  # torchrun: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA only)
    grad_accum_steps: int = 1  # loader batches per optimizer step (gradients averaged; DDP syncs on the last)
    dist_timeout_s: float = 1800.0  # torchrun: seconds a collective waits for the other ranks, then fails
    ema: EmaConfig = field(default_factory=EmaConfig)  # weight EMA (timm's ModelEmaV3 semantics)
    # Whose evaluation picks best.pt and whose weights it holds: raw (the trained weights) | ema (the EMA
    # weights; needs train.ema.decay)
    select_model: str = "raw"


@dataclass
class LossConfig:
    """loss: settings of the methods' soft-label cross-entropy terms (train.loss_impl picks its kernel)."""

    # Every training method passes it to its soft-label CE terms (MixUp / CutMix targets are smoothed
    # after mixing; SSD's KD term keeps the teacher's targets); a method without such a term (focal
    # loss, MaxNorm's cb_softmax_bce) refuses a non-zero value. Post-hoc stages train nothing.
    label_smoothing: float = option(0.0, ge=0, le=1)  # label smoothing eps of the soft-label CE: target (1 - eps) t + eps / C, as F.cross_entropy(label_smoothing=eps); class weights multiply the smoothed target; 0 = off


@dataclass
class LogConfig:
    wandb: bool = False  # also log to Weights & Biases (pip install wandb)
    wandb_project: str = "fasttrain"  # W&B project
    wandb_entity: str | None = None  # W&B entity (team or user); None = your default
    wandb_tags: list[str] = field(default_factory=list)  # W&B run tags
    wandb_mode: str = "online"  # online | offline (sync later with `wandb sync`) | disabled


@dataclass
class StageConfig:
    """A later stage of a multi-stage run: overrides applied on top of the resolved run config."""

    name: str = "stage"
    overrides: dict = field(default_factory=dict)


@dataclass
class RunConfig:
    name: str = "run"  # the run directory is <out_dir>/<name>
    seed: int = 0  # seeds model init, samplers, augmentation and mixing draws
    device: str = "auto"  # auto (CUDA if present) | cpu | cuda | cuda:N
    out_dir: str = "runs"  # parent folder of run directories
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    log: LogConfig = field(default_factory=LogConfig)
    method: Any = None  # the method's own dataclass instance
    stages: list[StageConfig] = field(default_factory=list)  # later stages: [{name, overrides}] on top of this config


# --------------------------------------------------------------------------------------------
# Value checks: (key path) -> predicate, message
# --------------------------------------------------------------------------------------------

# Fixed enumerations of this module's own keys. Names that exist as registries elsewhere are
# never re-listed here: `choices()` reads them from their registries.
CHOICES = {
    "data.cifar_split": ["ldam", "glmc"],
    "data.few_shot_rule": ["<20", "<=20"],
    "data.eval_split": ["test", "val"],
    "augment.train": ["cifar", "imagenet", "none"],
    "optim.name": ["sgd", "adamw"],
    "optim.no_decay": ["auto", True, False],
    "train.select_model": ["raw", "ema"],
    "train.amp": ["auto", "bf16", "fp16", "fp32"],
    "train.select_on": ["auto", "val", "test", "last"],
    "model.channels_last": ["auto", True, False],
    "loader.ffcv_resize": ["auto", "linear", "area"],
    "log.wandb_mode": ["online", "offline", "disabled"],
}

DEFAULT_METHOD = "ce"  # method.name of a config that names none

# A key that moved: old path -> new path (an old config gets an error naming the new key).
MOVED = {"loader.mix_impl": "augment.mix_impl"}


def choices() -> dict[str, list[str]]:
    """Every key with a closed set of values -> the valid values (registries read at call time,
    so a backend or method registered by a plugin or a test is a valid choice at once)."""
    return {
        **CHOICES,
        "data.dataset": list(DATASETS),
        "loader.backend": list(BACKENDS),
        "loader.sampler": list(SAMPLERS),
        "augment.mix_impl": list(MIX_IMPLS),
        "train.loss_impl": list(LOSS_IMPLS),
        "schedule.name": list(SCHEDULES),
        "model.arch": list(BACKBONES),
        "method.name": list(METHODS),
    }


# Choice keys whose registry holds name families (`timm/<name>`): not a membership test; the
# registry's own check (fasttrain.models.check_model_config) names the closest valid names.
REGISTRY_CHECKED = {"model.arch"}

POSITIVE = {"loader.batch_size", "loader.eval_batch_size", "loader.class_aware_k",
            "train.log_every", "train.eval_every", "train.save_every", "augment.crop_size",
            "train.grad_accum_steps", "train.dist_timeout_s",
            "augment.eval_resize", "loader.dali_threads", "loader.prefetch_factor",
            "loader.dali_prefetch"}
NON_NEGATIVE = {"optim.lr", "optim.weight_decay", "optim.momentum", "loader.num_workers",
                "schedule.warmup_epochs", "augment.crop_padding", "augment.color_jitter",
                "schedule.min_lr"}
PROBABILITY = {"augment.grayscale_p", "augment.blur_p", "augment.color_jitter_p"}
# Keys one view may override (augment.views): what one view's training augmentation draws. The
# output size, the eval transform, normalisation and the kernel choice are shared by all views.
PER_VIEW_KEYS = ("train", "crop_padding", "rrc_scale", "rrc_ratio", "color_jitter", "color_jitter_p",
                 "color_jitter_hue", "grayscale_p", "blur_p", "flip")
MAX_HUE = 0.5  # torchvision's bound of the hue factor (half the colour circle)


def _check_values(cfg: RunConfig) -> None:
    def get(path: str) -> Any:
        obj: Any = cfg
        for part in path.split("."):
            obj = getattr(obj, part)
        return obj

    for path, valid in choices().items():
        if path in REGISTRY_CHECKED:
            continue
        if get(path) not in valid:
            raise ConfigError(f"{path}: expected one of {valid}, got {get(path)!r}"
                              f"{suggest(str(get(path)), [str(v) for v in valid])}")
    check_model_config(cfg.model)  # model.arch incl. families (closest names), pretrained/freeze forms
    for path in POSITIVE:
        if get(path) <= 0:
            raise ConfigError(f"{path}: expected a value > 0, got {get(path)!r}")
    for path in NON_NEGATIVE:
        if get(path) < 0:
            raise ConfigError(f"{path}: expected a value >= 0, got {get(path)!r}")
    for path in PROBABILITY:
        if not 0.0 <= get(path) <= 1.0:
            raise ConfigError(f"{path}: expected a probability in [0, 1], got {get(path)!r}")
    if cfg.data.imbalance_ratio < 1:
        raise ConfigError(f"data.imbalance_ratio: expected a value >= 1, got {cfg.data.imbalance_ratio!r}")
    if cfg.train.max_steps_per_epoch is not None and cfg.train.max_steps_per_epoch <= 0:
        raise ConfigError(f"train.max_steps_per_epoch: expected a value > 0 or null, got {cfg.train.max_steps_per_epoch!r}")
    for key in ("save_every_steps", "save_every_minutes"):
        value = getattr(cfg.train, key)
        if value is not None and value <= 0:
            raise ConfigError(f"train.{key}: expected a value > 0 or null, got {value!r}")
    _check_streams(cfg)
    _check_views(cfg)
    _check_label_smoothing(cfg)
    _check_head(cfg)
    _check_augment_policy(cfg)
    _check_optim(cfg)
    if cfg.method is not None and hasattr(cfg.method, "validate"):
        try:
            cfg.method.validate()
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(f"method: {exc}") from None


def _check_streams(cfg: RunConfig) -> None:
    """A method that draws its own streams would silently ignore the loader's sampler keys; a
    method with nothing to train runs no epochs, every other method at least one."""
    method = METHODS[cfg.method.name]
    if method.stage.trains and cfg.train.epochs <= 0:
        raise ConfigError(f"train.epochs: expected a value > 0, got {cfg.train.epochs!r}")
    if not method.stage.trains and cfg.train.epochs != 0:
        raise ConfigError(f"train.epochs: method {method.name} has nothing to train (post-hoc); set "
                          f"train.epochs: 0, got {cfg.train.epochs!r}")
    if not method.fixed_streams:
        return
    default = LoaderConfig()
    for key in ("sampler", "sampler_q", "class_aware_k"):
        if getattr(cfg.loader, key) != getattr(default, key):
            raise ConfigError(f"loader.{key}: method {method.name} draws its own sample streams and would ignore "
                              f"loader.{key}={getattr(cfg.loader, key)!r}; remove it (see the method's own keys)")


def _check_optim(cfg: RunConfig) -> None:
    """The optimizer keys that tie to others: AdamW's betas, layer decay's backbone, EMA selection."""
    betas = cfg.optim.betas
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"optim.betas: expected two values in [0, 1), got {betas!r}")
    if cfg.optim.layer_decay is not None and not cfg.model.arch.startswith("timm/"):
        raise ConfigError(f"optim.layer_decay: backbone {cfg.model.arch!r} has no layer grouping; layer-wise lr "
                          "decay needs a timm backbone (model.arch: timm/<name>, e.g. timm/vit_base_patch16_224); "
                          "set optim.layer_decay: null")
    if cfg.train.select_model == "ema" and cfg.train.ema.decay is None:
        raise ConfigError("train.select_model=ema: the run keeps no EMA; set train.ema.decay (e.g. 0.9998) or "
                          "train.select_model: raw")


def _check_augment_policy(cfg: RunConfig) -> None:
    """augment.policy's keys that tie together, the backend that applies it, and RandomErasing's ranges."""
    aug = cfg.augment
    if aug.policy == "randaugment" and aug.policy_magnitude >= aug.policy_magnitude_bins:
        raise ConfigError(f"augment.policy_magnitude: expected a bin below augment.policy_magnitude_bins="
                          f"{aug.policy_magnitude_bins}, got {aug.policy_magnitude!r}")
    if METHODS[cfg.method.name].stage.trains:
        reason = policy_refusal(cfg.loader.backend, aug, True)
        if reason:
            raise ConfigError(reason)
    if aug.eval_tte != "none" and cfg.loader.backend == "tensor":
        raise ConfigError(f"augment.eval_tte: {aug.eval_tte} needs eval images resized to crop_size + eval_tte_expand; "
                          "the tensor backend keeps them at their stored size: use loader.backend torch, dali or ffcv")
    lo_hi = aug.random_erasing_scale
    if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] <= 1:
        raise ConfigError("augment.random_erasing_scale: expected [low, high] with 0 < low <= high <= 1, "
                          f"got {lo_hi!r}")
    lo_hi = aug.random_erasing_ratio
    if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
        raise ConfigError(f"augment.random_erasing_ratio: expected [low, high] with 0 < low <= high, got {lo_hi!r}")


def _check_head(cfg: RunConfig) -> None:
    """model.head / head_init shape the one `fc` head of the methods that build it from the config;
    a method with heads of its own refuses them by name (a later stage keeps the head it continues)."""
    m = cfg.model
    if m.head == "linear" and m.head_init == "random":
        return
    method = METHODS[cfg.method.name]
    # A continuing stage keeps the head of the model it continues: the structure of method.base_method
    # (the previous stage's method inside a run, the user's choice when started alone).
    owner = METHODS.get(getattr(cfg.method, "base_method", None)) if method.continues_stage else method
    if owner is not None and not owner.configurable_head:
        by = f"method {method.name}" + (f" (method.base_method {owner.name})" if owner is not method else "")
        raise ConfigError(f"model.head: {m.head} / model.head_init: {m.head_init}, but {by} builds heads of its own; "
                          "model.head applies to ce, logit_adjust, balanced_softmax and fbl")
    if m.head != "linear" and getattr(cfg.method, "sigmoid", False):
        raise ConfigError(f"model.head: {m.head}, but method.sigmoid: true starts the classifier bias at "
                          "−log(C − 1) (Cui et al.'s code) and this head has no bias; use model.head: linear")


def _check_label_smoothing(cfg: RunConfig) -> None:
    """loss.label_smoothing is applied by the method's soft-label CE terms, or refused by name (never
    ignored); a post-hoc method trains nothing, so a later stage may inherit the run's value."""
    method = METHODS[cfg.method.name]
    if cfg.loss.label_smoothing == 0 or not method.stage.trains:
        return
    reason = method.label_smoothing_refusal(cfg.method)
    if reason:
        raise ConfigError(f"loss.label_smoothing: got {cfg.loss.label_smoothing!r}, but {reason}; set "
                          "loss.label_smoothing: 0")


def _check_view_value(key: str, value: Any, where: str) -> None:
    """The value checks of augment.<key>, for one view's override at `where`."""
    path = f"augment.{key}"
    valid = CHOICES.get(path)
    if valid is not None and value not in valid:
        raise ConfigError(f"{where}: expected one of {valid}, got {value!r}{suggest(str(value), valid)}")
    if path in NON_NEGATIVE and value < 0:
        raise ConfigError(f"{where}: expected a value >= 0, got {value!r}")
    if path in PROBABILITY and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}: expected a probability in [0, 1], got {value!r}")
    if key == "color_jitter_hue" and not 0.0 <= value <= MAX_HUE:
        raise ConfigError(f"{where}: expected a hue factor in [0, {MAX_HUE}], got {value!r}")


def _check_views(cfg: RunConfig) -> None:
    """augment.color_jitter_hue, and augment.views: one override mapping per view of the method,
    each key a per-view AugmentConfig key with a valid value. The overrides are stored typed."""
    aug = cfg.augment
    _check_view_value("color_jitter_hue", aug.color_jitter_hue, "augment.color_jitter_hue")
    if not aug.views:
        return
    method = METHODS[cfg.method.name]
    if len(aug.views) != method.num_views:
        raise ConfigError(f"augment.views: {len(aug.views)} per-view entries, but method {method.name} uses "
                          f"{method.num_views} view(s); give one entry per view, or [] (a later stage with "
                          "fewer views sets `augment: {views: []}` in its overrides)")
    fields = [f.name for f in dataclasses.fields(AugmentConfig)]
    base = {k: v for k, v in to_dict(aug).items() if k != "views"}
    typed = []
    for i, over in enumerate(aug.views):
        where = f"augment.views[{i}]"
        for key in over:
            if key not in fields:
                raise ConfigError(f"unknown key {where + '.' + str(key)!r}{suggest(str(key), list(PER_VIEW_KEYS))}")
            if key not in PER_VIEW_KEYS:
                raise ConfigError(f"{where}.{key}: not a per-view key (every view shares it); per-view keys: "
                                  f"{', '.join(PER_VIEW_KEYS)}")
        view = build_dataclass(AugmentConfig, {**base, **over}, where)
        for key in over:
            _check_view_value(key, getattr(view, key), f"{where}.{key}")
        typed.append({key: getattr(view, key) for key in over})
    aug.views = typed


def _check_moved(raw: dict) -> None:
    for old, new in MOVED.items():
        section, key = old.split(".")
        if isinstance(raw.get(section), dict) and key in raw[section]:
            raise ConfigError(f"{old}: this key moved to {new}; write `{new}: {raw[section][key]}` instead")


# --------------------------------------------------------------------------------------------
# YAML loading: base files, overrides, the method section
# --------------------------------------------------------------------------------------------


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "overrides":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{path}: circular `base:` chain: {' -> '.join(map(str, chain + (path,)))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        what = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"{where}: invalid YAML: {what}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    parent = _read_yaml((path.parent / base), chain + (path,))
    return _deep_merge(parent, raw)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (['a', 'b'], parsed YAML scalar c)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, value = text.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = dict(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for k in keys[:-1]:
            nxt = node.get(k)
            nxt = dict(nxt) if isinstance(nxt, dict) else {}
            node[k] = nxt
            node = nxt
        node[keys[-1]] = value
    return raw


def config_from_dict(raw: dict, source: str = "<dict>") -> RunConfig:
    """Validate a raw mapping into a RunConfig; errors are prefixed with `source`."""
    raw = dict(raw)
    method_raw = raw.pop("method", None) or {"name": DEFAULT_METHOD}
    if not isinstance(method_raw, dict):
        raise ConfigError(f"{source}: method: expected a mapping with a `name`, got {method_raw!r}")
    method_raw = dict(method_raw)
    name = method_raw.pop("name", DEFAULT_METHOD)
    if name not in METHODS:
        raise ConfigError(f"{source}: method.name: unknown method {name!r}{suggest(str(name), list(METHODS))}")
    try:
        _check_moved(raw)
        cfg = build_dataclass(RunConfig, raw)
        cfg.method = build_dataclass(METHODS[name].config_class, method_raw, "method")
        cfg.method.name = name
        _check_values(cfg)
        for i, stage in enumerate(cfg.stages):  # each stage must resolve on its own
            stage_config(cfg, i)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML file, or a shipped config by name (`glmc/cifar10_lt_r100`), plus overrides."""
    try:
        path = resolve_config(path)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    raw = _read_yaml(Path(path))
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, str(path))


def to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def stage_config(cfg: RunConfig, index: int) -> RunConfig:
    """The resolved config of later stage `index`: the run config with the stage's overrides."""
    stage = cfg.stages[index]
    raw = to_dict(cfg)
    raw.pop("stages")
    method = raw.pop("method")
    over = dict(stage.overrides)
    if "method" in over:
        m = dict(over.pop("method"))
        if "name" in m and m["name"] != method["name"]:
            previous = method if index == 0 else to_dict(stage_config(cfg, index - 1).method)
            method = {**_base_of(previous, m["name"]), **m}
        else:
            method = {**method, **m}
    raw = _deep_merge(raw, over)
    raw["method"] = method
    raw["name"] = f"{cfg.name}/{stage.name}"
    return config_from_dict(raw, f"stages[{index}] ({stage.name})")


def _base_of(previous: dict, name: str) -> dict:
    """A later stage that continues the previous stage's model records that model's structure
    (`base_method` / `base_config`), so its checkpoint can be rebuilt and evaluated on its own."""
    if name not in METHODS or not METHODS[name].stage.continues or previous.get("name") not in METHODS:
        return {}
    prev = METHODS[previous["name"]]
    if not prev.stage.new_model:  # a head / post-hoc stage keeps its base; a distillation's own model is one
        return {"base_method": previous["base_method"], "base_config": previous["base_config"]}
    return {"base_method": previous["name"], "base_config": {k: v for k, v in previous.items() if k != "name"}}


def dump_config(cfg: RunConfig, path: Path, processes: int = 1) -> None:
    """The resolved config, headed by what its batch size means for this run."""
    data = to_dict(cfg)
    header = (
        f"# loader.batch_size is per process and per stream: this run has {processes} process(es), so one step "
        f"draws {cfg.loader.batch_size * processes} rows per stream over all processes "
        f"(x train.grad_accum_steps={cfg.train.grad_accum_steps} per optimizer step).\n")
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
