"""SSD stage I — self-supervision-guided feature learning (Li et al., "Self Supervision to
Distillation for Long-Tailed Visual Recognition", ICCV 2021; docs: user-guide/methods/ssd.md, Stage I).

The official code's behaviour is the default; every difference is a switch in `SSDStage1Config`.
Two views per image from one decode (`augment.views`: view 0 the query view, view 1 the MoCo-v2
key view). One step:

    h = f_q(x_q);  logits = fc(h);  q = normalize(MLP_q(h))
    EMA: (f_k, MLP_k) ← m·(f_k, MLP_k) + (1 − m)·(f_q, MLP_q)        (before the keys, m = 0.999)
    k = normalize(MLP_k(f_k(x_k)))                                     (no grad, shuffle-BN)
    L = CE(logits, y) + L_con(q, k, queue),  then the keys and labels are enqueued (FIFO)

L_con is the label-aware contrastive loss of `label_queue` (τ = 0.2). The projection MLPs are
Linear(d, d) → ReLU → Linear(d, 128) without BN; heads keep PyTorch's Linear init. The key
encoder, key MLP and the queue are part of the model (checkpoints and resume carry them); later
stages continue only the query encoder and the classifier (`SSDStage1Net.handoff`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from fasttrain.kernels.soft_ce import soft_target_cross_entropy
from fasttrain.methods.base import Method, MethodConfig, Progress, register
from fasttrain.methods.handoff import EncoderClassifier
from fasttrain.methods.label_queue import LabeledQueue, label_aware_contrastive_loss
from fasttrain import distributed
from fasttrain.methods.momentum import ddp_shuffled_forward, ema_update_, key_permutation, shuffled_forward
from fasttrain.schema import ConfigError, option


@dataclass
class SSDStage1Config(MethodConfig):
    # Keys in the queue: the code's 115,712 = 452 x 256 (≈ the ImageNet-LT train size). Must be
    # divisible by the global batch and at most the train size (checked when the stage starts).
    queue_size: int = option(115712, gt=0)
    temperature: float = option(0.2, gt=0)  # τ of the contrastive logits
    momentum: float = option(0.999, ge=0, le=1)  # m of the key encoder's EMA
    proj_dim: int = option(128, gt=0)  # width of the projected (and L2-normalised) queries / keys
    # hidden width of the projection MLP; null = the feature width d (code)
    proj_hidden: int | None = option(None, gt=0)
    contrastive_weight: float = option(1.0, ge=0)  # weight of L_con next to CE (code: 1)
    label_aware: bool = True  # same-class queue entries removed from the negatives (false: plain MoCo)
    queue_init_label: int = 0  # label of the initial random queue entries (code: 0); -1 = no class
    # One-process stand-in for shuffle-BN: keys are encoded in this many shuffled sub-batches (8 =
    # the BN batch of an 8-GPU run); 1 = the whole batch at once (no shuffling). Under torchrun the
    # real shuffle-BN runs across the ranks instead (one BN batch per rank); this key is then unused.
    shuffle_bn_splits: int = option(8, gt=0)

    def validate(self) -> None:
        super().validate()
        if self.queue_init_label < -1:  # a class index is checked against the dataset when the model is built
            raise ValueError(f"method.queue_init_label: expected a class index or -1, got {self.queue_init_label!r}")


def projection_mlp(d: int, hidden: int, out: int) -> nn.Sequential:
    """Linear(d, hidden) → ReLU → Linear(hidden, out), no BN (the code's MLP head)."""
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


class SSDStage1Net(nn.Module):
    """Query encoder `backbone` + classifier `fc` + `projector`; EMA copies `key_backbone`,
    `key_projector` (no gradients); the `queue` of keys with labels.

    forward(x) → classifier logits (evaluation); forward(x, x_key, key_perm) → (logits, q, k) with
    q, k L2-normalised fp32 and k computed without a graph.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, proj_hidden: int, proj_dim: int, queue_size: int,
                 queue_init_label: int, shuffle_bn_splits: int, queue_generator: torch.Generator):
        super().__init__()
        d = backbone.feature_dim
        self.backbone = backbone
        self.fc = nn.Linear(d, num_classes)
        self.projector = projection_mlp(d, proj_hidden, proj_dim)
        # The key encoder starts as an exact copy of the query encoder (MoCo) and is never trained.
        self.key_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.queue = LabeledQueue(queue_size, proj_dim, queue_init_label, queue_generator)
        self.shuffle_bn_splits = shuffle_bn_splits

    def forward(self, x: torch.Tensor, x_key: torch.Tensor | None = None, key_perm: torch.Tensor | None = None):
        h = self.backbone(x)
        logits = self.fc(h)
        if x_key is None:
            return logits
        q = F.normalize(self.projector(h).float(), dim=1)
        with torch.no_grad():
            key_net = lambda v: self.key_projector(self.key_backbone(v))  # noqa: E731
            if distributed.active():  # MoCo's shuffle-BN across ranks (key_perm permutes the global batch)
                k = F.normalize(ddp_shuffled_forward(key_net, x_key, key_perm).float(), dim=1)
            else:
                k = F.normalize(shuffled_forward(key_net, x_key, self.shuffle_bn_splits, key_perm).float(), dim=1)
        return logits, q, k

    def query_encoder(self) -> nn.ModuleList:
        return nn.ModuleList([self.backbone, self.projector])

    def key_encoder(self) -> nn.ModuleList:
        return nn.ModuleList([self.key_backbone, self.key_projector])

    def handoff(self) -> nn.Module:
        """Stage II continues the query encoder and the classifier only (as in the official code)."""
        return EncoderClassifier(self.backbone, self.fc)


@register("ssd_stage1", SSDStage1Config)
class SSDStage1(Method):
    num_views = 2  # view 0: query view, view 1: key view (augment.views gives each its own augmentation)
    applies_label_smoothing = True  # the CE term; the contrastive term is unchanged

    def __init__(self, cfg: SSDStage1Config, ctx):
        super().__init__(cfg, ctx)
        if ctx.stream_batch_size is not None:  # this stage is being trained: the queue must fit the run
            self.check_queue(cfg.queue_size, ctx.stream_batch_size, int(ctx.train_counts.sum()))
        # Device-side draws of the shuffled sub-batches (no host sync); checkpointed with the method.
        self.key_generator = torch.Generator(device=ctx.device).manual_seed(ctx.seed + 29)

    @staticmethod
    def check_queue(queue_size: int, batch: int, train_size: int) -> None:
        """The code's rule (MoCo's assert): whole batches fill the queue; and no more keys than images."""
        if queue_size % batch:
            raise ConfigError(f"method.queue_size: {queue_size} is not divisible by the global batch {batch} "
                              f"(loader.batch_size x processes); e.g. {queue_size // batch * batch or batch}")
        if queue_size > train_size:
            raise ConfigError(f"method.queue_size: {queue_size} is more than the {train_size} training images; "
                              f"at most {train_size // batch * batch} for batch {batch}")

    def new_model(self, backbone: nn.Module) -> nn.Module:
        cfg = self.cfg
        g = torch.Generator().manual_seed(self.ctx.seed + 23)  # the queue's random init, apart from the weights'
        return SSDStage1Net(backbone, self.ctx.num_classes, cfg.proj_hidden or backbone.feature_dim, cfg.proj_dim,
                            cfg.queue_size, cfg.queue_init_label, cfg.shuffle_bn_splits, g)

    def check_model(self, model: nn.Module) -> None:
        for part in ("backbone", "fc", "projector", "key_backbone", "key_projector", "queue"):
            if not hasattr(model, part):
                raise ValueError(f"method ssd_stage1: the model has no {part!r} (not an SSD stage-I model)")

    def loss(self, model, batch, progress: Progress):
        cfg, ctx = self.cfg, self.ctx
        if len(batch.views) != 2:
            raise ValueError(f"method ssd_stage1: needs 2 views per image (query, key), got {len(batch.views)}")
        x_q, x_k = ctx.augmenter.views(batch)
        ema_update_(model.key_encoder(), model.query_encoder(), cfg.momentum)  # before the keys (code)
        world = distributed.world_size()
        if world > 1:  # one permutation of the global batch, the same on every rank (same generator seed)
            perm = key_permutation(batch.size * world, self.key_generator, x_k.device)
        else:
            perm = key_permutation(batch.size, self.key_generator, x_k.device) if cfg.shuffle_bn_splits > 1 else None
        logits, q, k = model(x_q, x_k, perm)
        loss_ce = soft_target_cross_entropy(logits, y_a=batch.labels, impl=ctx.loss_impl,
                                            label_smoothing=ctx.label_smoothing)
        queue = model.queue
        # The loss sees the queue before this step's keys; a copy, because enqueueing writes in place
        # what the backward of q·queue needs (MoCo clones the queue for the same reason).
        loss_con = label_aware_contrastive_loss(q, k, queue.keys.clone(), queue.labels, batch.labels,
                                                cfg.temperature, cfg.label_aware)
        # Every rank enqueues the keys and labels of the whole global batch (rank order), so the queues
        # stay identical across ranks, as MoCo's concat_all_gather before _dequeue_and_enqueue.
        queue.enqueue(distributed.all_gather_equal(k), distributed.all_gather_equal(batch.labels))
        loss = loss_ce + cfg.contrastive_weight * loss_con
        return loss, {"loss": loss.detach(), "loss_ce": loss_ce.detach(), "loss_con": loss_con.detach()}

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["key_generator"] = self.key_generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "key_generator" in state:
            self.key_generator.set_state(state["key_generator"])
