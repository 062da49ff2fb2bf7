"""One rank of the 2-process gloo tests (tests/test_ddp.py starts it with torchrun's environment:
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Usage: ddp_worker.py SCENARIO[,SCENARIO...] OUT_DIR.

Scenarios:
- `equivalence`: a few SGD steps of a BN-free model through the real train_step + DDP, each
  rank on its half of a fixed global batch (also with 2 accumulated micro-batches per step);
  rank 0 saves the parameters (the test compares them with one process on the whole batch).
- `eval`: build_run of a tiny synthetic run with world_size 2 (sharded evaluation, uneven shards)
  and its evaluation report, per rank.
- `ssd`: two SSD stage-I steps under DDP (queue all-gather, shuffle-BN across ranks), per rank.
- `partition`: the first steps of two epochs of build_run's train loader (tensor and torch backends)
  on each rank, with the sampler's order for comparison.
- `die`: rank 1 exits right after joining; rank 0 then waits in a collective and must fail.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from fasttrain import distributed
from fasttrain.batch import Batch
from fasttrain.methods import METHODS, Progress
from fasttrain.step import Learner, MethodLoss, train_step

GLOBAL_BATCH, STEPS, HW = 8, 3, 8


def global_batches(seed: int = 0) -> list[Batch]:
    """STEPS fixed batches of GLOBAL_BATCH uint8 8x8 images, 3 classes."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in range(STEPS):
        views = torch.randint(0, 256, (GLOBAL_BATCH, 3, HW, HW), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 3, (GLOBAL_BATCH,), generator=g)
        idx = torch.arange(s * GLOBAL_BATCH, (s + 1) * GLOBAL_BATCH)
        out.append(rows(Batch(views=[views], labels=labels, stream=torch.zeros(GLOBAL_BATCH, dtype=torch.long),
                              geometry=[None], index=idx), slice(None)))
    return out


def rows(b: Batch, sel) -> Batch:
    return Batch(views=[b.views[0][sel]], labels=b.labels[sel], stream=b.stream[sel], geometry=[None],
                 index=b.index[sel])


def make_learner(ddp: bool, accum: int = 1) -> Learner:
    """CE on a Flatten+Linear backbone without BatchNorm (see test_ddp for why), SGD with momentum
    and weight decay; identical initial weights in every process (seeded)."""
    from helpers import TinyBackbone, method_context

    torch.manual_seed(0)
    method = METHODS["ce"](METHODS["ce"].config_class(), method_context(counts=(100, 10, 1)))
    model = method.new_model(TinyBackbone(hw=HW, d=16))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    wrapped = distributed.wrap(MethodLoss(method, model)) if ddp else None
    return Learner(method, model, model, opt, torch.amp.GradScaler(enabled=False), None, torch.device("cpu"),
                   accum_steps=accum, ddp=wrapped)


def train(learner: Learner, batches: list[Batch], rank: int, world: int, accum: int) -> dict:
    """Each step: this rank's contiguous 1/world of the global batch, in `accum` micro-batches."""
    per_rank = GLOBAL_BATCH // world
    micro_rows = per_rank // accum
    for s, b in enumerate(batches):
        mine = rows(b, slice(rank * per_rank, (rank + 1) * per_rank))
        for m in range(accum):
            train_step(learner, rows(mine, slice(m * micro_rows, (m + 1) * micro_rows)),
                       Progress(0, 1, s, STEPS), micro=m, group=accum)
    return {k: v.detach().clone() for k, v in learner.model.state_dict().items()}


def equivalence(out: Path, ctx: distributed.DistContext) -> None:
    batches = global_batches()
    plain = train(make_learner(True), batches, ctx.rank, ctx.world_size, 1)
    accumulated = train(make_learner(True, accum=2), batches, ctx.rank, ctx.world_size, 2)
    if ctx.is_main:
        torch.save({"plain": plain, "accumulated": accumulated}, out / "equivalence.pt")


def eval_config(root: Path):
    """A tiny synthetic run (12 test images, eval batches of 5: shards of 7 and 5 rows)."""
    from fasttrain.config import load_config

    config = Path(__file__).resolve().parent.parent / "configs" / "ce" / "cifar10_lt_r100.yaml"
    return load_config(config, ["data.dataset=synthetic", "data.num_classes=3", "data.synthetic_size=[32,32]",
                                "data.synthetic_max_per_class=8", "data.synthetic_test_per_class=4",
                                f"data.root={root}", "device=cpu", "loader.num_workers=0",
                                "loader.eval_batch_size=5", "train.epochs=1"])


def evaluation(out: Path, ctx: distributed.DistContext) -> None:
    from fasttrain.build import build_run
    from fasttrain.evaluation import evaluate

    run = build_run(eval_config(out / "syn"), rank=ctx.rank, world_size=ctx.world_size)
    shard = run.eval_loader.samplers[0].indices.tolist()
    report = evaluate(run)
    (out / f"eval_rank{ctx.rank}.json").write_text(json.dumps({"report": report, "shard": shard}))


def ssd_queue(out: Path, ctx: distributed.DistContext) -> None:
    """SSD stage I under DDP: 2 steps of 4 rows per rank (BN backbone: the shuffle-BN across ranks
    runs); each rank saves its queue and the labels it trained on."""
    from helpers import TinyBackbone, method_context

    cls = METHODS["ssd_stage1"]
    torch.manual_seed(0)
    method = cls(cls.config_class(queue_size=16, proj_dim=8), method_context(counts=(100, 10, 1)))
    model = method.new_model(TinyBackbone(hw=HW, d=16, bn=True))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    learner = Learner(method, model, model, opt, torch.amp.GradScaler(enabled=False), None, torch.device("cpu"),
                      ddp=distributed.wrap(MethodLoss(method, model)))
    labels = []
    for s, b in enumerate(global_batches(seed=1)[:2]):
        mine = rows(b, slice(ctx.rank * 4, (ctx.rank + 1) * 4))
        batch = Batch(views=[mine.views[0]] * 2, labels=mine.labels, stream=mine.stream, geometry=[None, None],
                      index=mine.index)
        train_step(learner, batch, Progress(0, 1, s, 2))
        labels.append(b.labels.tolist())
    q = model.queue
    torch.save({"keys": q.keys.clone(), "labels": q.labels.clone(), "ptr": int(q.ptr), "global_labels": labels},
               out / f"ssd_rank{ctx.rank}.pt")


def partition(out: Path, ctx: distributed.DistContext) -> None:
    """This rank's epoch-0 and epoch-1 training indices from build_run's train loader, per backend
    that reads in-memory arrays without extra set-up (the conformance suite shards every backend)."""
    from fasttrain.build import build_run

    seen = {}
    for backend in ("tensor", "torch"):
        cfg = eval_config(out / "syn")
        cfg.loader.backend, cfg.loader.batch_size = backend, 4
        cfg.data.dataset = "synthetic_cifar10_lt"  # in-memory arrays, 12,406 images
        run = build_run(cfg, training=True, rank=ctx.rank, world_size=ctx.world_size)
        loader = run.train_loader
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            idx = []
            for step, batch in enumerate(loader):
                idx += batch.index.tolist()
                if step == 24:  # 25 steps x 4 rows of each rank's 6,203 are enough to see the sharding
                    break
            loader.position = 0
            seen[f"{backend}/{epoch}"] = idx
            seen[f"{backend}/{epoch}/order"] = loader.samplers[0].order(epoch)[:100].tolist()
    (out / f"partition_rank{ctx.rank}.json").write_text(json.dumps(seen))


def die(out: Path, ctx: distributed.DistContext) -> None:
    if ctx.rank == 1:
        os._exit(3)  # a rank that dies (OOM killer, node failure): no clean shutdown
    distributed.mean_scalars({"x": 1.0})  # must raise (peer gone, or the timeout), not hang
    (out / "die_rank0_returned").write_text("collective returned without the other rank")


if __name__ == "__main__":
    torch.set_num_threads(1)  # one thread per rank (the test machine may have 2 cores for 2 ranks)
    scenario, out_dir = sys.argv[1], Path(sys.argv[2])
    timeout = float(os.environ.get("FASTTRAIN_TEST_DIST_TIMEOUT", "60"))
    context = distributed.init_from_env("cpu", timeout)
    scenarios = {"equivalence": equivalence, "eval": evaluation, "partition": partition, "ssd": ssd_queue, "die": die}
    for name in scenario.split(","):
        scenarios[name](out_dir, context)
    # leave together, as run_training does: a rank tearing the group down while its peer is still in a
    # collective aborts at exit ("terminate called without an active exception", seen 1 run in 4)
    distributed.barrier()
    distributed.shutdown()
