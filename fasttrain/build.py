"""The run builder: from a resolved config to the objects a run needs, and no more.

`build_run(cfg, training=False)` builds what evaluation needs: datasets, the augmenter, the
method, the model (with `model.init_from` weights) and the eval loader. `training=True` adds the
samplers and the train loader, the optimizer, the grad scaler and the compiled forward, packed as
the `Learner` that `fasttrain.step.train_step` uses. The trainer and the benchmarks both build
through here, so a benchmark times the run the trainer would train.

Construction order is fixed (datasets, method, loaders, then the model) so the model's random
init follows `seed` exactly as in earlier versions: loaders draw from their own generators.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass

import torch
import torch.nn as nn

from fasttrain import distributed
from fasttrain.augment import Augmenter, RandomErasing
from fasttrain.backbones import peft
from fasttrain.checkpoint import load_checkpoint
from fasttrain.config import RunConfig
from fasttrain.data import LTDataset, build_datasets
from fasttrain.data.classnames import prompt_class_names
from fasttrain.ema import build_ema
from fasttrain.environment import amp_dtype, resolve_channels_last, resolve_device, seed_everything
from fasttrain.loaders import build_loader
from fasttrain.methods import METHODS, Method, MethodContext, StreamSpec
from fasttrain.model_state import complete_weights, mark_pretrained_frozen, trainable_only
from fasttrain.models import HeadSpec, WeightsError, build_backbone, to_channels_last, to_contiguous
from fasttrain.optimizers import build_optimizer  # noqa: F401 - also fasttrain.build's name for it
from fasttrain.samplers import EvalShard, build_sampler
from fasttrain.step import Learner, MethodLoss

log = logging.getLogger("fasttrain")


@dataclass
class Run:
    """Everything built for one stage. `train_loader` and `learner` only when built for training."""

    cfg: RunConfig
    device: torch.device
    amp: torch.dtype | None
    train_set: LTDataset
    eval_set: LTDataset
    augmenter: Augmenter
    method: Method
    model: nn.Module
    eval_loader: object
    train_loader: object | None = None
    learner: Learner | None = None
    dist: distributed.DistContext = distributed.DistContext()  # this process's rank in a torchrun job


def build_augmenter(cfg: RunConfig, train_set: LTDataset, amp: torch.dtype | None,
                    device: torch.device, rank: int = 0) -> Augmenter:
    aug = cfg.augment
    mean = tuple(aug.mean) if aug.mean else train_set.mean
    std = tuple(aug.std) if aug.std else train_set.std
    erasing = None
    if aug.random_erasing > 0:  # 0: no erasing object, exactly the augmenter of runs without it
        erasing = RandomErasing(p=aug.random_erasing, mode=aug.random_erasing_mode,
                                scale=tuple(aug.random_erasing_scale), ratio=tuple(aug.random_erasing_ratio),
                                seed=cfg.seed, rank=rank)
    return Augmenter(mean=mean, std=std, dtype=amp or torch.float32, impl=aug.mix_impl,
                     channels_last=resolve_channels_last(cfg.model.channels_last, device), erasing=erasing)


def eval_augment(aug):
    """The augment section an eval loader reads: as is, or for augment.eval_tte fivecrop, images
    resized and centre-cropped to crop_size + eval_tte_expand (the five crops are taken on the device,
    fasttrain.evaluation.five_crops)."""
    if aug.eval_tte == "none":
        return aug
    size = aug.crop_size + aug.eval_tte_expand
    return dataclasses.replace(aug, crop_size=size, eval_resize=size)


def head_spec(m, training: bool = True) -> HeadSpec:
    """The model section's `fc` head choice (model.head / head_scale / head_learn_scale / head_init /
    head_prompt). A model built to load a checkpoint (evaluation, predict) starts its head at random:
    the stored weights replace it, so no class names or text tower are needed."""
    return HeadSpec(m.head, m.head_scale, m.head_learn_scale, m.head_init if training else "random", m.head_prompt)


def _build_model(cfg: RunConfig, method: Method, device: torch.device, previous: nn.Module | None,
                 training: bool) -> nn.Module:
    # Pretrained backbone weights start a fresh training run only: a run from model.init_from, a
    # later stage (previous model) and evaluation (the checkpoint's weights are loaded next) would
    # overwrite them, and must not need the weights file. Freezing applies to a fresh backbone.
    # A parameter-efficient run's checkpoints hold only its trainable weights (fasttrain.model_state):
    # every model built for one starts from the pretrained weights its frozen rest comes from.
    partial = trainable_only(cfg.model)
    fresh = (training and not cfg.model.init_from) or partial
    # A fresh backbone for a new model; also for a stage that trains a new model next to the
    # previous one (SSD's distillation student), as `method.needs_backbone` says.
    backbone = None
    if method.needs_backbone(previous):
        try:
            backbone = build_backbone(cfg.model, load_pretrained=fresh, num_classes=method.ctx.num_classes)
        except (WeightsError, FileNotFoundError) as exc:
            if not partial or (training and not cfg.model.init_from):
                raise
            raise WeightsError(f"this run's checkpoints store only the trainable weights (model.peft="
                               f"{cfg.model.peft}); the frozen rest comes from model.pretrained={cfg.model.pretrained}, "
                               f"which could not be loaded: {str(exc).splitlines()[0]}") from None
    model = method.build_model(backbone, previous)
    if partial and backbone is not None and previous is None:
        mark_pretrained_frozen(model)  # before any stage method freezes more: what checkpoints leave out
    if backbone is not None and cfg.model.peft != "none" and training:
        log.info("%s", peft.describe(cfg.model.peft, peft.parameter_counts(model, backbone)))
    if cfg.model.init_from:
        state = load_checkpoint(cfg.model.init_from)
        try:
            # The hook where a method maps the checkpoint onto its model: by default exactly the
            # model's weights; a later stage drops what its hand-off leaves behind, SSD's
            # distillation loads the checkpoint into its teacher (Method.load_init_state).
            # A parameter-efficient run's checkpoint: its frozen weights are the pretrained ones this
            # model was built on, completed here so the method's mapping sees a whole checkpoint.
            method.load_init_state(model, complete_weights(model, state, f"model.init_from={cfg.model.init_from}",
                                                           cfg.model))
        except RuntimeError as exc:
            raise RuntimeError(f"model.init_from={cfg.model.init_from}: weights do not fit the model "
                               f"({str(exc).splitlines()[0]})") from None
    # Both ways explicitly: a previous stage's model may hold the other format.
    model = model.to(device)
    model = to_channels_last(model) if resolve_channels_last(cfg.model.channels_last, device) else to_contiguous(model)
    method.prepare(model)
    return model


def build_run(cfg: RunConfig, *, training: bool = False, previous_model: nn.Module | None = None,
              datasets: tuple[LTDataset, LTDataset] | None = None, rank: int = 0, world_size: int = 1,
              local_rank: int | None = None) -> Run:
    """Build one stage of `cfg` (see the module docstring). `datasets` replaces `build_datasets`
    (benchmarks pass synthetic data); `previous_model` is the previous stage's model.

    With `world_size` > 1 (a torchrun job whose process group is initialised, see
    fasttrain.distributed): the device is `cuda:local_rank`, the train samplers shard by rank,
    the eval loader reads this rank's `EvalShard`, and the learner trains through DDP.
    `loader.batch_size` is per process: the global batch is batch_size x world_size."""
    dctx = distributed.DistContext(rank, world_size, rank if local_rank is None else local_rank)
    device = resolve_device(cfg.device) if world_size == 1 else distributed.rank_device(cfg.device, dctx.local_rank)
    amp = amp_dtype(cfg.train.amp, device)
    seed_everything(cfg.seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    # cuDNN picks the fastest convolution algorithm per shape once (fixed shapes here), unless the
    # run asks for determinism: benchmarking may choose non-deterministic algorithms.
    torch.backends.cudnn.benchmark = device.type == "cuda" and not cfg.train.deterministic
    train_set, eval_set = datasets if datasets is not None else build_datasets(cfg)
    augmenter = build_augmenter(cfg, train_set, amp, device, rank)
    counts = torch.as_tensor(train_set.train_counts, dtype=torch.long)
    ld = cfg.loader
    ctx = MethodContext(num_classes=train_set.num_classes, train_counts=counts.to(device), augmenter=augmenter,
                        device=device, loss_impl=cfg.train.loss_impl, label_smoothing=cfg.loss.label_smoothing,
                        seed=cfg.seed, default_stream=StreamSpec(ld.sampler, ld.sampler_q, ld.class_aware_k),
                        stream_batch_size=ld.batch_size * world_size if training else None,
                        head=head_spec(cfg.model, training),
                        class_names=(prompt_class_names(train_set, cfg.data)
                                     if training and cfg.model.head_init == "text" and previous_model is None else None))
    method = METHODS[cfg.method.name](cfg.method, ctx)

    def loader(dataset, samplers, step_rows, num_views, train):
        # Augmentation draws differ between ranks (rank 0 keeps the single-process seed); the sample
        # order does not: the samplers shard one global order.
        return build_loader(ld.backend, dataset, samplers, batch_size=step_rows, num_views=num_views,
                            device=device, augment=cfg.augment if train else eval_augment(cfg.augment), loader=ld,
                            train=train,
                            seed=cfg.seed + AUGMENT_SEED_STRIDE * rank if train else cfg.seed)

    train_loader = None
    if training:  # one sampler per stream, all from the samplers module
        samplers = [build_sampler(s.sampler, torch.as_tensor(train_set.labels), train_set.num_classes,
                                  seed=cfg.seed + 1000 * i, rank=rank, world_size=world_size, q=s.q, k=s.k,
                                  drop_last=False)
                    for i, s in enumerate(method.streams())]
        # loader.batch_size is what the user sets: rows per stream. A loader step holds every stream's.
        step_rows = ld.batch_size * len(samplers)
        train_loader = loader(train_set, samplers, step_rows, method.num_views, True)
    eval_loader = loader(eval_set, eval_shard(len(eval_set), ld.eval_batch_size, dctx), ld.eval_batch_size, 1, False)
    model = _build_model(cfg, method, device, previous_model, training)
    if training and cfg.train.sync_bn and world_size > 1:
        model = distributed.convert_sync_batchnorm(model)
    run = Run(cfg, device, amp, train_set, eval_set, augmenter, method, model, eval_loader, train_loader, dist=dctx)
    if training:
        forward = torch.compile(model) if cfg.train.compile else model
        optimizer = (build_optimizer(cfg, method.trainable_parameters(model), device, model,
                                     method.no_decay_parameters(model))
                     if method.stage.trains else None)
        scaler = torch.amp.GradScaler(enabled=amp == torch.float16)
        # DDP wraps the method's loss around the (compiled) model, so a method may call any part of
        # its model (heads, a frozen backbone) and the gradients of its trainable parameters are
        # still all-reduced; nothing to synchronise when nothing is trained.
        ddp = None
        if world_size > 1 and optimizer is not None:
            ddp = distributed.wrap(MethodLoss(method, forward), method.ddp_find_unused_parameters)
        run.learner = Learner(method, model, forward, optimizer, scaler, amp, device,
                              accum_steps=cfg.train.grad_accum_steps, ddp=ddp, clip_grad_norm=cfg.optim.clip_grad_norm,
                              ema=build_ema(cfg.train.ema, model) if optimizer is not None else None)
    return run


# Seed offset of rank r's augmentation draws (r x stride): far from the sampler (+1000 per stream)
# and method (+17, +23, +29) offsets.
AUGMENT_SEED_STRIDE = 100_003


def eval_shard(n: int, batch_size: int, dctx: distributed.DistContext) -> list | None:
    """This rank's evaluation order under DDP (whole batches, see samplers.EvalShard), or None (the
    loader's sequential order) in a single process and for eval sets of fewer batches than ranks,
    where every rank evaluates everything rather than leave one without a batch."""
    if not dctx.enabled or -(-n // batch_size) < dctx.world_size:
        return None
    return [EvalShard(n, batch_size, dctx.rank, dctx.world_size)]


def build_split_loader(run: Run, split: str, sharded: bool = False, tte: bool = True):
    """An eval-order loader over `split` (test | val) of the run's dataset, e.g. the calibration
    split of a post-hoc method. The dataset's own builder says when a split does not exist.
    `tte=False`: single centre crops even under augment.eval_tte (a method's own calibration pass
    feeds the loader's images to the model as they are)."""
    cfg = copy.deepcopy(run.cfg)
    cfg.data.eval_split = split
    _, dataset = build_datasets(cfg)
    # Sharded (this rank's EvalShard) for evaluations whose predictions are gathered afterwards;
    # calibration reads the whole split on every rank, so every rank chooses the same parameters.
    shard = eval_shard(len(dataset), cfg.loader.eval_batch_size, run.dist) if sharded else None
    return build_loader(cfg.loader.backend, dataset, shard, batch_size=cfg.loader.eval_batch_size, num_views=1,
                        device=run.device, augment=eval_augment(cfg.augment) if tte else cfg.augment, loader=cfg.loader,
                        train=False, seed=cfg.seed)
