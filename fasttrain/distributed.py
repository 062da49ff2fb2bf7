"""Multi-process training through `torchrun` (torch.distributed): the process group, the device of
each rank, the DistributedDataParallel wrap and the few collectives the trainer needs.

There is no launcher here: `torchrun` starts the processes and sets RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT; `init_from_env` reads them. A plain `python` / `fasttrain`
process (no such variables) is a world of one, and every helper below is then a no-op that returns
its input, so the single-process path is exactly what it was before DDP existed.

- Backend: NCCL when the rank's device is CUDA, gloo on CPU. A second, gloo, group carries the
  small control messages (stop requested, checkpoint due, loss finite): on CPU tensors, so asking
  "does any rank want to stop?" every step never waits for the GPU.
- Timeout (`train.dist_timeout_s`): a collective that waits longer for a rank that died or hangs
  fails with an error on the others instead of blocking forever (gloo raises; NCCL's watchdog
  aborts the communicator), and torchrun then tears the job down.
- Device: `cuda:LOCAL_RANK` for `device: auto | cuda`, so one process drives one GPU of its node.
"""
from __future__ import annotations

import datetime
import logging
import os
import pickle
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

log = logging.getLogger("fasttrain")

# The control group (gloo, CPU) created with the main group; None in a single process.
_CONTROL: dict[str, object] = {}


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job (a world of one without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_context() -> DistContext:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them (absent: a world of one)."""
    def read(name: str, default: int) -> int:
        value = os.environ.get(name)
        if value in (None, ""):
            return default
        try:
            return int(value)
        except ValueError:
            raise RuntimeError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None

    ctx = DistContext(read("RANK", 0), read("WORLD_SIZE", 1), read("LOCAL_RANK", read("RANK", 0)))
    if ctx.world_size < 1 or not 0 <= ctx.rank < ctx.world_size:
        raise RuntimeError(f"RANK={ctx.rank} outside WORLD_SIZE={ctx.world_size} (launch with torchrun)")
    return ctx


def rank_device(name: str, local_rank: int) -> torch.device:
    """The device of the process with `local_rank` on its node: `cuda:LOCAL_RANK` for auto / cuda
    (when CUDA is there), else what `name` says."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} CUDA "
                               "devices: start at most one process per GPU (torchrun --nproc-per-node)")
        return torch.device("cuda", local_rank)
    if name == "auto":
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device: {name!r} requested but CUDA is not available (use device=cpu)")
    return dev


def init_from_env(device_name: str, timeout_s: float) -> DistContext:
    """Join the process group torchrun describes (once per process; later calls return the same
    context). A world of one initialises nothing."""
    ctx = env_context()
    if not ctx.enabled or dist.is_initialized():
        return ctx
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    device = rank_device(device_name, ctx.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend, timeout=timeout)
    _CONTROL["group"] = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    if not ctx.is_main:  # one copy of the run's log lines: rank 0's (the others still warn and fail loudly)
        log.setLevel(max(log.level, logging.WARNING))
    log.info("joined a %s process group: rank %d of %d (local rank %d, %s)", backend, ctx.rank, ctx.world_size,
             ctx.local_rank, device)
    return ctx


def shutdown() -> None:
    """Leave the process group (end of the run), so the process exits without a warning."""
    if dist.is_initialized():
        dist.destroy_process_group()
    _CONTROL.clear()


def active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _comm_device() -> torch.device:
    """Where tensors of the main group live: the current CUDA device for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --- model ----------------------------------------------------------------------------------------

def wrap(module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
    """`module` under DistributedDataParallel (gradients all-reduced in buckets during backward;
    rank 0's parameters and buffers broadcast at the start, buffers again before every forward).
    `device_ids=None`: the module is already on this rank's one device, and inputs (our `Batch`)
    are already there, so DDP moves nothing."""
    return nn.parallel.DistributedDataParallel(module, device_ids=None,
                                               find_unused_parameters=find_unused_parameters)


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics, ...) copied to every rank. DDP sends rank
    0's before each training forward, but that forward then updates each rank's copy from its own
    rows, so after an epoch the ranks hold different statistics. Rank 0's are the ones saved, so
    they are the ones every rank evaluates. (The next training forward overwrites them with rank
    0's anyway: training is unchanged.)"""
    if not active():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Every BatchNorm of `model` as SyncBatchNorm (statistics over the global batch): the same
    parameter objects, so an optimizer built afterwards trains the same tensors."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


# --- collectives (identity in a world of one) -----------------------------------------------------

def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Every rank's `x` concatenated along dim 0 in rank order; ranks may hold different numbers
    of rows (padded for the transfer, trimmed after: nothing is counted twice)."""
    if not active():
        return x
    dev = _comm_device()
    local = x.to(dev)
    n = torch.tensor([local.shape[0]], device=dev, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    sizes_host = [int(s.item()) for s in sizes]
    most = max(sizes_host)
    padded = torch.zeros((most, *local.shape[1:]), dtype=local.dtype, device=dev)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in sizes_host]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes_host)]).to(x.device)


def all_gather_equal(x: torch.Tensor) -> torch.Tensor:
    """`all_gather_cat` for tensors of the same shape on every rank (one collective, stays on the
    device, no host sync): SSD's keys and labels, the shuffled key batch. Not differentiable."""
    if not active():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def mean_scalars(values: dict[str, float]) -> dict[str, float]:
    """Per key, the mean over ranks (every rank passes the same keys): reduced training logs."""
    if not active() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)  # host numbers: the CPU group
    dist.all_reduce(t, group=_CONTROL.get("group"))
    t /= world_size()
    return dict(zip(keys, t.tolist()))


def sum_scalar(value: float) -> float:
    """The sum over ranks of a host number (images per second of the job)."""
    if not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t, group=_CONTROL.get("group"))
    return float(t.item())


def any_flags(*flags: bool) -> tuple[bool, ...]:
    """Per flag, whether it is set on any rank (control messages: over the CPU group, no GPU sync)."""
    if not active():
        return tuple(bool(f) for f in flags)
    t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_CONTROL.get("group"))
    return tuple(bool(v) for v in t.tolist())


def gather_to_main(obj: object) -> list[object] | None:
    """Rank 0 receives every rank's `obj` (a list in rank order); the other ranks get None. For the
    per-rank parts of a checkpoint (RNG states, loader positions): small, plain containers."""
    if not active():
        return [obj]
    out = [None] * world_size() if rank() == 0 else None
    dist.gather_object(obj, out, dst=0, group=_CONTROL.get("group"))
    return out


def barrier() -> None:
    if active():
        dist.barrier(group=_CONTROL.get("group"))


def _outcome(fn, args, kwargs) -> tuple[str, object]:
    """("ok", result) or ("error", an exception that can be sent to the other ranks)."""
    try:
        return "ok", fn(*args, **kwargs)
    except Exception as exc:  # re-raised by the caller on every rank, this one included
        try:
            pickle.dumps(exc)
            return "error", exc
        except Exception:
            return "error", RuntimeError(f"rank 0 failed: {type(exc).__name__}: {exc}")


def on_main(fn, *args, **kwargs):
    """Run `fn` on rank 0 only and give every rank its result; an exception raised there is raised on
    every rank, so no rank waits for a rank 0 that already failed (e.g. a run directory that holds
    another run)."""
    if not active():
        return fn(*args, **kwargs)
    payload: list[object] = [_outcome(fn, args, kwargs) if rank() == 0 else None]
    dist.broadcast_object_list(payload, src=0, group=_CONTROL.get("group"))
    kind, value = payload[0]
    if kind == "error":
        raise value
    return value


def main_first(fn, *args, **kwargs):
    """Run `fn` on rank 0, then (if it succeeded) on every other rank; each rank gets its own result.
    For work that fills a cache the others then read (a generated corpus, converted files): the
    ranks never write the same files at once, and an error on rank 0 is raised on every rank."""
    if not active():
        return fn(*args, **kwargs)
    outcome = _outcome(fn, args, kwargs) if rank() == 0 else None
    status: list[object] = [None if outcome is None else (outcome[0], outcome[1] if outcome[0] == "error" else None)]
    dist.broadcast_object_list(status, src=0, group=_CONTROL.get("group"))
    kind, error = status[0]
    if kind == "error":
        raise error
    return outcome[1] if rank() == 0 else fn(*args, **kwargs)
