"""SSD stage III — joint training with self-distillation (docs: user-guide/methods/ssd.md, Stage III).

A new, randomly initialised student (its own fresh backbone) with two Linear heads on one
feature: `fc`, the hard head, trained with CE on the labels, and `fc_kd`, the soft head, trained
towards the teacher's soft labels computed online on the student's own augmented view:

    L = CE(z_hard, y) + T²·(1/B) Σ_i KL(softmax(z_t,i / T) ‖ softmax(z_soft,i / T)),   T = 2

The teacher is the stage-II model (stage-I encoder + LWS head), frozen and run without a graph;
its BatchNorm runs in train mode like the rest of the model, as in the code (`teacher_bn_mode`).
The KD term goes through the fused soft-label loss (dense targets, temperature, T² scaling),
which computes the teacher-weighted cross-entropy; it differs from the KL by the teacher's entropy
(same gradient), so the logged `loss_kd` and `loss` are the KL values the code prints.

The teacher is a submodule of the model (`teacher.*`): checkpoints carry it and resume is exact.
Started alone, `model.init_from` is a stage-II checkpoint loaded into the teacher (whose structure
is `base_method`'s hand-off with an LWS head, `teacher_scaled`). Later stages (IV) continue the
student with its hard head (`SSDStudentNet.handoff`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from fasttrain.kernels.soft_ce import soft_target_cross_entropy
from fasttrain.methods.base import (Progress, Stage, StageMethod, StageMethodConfig, build_structure, handoff,
                                    load_exactly, register)
from fasttrain.methods.handoff import EncoderClassifier
from fasttrain.methods.retrain import BN_MODES, ScaledLinear
from fasttrain.schema import option

PREDICT_HEADS = ("soft", "hard", "sum")


@dataclass
class SSDDistillConfig(StageMethodConfig):
    # base_method / base_config: the first-stage structure under the teacher (recorded by the stage
    # mechanism; SSD: ssd_stage1, whose hand-off is its query encoder + fc).
    base_method: str = "ssd_stage1"
    temperature: float = option(2.0, gt=0)  # T (--kd_t)
    kd_weight: float = option(1.0, ge=0)  # weight of the KD term next to CE (code: 1)
    teacher_head: str = "fc"  # the teacher's classifier head
    teacher_scaled: bool = True  # the teacher's head is an LWS ScaledLinear (stage II); false: a plain Linear
    # teacher's BN: train (code: batch statistics, running stats drift) | eval
    teacher_bn_mode: str = option("train", choices=BN_MODES)
    # Logits used for prediction: soft (the README's stage-III headline 55.4) | hard | sum (hard + soft).
    # Evaluation reports all three; which one the paper's number uses is not verified.
    predict_head: str = option("soft", choices=PREDICT_HEADS)


class SSDStudentNet(nn.Module):
    """backbone → (fc: hard head, fc_kd: soft head), plus the frozen `teacher` (set after the
    student's own weights are initialised, so the student's init does not depend on the teacher's).

    forward(x) → (hard, soft); forward(x, with_teacher=True) → (hard, soft, teacher logits)."""

    def __init__(self, backbone: nn.Module, num_classes: int, teacher_head: str = "fc"):
        super().__init__()
        d = backbone.feature_dim
        self.backbone = backbone
        self.fc = nn.Linear(d, num_classes)
        self.fc_kd = nn.Linear(d, num_classes)
        self.register_module("teacher", None)  # the frozen teacher, set by the method
        self.teacher_head = teacher_head

    def forward(self, x: torch.Tensor, with_teacher: bool = False):
        h = self.backbone(x)
        hard, soft = self.fc(h), self.fc_kd(h)
        if not with_teacher:
            return hard, soft
        with torch.no_grad():
            t = getattr(self.teacher, self.teacher_head)(self.teacher.backbone(x))
        return hard, soft, t

    def handoff(self) -> nn.Module:
        """Stage IV continues the student encoder and its hard head (as the official code's key filter
        drops the KD head and the teacher)."""
        return EncoderClassifier(self.backbone, self.fc)


def kd_terms(soft: torch.Tensor, teacher: torch.Tensor, temperature: float,
             impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(T²·mean_i CE(p_t,i, softmax(soft_i / T)) to back-propagate, T²·mean_i KL(p_t,i ‖ softmax(soft_i / T))
    to log), p_t = softmax(teacher / T). The two differ by T² times the teacher's mean entropy."""
    t = teacher.detach().float() / temperature
    p_t = torch.softmax(t, dim=1)
    ce = soft_target_cross_entropy(soft, targets=p_t, temperature=temperature, t2_scale=True, impl=impl)
    entropy = -(p_t * torch.log_softmax(t, dim=1)).sum(dim=1).mean()
    return ce, ce.detach() - temperature ** 2 * entropy


@register("ssd_distill", SSDDistillConfig)
class SSDDistill(StageMethod):
    stage = Stage.TEACHER  # a fresh student next to the previous model (the teacher)
    applies_label_smoothing = True  # the hard-label CE term; the KD term keeps the teacher's targets

    # --- model -----------------------------------------------------------------------------------
    def build_model(self, backbone: nn.Module | None, previous: nn.Module | None = None) -> nn.Module:
        if backbone is None:
            raise ValueError("method ssd_distill: the student needs a fresh backbone (needs_backbone)")
        student = SSDStudentNet(backbone, self.ctx.num_classes, self.cfg.teacher_head)
        if previous is not None:
            student.teacher = handoff(previous)
        else:  # alone (model.init_from: a stage-II checkpoint), or as a later stage's base structure
            student.teacher = self.teacher_structure(copy.deepcopy(backbone))
        self.check_model(student)
        return student

    def new_model(self, backbone: nn.Module) -> nn.Module:
        return self.build_model(backbone, None)

    def teacher_structure(self, backbone: nn.Module) -> nn.Module:
        """The stage-II model's structure: `base_method`'s hand-off, its head wrapped by LWS."""
        teacher = handoff(build_structure(self.cfg.base_method, self.cfg.base_config, self.ctx, backbone))
        head = getattr(teacher, self.cfg.teacher_head, None)
        if self.cfg.teacher_scaled and isinstance(head, nn.Linear):
            setattr(teacher, self.cfg.teacher_head, ScaledLinear(head))
        return teacher

    def check_model(self, model: nn.Module) -> None:
        cfg = self.cfg
        head = getattr(model.teacher, cfg.teacher_head, None)
        kind = ScaledLinear if cfg.teacher_scaled else nn.Linear
        if type(head) is not kind or not hasattr(model.teacher, "backbone"):
            raise ValueError(f"method ssd_distill: the teacher needs a backbone and a {kind.__name__} head "
                             f"{cfg.teacher_head!r} (method.teacher_scaled={cfg.teacher_scaled}), got "
                             f"{type(head).__name__ if head is not None else 'none'}")

    def load_init_state(self, model: nn.Module, state: dict) -> None:
        """`model.init_from` is the teacher's checkpoint (stage II); the student starts fresh."""
        load_exactly(model.teacher, state, "the teacher (a stage-II checkpoint: backbone + LWS head)")

    def prepare(self, model: nn.Module) -> None:
        model.teacher.requires_grad_(False)  # frozen (the stage-II model had its scales trainable)

    # --- training --------------------------------------------------------------------------------
    def loss(self, model, batch, progress: Progress):
        cfg, ctx = self.cfg, self.ctx
        (x,) = ctx.augmenter.views(batch)
        if cfg.teacher_bn_mode == "eval":
            model.teacher.eval()  # the trainer puts the whole model in train mode per epoch
        hard, soft, teacher = model(x, with_teacher=True)
        loss_ce = soft_target_cross_entropy(hard, y_a=batch.labels, impl=ctx.loss_impl,
                                            label_smoothing=ctx.label_smoothing)
        kd_ce, kd = kd_terms(soft, teacher, cfg.temperature, ctx.loss_impl)
        loss = loss_ce + cfg.kd_weight * kd_ce
        logs = {"loss": (loss_ce.detach() + cfg.kd_weight * kd), "loss_ce": loss_ce.detach(), "loss_kd": kd}
        return loss, logs

    # --- inference -------------------------------------------------------------------------------
    def prediction_head(self) -> str | None:
        return self.cfg.predict_head

    @torch.no_grad()
    def head_logits(self, model: nn.Module, x: torch.Tensor):
        hard, soft = model(x)
        heads = {"hard": hard, "soft": soft, "sum": hard + soft}
        return heads[self.cfg.predict_head], heads

    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.head_logits(model, x)[0]
