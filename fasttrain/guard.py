"""Training that cannot go on: a loss that became NaN/inf, a step that ran out of device memory.

Both are `TrainingError`s: the CLI prints their one-paragraph message without a traceback and
exits with status 3. The loss check never syncs inside a step: each step's loss tensor is kept
(with the batch's dataset indices) and tested when the trainer reads its logs anyway (every
`train.log_every` steps) and before every checkpoint, so a checkpoint never holds weights that
a non-finite loss has already touched: last.pt stays the last good state.
"""
from __future__ import annotations

import torch

from fasttrain import distributed


class TrainingError(RuntimeError):
    """Training stopped for a reason the message explains (printed without a traceback)."""


class NonFiniteLoss(TrainingError):
    """The loss became NaN or infinite."""


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
