"""Multi-process training on CPU: 2 gloo processes with torchrun's environment, bounded in time.

Every launch gives each process one thread and a hard timeout, so a hang fails the test instead of
the suite. What each test proves is in its docstring. Sharding of every loader backend (tensor,
torch, DALI, FFCV) by rank is proved in-process by
`test_loader_conformance.py::test_sharding_by_rank_partitions_the_epoch`; here the same holds in
real processes through `build_run`.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fasttrain.samplers import EvalShard, build_sampler

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "ddp_worker.py"
CONFIG = ROOT / "configs" / "ce" / "cifar10_lt_r100.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_thread_env(**extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "FASTTRAIN_NO_TQDM": "1"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def launch(scenario: str, out: Path, timeout: float, world: int = 2, **env) -> list[tuple[int, str]]:
    """Start `world` ranks of ddp_worker.py as torchrun would (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT), wait at most `timeout` s; (return code, stderr) per rank. A run past the
    timeout kills every rank and fails."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKER), scenario, str(out)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=one_thread_env(RANK=r, WORLD_SIZE=world, LOCAL_RANK=r, MASTER_ADDR="127.0.0.1",
                                                 MASTER_PORT=port, **env))
             for r in range(world)]
    deadline = time.monotonic() + timeout
    results = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((p.returncode, err))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"{scenario}: the ranks did not finish within {timeout} s (a hang)")
    return results


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-rank launch for the equivalence, evaluation and partition checks (one process start-up)."""
    out = tmp_path_factory.mktemp("ddp")
    from ddp_worker import eval_config

    from fasttrain.data import build_datasets

    build_datasets(eval_config(out / "syn"))  # write the synthetic corpus once, before the ranks read it
    t0 = time.monotonic()
    results = launch("equivalence,eval,partition,ssd", out, timeout=150)
    for code, err in results:
        assert code == 0, err[-3000:]
    return out, time.monotonic() - t0


def test_a_global_batch_split_over_two_ranks_trains_like_one_process(two_ranks):
    """3 SGD steps (momentum, weight decay) of a global batch of 8 split 4 + 4 over 2 DDP ranks give
    the parameters of one process stepping on all 8 rows, to fp32 reduction-order rounding
    (atol 1e-6, rtol 1e-5: the gradient is a mean of two 4-row means there, of 8 rows here). The
    model has no BatchNorm on purpose: train-mode BN normalises each rank's 4 rows with their own
    statistics, which is a different function from BN over 8 rows (SyncBN would match, but it is
    CUDA-only in PyTorch). The same holds with 2 accumulated micro-batches of 2 rows per rank."""
    from ddp_worker import global_batches, make_learner, train

    out, _ = two_ranks
    ddp = torch.load(out / "equivalence.pt")
    single = train(make_learner(False), global_batches(), rank=0, world=1, accum=1)
    start = make_learner(False).model.state_dict()
    for key, value in single.items():
        assert not torch.equal(value, start[key]), f"{key} did not train"
        torch.testing.assert_close(ddp["plain"][key], value, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(ddp["accumulated"][key], value, atol=1e-6, rtol=1e-5)


def test_gradient_accumulation_in_one_process_equals_the_whole_batch():
    """train.grad_accum_steps without DDP: 4 micro-batches of 2 rows = one step on 8 rows."""
    from ddp_worker import global_batches, make_learner, train

    whole = train(make_learner(False), global_batches(), rank=0, world=1, accum=1)
    accumulated = train(make_learner(False, accum=4), global_batches(), rank=0, world=1, accum=4)
    for key, value in whole.items():
        torch.testing.assert_close(accumulated[key], value, atol=1e-6, rtol=1e-5)


def test_sharded_evaluation_gathers_to_the_single_process_report_exactly(two_ranks):
    """12 test images in eval batches of 5: rank 0 evaluates batches 0 and 2 (7 rows), rank 1 batch 1
    (5 rows); gathered by dataset index, every rank's report (top-1, many/medium/few, per-class,
    ECE) equals the single-process one exactly — no row lost or counted twice."""
    from ddp_worker import eval_config

    from fasttrain.build import build_run
    from fasttrain.evaluation import evaluate

    out, _ = two_ranks
    single = evaluate(build_run(eval_config(out / "syn")))
    ranks = [json.loads((out / f"eval_rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["shard"] == [0, 1, 2, 3, 4, 10, 11] and ranks[1]["shard"] == [5, 6, 7, 8, 9]
    for r in ranks:
        assert r["report"] == json.loads(json.dumps(single))


def test_ssd_queues_gather_every_ranks_keys_and_stay_identical(two_ranks):
    """SSD stage I on 2 ranks (4 rows each, queue of 16): after 2 steps both ranks hold the same
    queue, whose labels are the 2 global batches' labels in rank order (each rank enqueued all 8 keys
    of every step, MoCo's concat_all_gather), and the shuffle-BN across ranks ran."""
    out, _ = two_ranks
    a, b = (torch.load(out / f"ssd_rank{r}.pt") for r in range(2))
    assert torch.equal(a["keys"], b["keys"]) and torch.equal(a["labels"], b["labels"])
    assert a["ptr"] == b["ptr"] == 0  # 2 steps x 8 keys = one lap of 16
    assert a["labels"].tolist() == [y for step in a["global_labels"] for y in step]
    torch.testing.assert_close(a["keys"].norm(dim=1), torch.ones(16))


def test_eval_shards_partition_uneven_splits():
    """EvalShard: whole batches per rank, every index exactly once, for sizes that do not divide."""
    for n, b, world in ((12, 5, 2), (1000, 256, 3), (7, 1, 4), (10, 10, 2)):
        parts = [EvalShard(n, b, r, world).order(0) for r in range(world)]
        assert sorted(torch.cat(parts).tolist()) == list(range(n))


def test_ranks_partition_the_training_epoch_through_build_run(two_ranks):
    """In the 2-process job, build_run's train loader (tensor and torch backends) gives rank r the
    positions r, r+2, ... of the one global order of each epoch: disjoint, and interleaved they are
    the global order (the order a single process would read)."""
    out, _ = two_ranks
    seen = [json.loads((out / f"partition_rank{r}.json").read_text()) for r in range(2)]
    from ddp_worker import eval_config

    from fasttrain.data import build_datasets

    cfg = eval_config(out / "syn")
    cfg.data.dataset = "synthetic_cifar10_lt"
    train_set, _ = build_datasets(cfg)
    for backend in ("tensor", "torch"):
        for epoch in (0, 1):
            a, b = seen[0][f"{backend}/{epoch}"], seen[1][f"{backend}/{epoch}"]
            assert len(a) == len(b) == 100 and not set(a) & set(b)
            full = build_sampler("instance", torch.as_tensor(train_set.labels), 10, seed=0).order(epoch)
            assert [x for pair in zip(a, b) for x in pair] == full[:200].tolist()
        assert seen[0][f"{backend}/0"] != seen[0][f"{backend}/1"]  # a new order per epoch


def test_a_rank_that_dies_makes_the_other_fail_instead_of_hanging(tmp_path):
    """Rank 1 exits abruptly after joining; rank 0, waiting in a collective, exits with an error well
    within the 20 s train.dist_timeout_s (gloo notices the closed connection; a silent hang would be
    caught by the timeout)."""
    t0 = time.monotonic()
    (code0, err0), (code1, _) = launch("die", tmp_path, timeout=60, FASTTRAIN_TEST_DIST_TIMEOUT=20)
    assert code1 == 3 and code0 != 0, err0[-2000:]
    assert not (tmp_path / "die_rank0_returned").exists()
    assert time.monotonic() - t0 < 45
    assert "Error" in err0 or "error" in err0


def tiny_train_args(out: Path, root: Path, *extra: str) -> list[str]:
    return [str(CONFIG), "data.dataset=synthetic", "data.num_classes=3", "data.synthetic_size=[32,32]",
            "data.synthetic_max_per_class=8", f"data.root={root}", f"out_dir={out}", "device=cpu",
            "train.epochs=2", "train.max_steps_per_epoch=3", "loader.num_workers=0", "loader.batch_size=4",
            "loader.eval_batch_size=5", "train.log_every=1", *extra]


def torchrun(args: list[str], timeout: float, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
           f"--master-port={free_port()}", "-m", "fasttrain.cli", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=one_thread_env())


def test_torchrun_trains_end_to_end_with_rank0_outputs_and_exact_evaluation(tmp_path):
    """`torchrun --nproc-per-node 2 -m fasttrain.cli train ...` on CPU: one run directory written by
    rank 0 (one metrics line per epoch, summary says 2 processes), last.pt holds both ranks' RNG and
    loader states, and the final top-1 (sharded evaluation, gathered) equals `fasttrain eval` of the
    saved weights in one process."""
    from fasttrain.checkpoint import load_checkpoint
    from fasttrain.evaluation import evaluate_checkpoint

    proc = torchrun(tiny_train_args(tmp_path / "runs", tmp_path / "syn"), timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "runs" / "ce_cifar10_lt_r100"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and [e["epoch"] for e in summary["epochs"]] == [0, 1]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert summary["selected"]["on"] == "test" and "optimistic" in summary["selected"]["note"]
    state = load_checkpoint(run / "last.pt")
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert [r["loader"]["epoch"] for r in state["ranks"]] == [state["loader"]["epoch"]] * 2
    assert evaluate_checkpoint(run / "last.pt", plot=None, csv=None)["top1"] == summary["final"]["top1"]


def _one_backward(name: str) -> list[str]:
    """Trainable parameters of method `name`'s model that one loss + backward leaves without a
    gradient (tiny BN-free backbone; a later stage continues its base method's model)."""
    from helpers import TinyBackbone, method_context

    from fasttrain.batch import Batch
    from fasttrain.methods import METHODS, Progress

    cls, ctx = METHODS[name], method_context(counts=(100, 10, 1))
    cfg = cls.config_class()
    if name == "ssd_distill":
        cfg.teacher_scaled = False  # a plain Linear teacher head (a stage-II model would carry LWS scales)
    method = cls(cfg, ctx)
    previous = None
    if cls.continues_stage:
        base = METHODS[cfg.base_method]
        previous = base(base.config_class(), ctx).new_model(TinyBackbone(hw=8, d=16))
    model = method.build_model(TinyBackbone(hw=8, d=16) if method.needs_backbone(previous) else None, previous)
    method.prepare(model)
    streams, rows = len(method.streams()), 4
    n = streams * rows
    x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = Batch(views=[x] * cls.num_views, labels=torch.arange(n) % 3,
                  stream=torch.arange(streams).repeat_interleave(rows), num_streams=streams,
                  geometry=[None] * cls.num_views, index=torch.arange(n))
    loss, _ = method.loss(model, batch, Progress(1, 4, 0, 2))
    loss.backward()
    assert any(p.requires_grad for p in model.parameters()), name
    return [k for k, p in model.named_parameters() if p.requires_grad and p.grad is None]


def test_find_unused_parameters_is_set_exactly_where_a_method_needs_it():
    """DDP's find_unused_parameters costs a graph search every step, so it is a per-method flag: a
    method whose loss leaves a trainable parameter without a gradient must set it (or DDP fails at
    the next step), and one whose loss reaches every parameter must not (it would only cost time)."""
    from fasttrain.methods import METHODS

    for name, cls in sorted(METHODS.items()):
        if cls.trains:
            assert bool(_one_backward(name)) == cls.ddp_find_unused_parameters, name
