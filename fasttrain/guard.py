"""Training that cannot go on: a loss that became NaN/inf, weights or optimizer state that became
NaN/inf, a step that ran out of device memory.

All are `TrainingError`s: the CLI prints their one-paragraph message without a traceback and
exits with status 3. The loss check never syncs inside a step: each step's loss tensor is kept
(with the batch's dataset indices) and tested when the trainer reads its logs anyway (every
`train.log_every` steps) and before every checkpoint, so a checkpoint never holds weights that
a non-finite loss has already touched. An update can also overflow the weights while its loss was
still finite (a learning rate far too high): `check_finite_state` tests every weight, buffer and
optimizer tensor before each checkpoint is written (one host sync per save, none per step), so a
checkpoint never holds a NaN/inf and last.pt stays the last good state.
"""
from __future__ import annotations

import torch

from fasttrain import distributed


class TrainingError(RuntimeError):
    """Training stopped for a reason the message explains (printed without a traceback)."""


class NonFiniteLoss(TrainingError):
    """The loss became NaN or infinite."""


class NonFiniteState(TrainingError):
    """The weights or the optimizer state became NaN or infinite."""


class DeviceOutOfMemory(TrainingError):
    """A training step ran out of device memory."""


MAX_INDICES_SHOWN = 32


class LossGuard:
    """Watches the `loss` log of every step; `check` raises NonFiniteLoss naming the first bad step."""

    def __init__(self) -> None:
        self._pending: list[tuple[torch.Tensor, torch.Tensor | None, int, int]] = []

    def watch(self, logs: dict[str, torch.Tensor], batch, epoch: int, step: int) -> None:
        loss = logs.get("loss")
        if loss is not None:
            self._pending.append((loss.detach(), getattr(batch, "index", None), epoch, step))

    def check(self, last_good: str) -> None:
        """Raise if a watched loss was not finite (on any rank: every rank calls this at the same
        step). `last_good` says what the last checkpoint holds, for the message."""
        pending, self._pending = self._pending, []
        bad_at = None
        if pending:
            finite = torch.stack([torch.isfinite(v).all() for v, _, _, _ in pending])
            if not bool(finite.all()):  # one host sync per check, not per step
                bad_at = int((~finite).nonzero()[0, 0])
        (anywhere,) = distributed.any_flags(bad_at is not None)
        if not anywhere:
            return
        if bad_at is None:
            raise NonFiniteLoss(f"the loss became NaN/inf on another rank (its error names the step and the batch); "
                                f"{last_good}")
        value, index, epoch, step = pending[bad_at]
        shown = "unknown (the loader gives none)"
        if index is not None:
            rows = index.flatten().tolist()
            shown = str(rows[:MAX_INDICES_SHOWN]) + (f" … ({len(rows)} rows)" if len(rows) > MAX_INDICES_SHOWN else "")
        where = f" on rank {distributed.rank()}" if distributed.active() else ""
        raise NonFiniteLoss(f"the loss became {float(value.float().mean())} at epoch {epoch} step {step} (0-indexed)"
                            f"{where}; training stopped. The batch's dataset indices: {shown}. {last_good}. "
                            "Usual causes: a learning rate too high for this batch size, fp16 without loss scaling, "
                            "or a broken image/label among those indices.")


def non_finite(tensors: dict[str, object]) -> list[str]:
    """Names of the floating-point tensors in `tensors` that hold a NaN or an infinity; one host
    sync per device for all of them."""
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for name, t in tensors.items():
        if torch.is_tensor(t) and (t.is_floating_point() or t.is_complex()):
            by_device.setdefault(t.device, []).append((name, t))
    bad = []
    for items in by_device.values():
        finite = torch.stack([torch.isfinite(t).all() for _, t in items]).tolist()
        bad += [name for (name, _), ok in zip(items, finite) if not ok]
    return bad


def training_state(model: torch.nn.Module, optimizer) -> dict[str, object]:
    """Every tensor a checkpoint stores of the model (weights, buffers) and the optimizer."""
    out: dict[str, object] = dict(model.state_dict())
    if optimizer is not None:
        for index, state in optimizer.state_dict()["state"].items():
            out.update({f"optimizer.state.{index}.{key}": value for key, value in state.items()})
    return out


def check_finite_state(model: torch.nn.Module, optimizer, when: str, last_good: str) -> None:
    """Raise NonFiniteState if any weight, buffer or optimizer tensor is NaN/inf (on any rank:
    every rank calls this before the same checkpoint). `when`: the training position, for the
    message; `last_good`: what the last checkpoint holds."""
    state = training_state(model, optimizer)
    bad = non_finite(state)
    (anywhere,) = distributed.any_flags(bool(bad))
    if not anywhere:
        return
    if not bad:
        raise NonFiniteState(f"the weights or optimizer state became NaN/inf on another rank by {when} (its error "
                             f"names the tensors); training stopped and nothing was saved. {last_good}")
    shown = ", ".join(bad[:3]) + (", …" if len(bad) > 3 else "")
    where = f" on rank {distributed.rank()}" if distributed.active() else ""
    raise NonFiniteState(f"the weights or optimizer state became NaN/inf by {when}{where} while the loss was still "
                         f"finite ({len(bad)} of {len(state)} tensors: {shown}); training stopped and this state was "
                         f"not saved. {last_good}. Usual causes: a learning rate too high for this batch size (lower "
                         "optim.lr, or add schedule.warmup_epochs), fp16 without loss scaling.")


def out_of_memory_message(cfg, epoch: int, step: int, world_size: int, exc: BaseException) -> str:
    """What to say when a step ran out of device memory: the batch that did not fit and what to change."""
    ld, tr = cfg.loader, cfg.train
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"out of device memory at epoch {epoch} step {step} with loader.batch_size={ld.batch_size} per process "
            f"(x {world_size} process{'es' if world_size > 1 else ''}, train.amp={tr.amp}, "
            f"train.grad_accum_steps={tr.grad_accum_steps}). Lower loader.batch_size and raise "
            f"train.grad_accum_steps to keep the effective batch (e.g. loader.batch_size={max(1, ld.batch_size // 2)} "
            f"train.grad_accum_steps={tr.grad_accum_steps * 2}), train in bf16 (train.amp=bf16), or use a smaller "
            f"model.arch. [{first}]")
