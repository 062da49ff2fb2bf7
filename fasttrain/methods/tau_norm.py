"""τ-normalisation (Kang et al., ICLR 2020): a post-hoc classifier, no training.

The head's class vectors are rescaled to w̃_c = w_c / ‖w_c‖^τ (τ = 0: the trained classifier,
τ = 1: cosine-like unit-norm rows). The bias is dropped as in the decoupling reference notebook
(`bias: keep` keeps it unchanged) — recalled from the reference, not re-checked against it.

τ is either given (`tau`) or chosen by a grid search (`tau_grid`) for the best top-1 on the
`tau_split` split (`val` by default: ImageNet-LT / iNat / Places-LT ship one; CIFAR-LT has none,
so CIFAR configs say `tau_split: test`, i.e. the test-set selection of the literature — an
oracle number, named as such in their headers). The search runs once when the stage runs
(`train.epochs: 0`); the chosen τ is written into the stage's resolved config and summary, so
`fasttrain eval` of the stage's checkpoint applies it. `fasttrain eval CKPT --tau T` applies a given
τ to any first-stage checkpoint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from fasttrain.methods.base import Stage, register
from fasttrain.methods.retrain import HeadRetrainConfig, HeadRetraining
from fasttrain.schema import option

BIAS = ("drop", "keep")
TAU_SPLITS = ("test", "val")  # data.eval_split names


def default_grid() -> list[float]:
    return [round(0.1 * i, 1) for i in range(21)]  # 0.0, 0.1, ..., 2.0


@dataclass
class TauNormConfig(HeadRetrainConfig):
    tau: float | None = option(None, ge=0, finite=True)  # None: search `tau_grid` on `tau_split`
    tau_grid: list[float] = field(default_factory=default_grid)  # the τ searched when tau is None
    tau_split: str = option("val", choices=TAU_SPLITS)  # test | val (a data.eval_split name)
    bias: str = option("drop", choices=BIAS)  # drop (reference notebook) | keep

    def validate(self) -> None:
        super().validate()
        if self.tau is None and not self.tau_grid:
            raise ValueError("method.tau_grid: empty; give at least one τ (or set method.tau)")
        if any(not (math.isfinite(t) and t >= 0) for t in self.tau_grid):
            raise ValueError(f"method.tau_grid: expected finite values >= 0, got {self.tau_grid!r}")


def tau_normalized_logits(features: torch.Tensor, head: nn.Linear, tau: float, keep_bias: bool) -> torch.Tensor:
    """f · (w_c / ‖w_c‖^τ) (+ b_c when kept), fp32 — with autocast off, so the evaluation (which runs
    under the run's bf16 autocast) computes the same logits as the calibration (outside autocast):
    otherwise the chosen τ would be scored on other numbers than it is evaluated with."""
    with torch.autocast(features.device.type, enabled=False):
        w = head.weight.float()
        w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12).pow(tau)
        logits = features.float() @ w.t()
        if keep_bias and head.bias is not None:
            logits = logits + head.bias.float()
    return logits


@register("tau_norm", TauNormConfig)
class TauNorm(HeadRetraining):
    stage = Stage.POST_HOC  # nothing to optimise: the stage runs with train.epochs: 0

    def prepare(self, model: nn.Module) -> None:
        self.freeze_all_but(model, [])

    def calibration_split(self) -> str | None:
        return self.cfg.tau_split if self.cfg.tau is None else None

    @torch.no_grad()
    def calibrate(self, model: nn.Module, loader, augmenter) -> dict:
        """Grid search of τ on `loader` (features computed once); sets and returns the best."""
        model.eval()
        autocast = torch.autocast(self.ctx.device.type, dtype=torch.bfloat16,
                                  enabled=augmenter.dtype == torch.bfloat16)
        feats, labels = [], []
        for batch in loader:
            with autocast:
                feats.append(model.backbone(augmenter.views(batch)[0]).float())
            labels.append(batch.labels)
        f, y = torch.cat(feats), torch.cat(labels)
        head, keep = self.head_of(model), self.cfg.bias == "keep"
        top1 = [100.0 * (tau_normalized_logits(f, head, t, keep).argmax(1) == y).double().mean().item()
                for t in self.cfg.tau_grid]
        best = max(range(len(top1)), key=lambda i: (top1[i], -i))  # ties: the first (smallest-index) τ
        self.cfg.tau = float(self.cfg.tau_grid[best])
        return {"tau": self.cfg.tau, "split": self.cfg.tau_split, "grid": list(self.cfg.tau_grid), "top1": top1}

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.tau is None:
            raise RuntimeError("method tau_norm: τ is not chosen yet (calibrate on tau_split, or set method.tau)")
        return tau_normalized_logits(model.backbone(x), self.head_of(model), self.cfg.tau, self.cfg.bias == "keep")

    def state_dict(self) -> dict:
        return {**super().state_dict(), "tau": self.cfg.tau}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state.get("tau") is not None:
            self.cfg.tau = float(state["tau"])
