"""Pure-torch reference of the reweighted soft-label cross-entropy: this file is the specification.

    loss_i = -sum_c t_ic * w_c * log_softmax((z_i + b) / T)_c          (times T**2 if t2_scale)

Targets come either sparsely as a mix description (y_a, y_b, lam) meaning
t_i = lam_i * e_{y_a,i} + (1 - lam_i) * e_{y_b,i} (MixUp / CutMix; y_b None means hard labels
y_a), or densely as a (B, C) tensor (teacher soft labels for distillation). The weights w are
used as given (never renormalised), so with sparse targets
loss_i = -[lam * w_{y_a} * logp_{y_a} + (1 - lam) * w_{y_b} * logp_{y_b}].

Label smoothing eps in [0, 1] replaces the target t (sparse or dense) by
t~_ic = (1 - eps) * t_ic + eps / C before anything else, exactly as
F.cross_entropy(label_smoothing=eps) does for hard labels and for class-probability targets:
- mixed targets: the mixed target is smoothed, which equals mixing the two smoothed one-hots
  (timm's MixUp + smoothing);
- dense targets are smoothed the same way, their row mass is not looked at (a row of zeros becomes
  eps / C everywhere, as in torch);
- class weights multiply the smoothed target per class, t~_c * w_c, so the uniform part is
  weighted too: loss_i = (1 - eps) * [the loss of t] - eps / C * sum_c w_c * logp_c. This is
  F.cross_entropy(weight=w, label_smoothing=eps, reduction="sum");
- logit offsets, temperature and t2_scale act on the logits / the loss and are unchanged;
- every class with w_c != 0 now carries target mass, so a -inf logit makes the loss +inf (as in
  torch), still without NaN.
eps = 0 runs exactly the code without smoothing.

Conventions shared with the Triton kernel (tests hold both to them):
- A term whose coefficient t_ic * w_c is exactly 0 contributes 0 even where logp is -inf
  (the "-inf * 0 = 0" convention), so masked classes (-inf logits) never produce NaN.
- Arithmetic is fp32 whatever the logits dtype; the loss is returned in fp32.
- Gradients flow to the logits only; targets, weights, offsets and lam are constants
  (they are detached here so both implementations have the same autograd graph).
- reduction="mean" divides by the batch size B (not by the sum of the weights, which is what
  F.cross_entropy(weight=...) does; for that divide a "sum" by w[y].sum() yourself).
- Every row needs at least one finite logit; a row of all -inf has no softmax (NaN).
- Labels must lie in [0, C): checked here on CPU (no device sync is spent on CUDA).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

Lam = Union[float, int, torch.Tensor]
REDUCTIONS = ("mean", "sum", "none")


@dataclass(frozen=True)
class SoftCEInputs:
    """Validated, shape-checked arguments shared by the reference and the Triton path."""

    logits: torch.Tensor  # (B, C), any float dtype
    y_a: Optional[torch.Tensor]  # (B,) integer, sparse targets only
    y_b: Optional[torch.Tensor]  # (B,) integer or None (hard labels)
    lam: Optional[Union[float, torch.Tensor]]  # float, or fp32 tensor of shape () or (B,)
    targets: Optional[torch.Tensor]  # (B, C) dense targets
    class_weights: Optional[torch.Tensor]  # (C,)
    logit_offset: Optional[torch.Tensor]  # (C,) or (B, C)
    temperature: float
    t2_scale: bool
    reduction: str
    label_smoothing: float = 0.0  # eps: targets become (1 - eps) t + eps / C

    @property
    def sparse(self) -> bool:
        return self.targets is None


def _check_vector(name: str, t: Optional[torch.Tensor], n: int, what: str) -> Optional[torch.Tensor]:
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"soft_target_cross_entropy: {name} must be a tensor, got {type(t).__name__}")
    if t.shape != (n,):
        raise ValueError(f"soft_target_cross_entropy: {name} must have shape ({n},) ({what}), got {tuple(t.shape)}")
    return t


def validate_inputs(
    logits: torch.Tensor,
    *,
    y_a: Optional[torch.Tensor] = None,
    y_b: Optional[torch.Tensor] = None,
    lam: Lam = 1.0,
    targets: Optional[torch.Tensor] = None,
    class_weights: Optional[torch.Tensor] = None,
    logit_offset: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    t2_scale: bool = False,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> SoftCEInputs:
    """Check shapes/dtypes once (cheap: no device sync) and normalise lam."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(
            f"soft_target_cross_entropy: logits must be a (B, C) tensor, got "
            f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}"
        )
    if not logits.is_floating_point():
        raise TypeError(f"soft_target_cross_entropy: logits must be floating point, got {logits.dtype}")
    B, C = logits.shape
    if reduction not in REDUCTIONS:
        raise ValueError(f"soft_target_cross_entropy: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    temperature = float(temperature)
    if not temperature > 0.0:
        raise ValueError(f"soft_target_cross_entropy: temperature must be > 0, got {temperature}")
    label_smoothing = float(label_smoothing)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"soft_target_cross_entropy: label_smoothing must lie in [0, 1], got {label_smoothing}")

    if (targets is None) == (y_a is None):
        raise ValueError("soft_target_cross_entropy: give exactly one of y_a (sparse targets) or targets (dense)")
    lam_out: Optional[Union[float, torch.Tensor]] = None
    if targets is not None:
        if y_b is not None:
            raise ValueError("soft_target_cross_entropy: y_b is only meaningful with sparse targets (y_a)")
        if targets.shape != (B, C):
            raise ValueError(f"soft_target_cross_entropy: targets must have shape ({B}, {C}), got {tuple(targets.shape)}")
        if not targets.is_floating_point():
            raise TypeError(f"soft_target_cross_entropy: dense targets must be floating point, got {targets.dtype}")
    else:
        for name, y in (("y_a", y_a), ("y_b", y_b)):
            if y is None:
                continue
            _check_vector(name, y, B, "one label per row")
            if y.dtype not in (torch.int64, torch.int32):
                raise TypeError(f"soft_target_cross_entropy: {name} must be int64/int32 labels, got {y.dtype}")
        if y_b is None:
            # Hard labels: a lam other than 1 would silently down-weight the loss.
            if isinstance(lam, torch.Tensor) or float(lam) != 1.0:
                raise ValueError("soft_target_cross_entropy: lam given without y_b; pass y_b for mixed targets")
        elif isinstance(lam, torch.Tensor):
            if lam.dim() == 0 or lam.shape == (1,):
                lam_out = lam.reshape(())
            elif lam.shape == (B,):
                lam_out = lam
            else:
                raise ValueError(f"soft_target_cross_entropy: lam must be a float, 0-dim or ({B},) tensor, got {tuple(lam.shape)}")
            lam_out = lam_out.detach().to(device=logits.device, dtype=torch.float32)
        else:
            lam_out = float(lam)

    _check_vector("class_weights", class_weights, C, "one weight per class")
    if logit_offset is not None and logit_offset.shape not in ((C,), (B, C)):
        raise ValueError(
            f"soft_target_cross_entropy: logit_offset must have shape ({C},) or ({B}, {C}), got {tuple(logit_offset.shape)}"
        )
    return SoftCEInputs(logits, y_a, y_b, lam_out, targets, class_weights, logit_offset, temperature, bool(t2_scale), reduction,
                        label_smoothing)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _zero_safe_product(coef: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """coef * logp with 0 * (-inf) := 0 (masked classes never produce NaN)."""
    return torch.where(coef != 0, coef * logp, torch.zeros((), dtype=logp.dtype, device=logp.device))


def reference_from_inputs(x: SoftCEInputs) -> torch.Tensor:
    """The specification, on validated inputs (autograd gives the gradient w.r.t. logits)."""
    z = x.logits.float()
    C = z.shape[1]
    if x.logit_offset is not None:
        z = z + x.logit_offset.detach().float()
    if x.temperature != 1.0:
        z = z / x.temperature
    logp = torch.log_softmax(z, dim=1)
    w = x.class_weights.detach().float() if x.class_weights is not None else None
    eps = x.label_smoothing
    keep = 1.0 - eps  # the share of the given target; eps / C goes to every class

    if x.sparse:
        y_a = x.y_a.long()
        if y_a.device.type == "cpu" and y_a.numel() and (int(y_a.min()) < 0 or int(y_a.max()) >= C):
            raise ValueError(f"soft_target_cross_entropy: y_a labels must lie in [0, {C})")
        lam = 1.0 if x.y_b is None else x.lam
        coef_a = torch.as_tensor(lam, dtype=torch.float32, device=z.device).expand(z.shape[0])
        if w is not None:
            coef_a = coef_a * w[y_a]
        if eps:
            coef_a = coef_a * keep
        loss = -_zero_safe_product(coef_a, logp.gather(1, y_a[:, None]).squeeze(1))
        if x.y_b is not None:
            y_b = x.y_b.long()
            if y_b.device.type == "cpu" and y_b.numel() and (int(y_b.min()) < 0 or int(y_b.max()) >= C):
                raise ValueError(f"soft_target_cross_entropy: y_b labels must lie in [0, {C})")
            coef_b = 1.0 - torch.as_tensor(x.lam, dtype=torch.float32, device=z.device).expand(z.shape[0])
            if w is not None:
                coef_b = coef_b * w[y_b]
            if eps:
                coef_b = coef_b * keep
            loss = loss - _zero_safe_product(coef_b, logp.gather(1, y_b[:, None]).squeeze(1))
    else:
        coef = x.targets.detach().float()
        if eps:
            coef = coef * keep
        if w is not None:
            coef = coef * w
        loss = -_zero_safe_product(coef, logp).sum(dim=1)
    if eps:
        # The uniform part eps / C of the smoothed target (times w_c): -eps / C * sum_c w_c logp_c.
        uniform = torch.full((C,), eps / C, dtype=torch.float32, device=z.device)
        if w is not None:
            uniform = uniform * w
        loss = loss - _zero_safe_product(uniform.expand_as(logp), logp).sum(dim=1)

    if x.t2_scale:
        loss = loss * (x.temperature**2)
    return _reduce(loss, x.reduction)


def soft_target_cross_entropy_reference(
    logits: torch.Tensor,
    *,
    y_a: Optional[torch.Tensor] = None,
    y_b: Optional[torch.Tensor] = None,
    lam: Lam = 1.0,
    targets: Optional[torch.Tensor] = None,
    class_weights: Optional[torch.Tensor] = None,
    logit_offset: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    t2_scale: bool = False,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Reference loss (see module docstring); same keyword API as soft_target_cross_entropy."""
    x = validate_inputs(
        logits, y_a=y_a, y_b=y_b, lam=lam, targets=targets, class_weights=class_weights,
        logit_offset=logit_offset, temperature=temperature, t2_scale=t2_scale, reduction=reduction,
        label_smoothing=label_smoothing,
    )
    return reference_from_inputs(x)
