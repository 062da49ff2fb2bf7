"""Safe loading, run directories that are never reused silently, Ctrl-C, resume bookkeeping."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import after_step_at

from fasttrain.checkpoint import CheckpointError, load_checkpoint
from fasttrain.cli import main
from fasttrain.config import load_config
from fasttrain.trainer import RunDirectoryInUse, Trainer, run_training

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "ce" / "cifar10_lt_r100.yaml"


def tiny(tmp_path, *extra):
    return load_config(CONFIG, [
        "data.dataset=synthetic", "data.num_classes=3", "data.synthetic_size=[32,32]", "data.synthetic_max_per_class=8",
        f"data.root={tmp_path / 'syn'}", f"out_dir={tmp_path / 'runs'}", "device=cpu", "train.epochs=2",
        "train.max_steps_per_epoch=2", "loader.num_workers=0", "loader.batch_size=4", *extra])


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_a_checkpoint_whose_pickle_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "payload": _RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    proc = subprocess.run([sys.executable, "-m", "fasttrain.cli", "eval", str(tmp_path / "evil.pt")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "refused" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_checkpoints_load_weights_only_and_resume_state_round_trips(tmp_path):
    run_training(tiny(tmp_path, "train.stop_after_epochs=1"))
    state = load_checkpoint(tmp_path / "runs" / "ce_cifar10_lt_r100" / "last.pt")  # weights_only inside
    assert state["epoch"] == 1 and set(state["rng"]) >= {"python", "numpy", "torch"}


def test_a_run_directory_is_never_reused_silently(tmp_path):
    run_training(tiny(tmp_path, "train.epochs=1"))
    with pytest.raises(RunDirectoryInUse, match="--resume.*--overwrite"):
        run_training(tiny(tmp_path, "train.epochs=1"))
    lines = (tmp_path / "runs" / "ce_cifar10_lt_r100" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # nothing appended by the refused start
    run_training(tiny(tmp_path, "train.epochs=1"), overwrite=True)
    assert len((tmp_path / "runs" / "ce_cifar10_lt_r100" / "metrics.jsonl").read_text().splitlines()) == 1
    assert len(list((tmp_path / "runs" / "ce_cifar10_lt_r100" / "tb").glob("events.*"))) == 1
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        run_training(tiny(tmp_path, "name=other"), resume=True)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        run_training(tiny(tmp_path, "name=other2"), resume=str(tmp_path / "missing.pt"))
    proc = subprocess.run([sys.executable, "-m", "fasttrain.cli", "train", str(CONFIG), *[
        "data.dataset=synthetic", "data.num_classes=3", "data.synthetic_size=[32,32]", "data.synthetic_max_per_class=8",
        f"data.root={tmp_path / 'syn'}", f"out_dir={tmp_path / 'runs'}", "device=cpu", "train.epochs=1"]],
        capture_output=True, text=True)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_from_an_explicit_checkpoint(tmp_path):
    run_training(tiny(tmp_path, "train.stop_after_epochs=1"))
    ckpt = tmp_path / "runs" / "ce_cifar10_lt_r100" / "last.pt"
    copy = tmp_path / "saved.pt"
    copy.write_bytes(ckpt.read_bytes())
    out = run_training(tiny(tmp_path, "name=again"), resume=str(copy))
    assert [e["epoch"] for e in out["epochs"]] == [0, 1]


def test_resumed_metrics_hold_each_epoch_once(tmp_path):
    run_training(tiny(tmp_path, "train.stop_after_epochs=1"))
    metrics = tmp_path / "runs" / "ce_cifar10_lt_r100" / "metrics.jsonl"
    with open(metrics, "a") as f:  # a killed invocation logged epoch 1 but never checkpointed it
        f.write(json.dumps({"epoch": 1, "loss": 123.0}) + "\n")
    run_training(tiny(tmp_path), resume=True)
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert epochs == [0, 1] and 123.0 not in [json.loads(x).get("loss") for x in metrics.read_text().splitlines()]


# The SIGINT disposition the process starts with: Python's own handler (a terminal), or ignored (a
# process started in the background, `nohup pytest ... &`, inherits SIG_IGN). The test sets each
# itself, so it passes however pytest was launched.
INHERITED_SIGINT = {"terminal": signal.default_int_handler, "background": signal.SIG_IGN}


@pytest.mark.parametrize("launched", list(INHERITED_SIGINT))
def test_ctrl_c_saves_at_the_next_step_and_exits_cleanly(launched, tmp_path):
    """SIGINT after step 2: last.pt at that step, exit 143, and the SIGINT handler afterwards is the
    one the process had before (default, or ignored as under nohup)."""
    before = signal.signal(signal.SIGINT, INHERITED_SIGINT[launched])
    try:
        cfg = tiny(tmp_path, "train.epochs=3", "train.max_steps_per_epoch=4")
        trainer = Trainer(cfg, tmp_path / "runs" / "int")
        after_step_at(trainer, 1, 1, lambda: os.kill(os.getpid(), signal.SIGINT))  # what Ctrl-C sends, after step 2
        with pytest.raises(SystemExit) as exc:
            trainer.fit()
        assert exc.value.code == 143
        state = load_checkpoint(tmp_path / "runs" / "int" / "last.pt")
        assert state["epoch"] == 1 and state["loader"]["position"] == 2
        assert signal.getsignal(signal.SIGINT) is INHERITED_SIGINT[launched]  # restored to what it was
    finally:
        signal.signal(signal.SIGINT, before)


# --- faults: a full disk, a diverging run, torchrun evaluation, Ctrl-C during evaluation --------------

RUN = "ce_cifar10_lt_r100"


def cli_args(tmp_path, *extra) -> list[str]:
    """`fasttrain train` argv of the tiny run of `tiny` (for the CLI's in-process `main`)."""
    return ["train", str(CONFIG), "data.dataset=synthetic", "data.num_classes=3", "data.synthetic_size=[32,32]",
            "data.synthetic_max_per_class=8", f"data.root={tmp_path / 'syn'}", f"out_dir={tmp_path / 'runs'}",
            "device=cpu", "train.epochs=1", "train.max_steps_per_epoch=3", "loader.num_workers=0",
            "loader.batch_size=4", *extra]


def one_error_line(capsys) -> str:
    """The one `error:` line the CLI printed (and no traceback anywhere on stderr)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def all_finite(path) -> bool:
    state = load_checkpoint(path)
    tensors = list(state["model"].values())
    for per_param in ((state.get("optimizer") or {}).get("state") or {}).values():
        tensors += [v for v in per_param.values() if torch.is_tensor(v)]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def test_enospc_from_torch_saves_zip_writer_is_one_line_and_keeps_last_pt(tmp_path, monkeypatch, capsys):
    """On a full disk torch.save's zip writer raises a RuntimeError ('[enforce fail at
    inline_container.cc...]', no errno) while handling the OSError(ENOSPC) of the write: still one
    line naming last.pt and the reason, exit 2, the partial temp file removed, the previous last.pt
    (after step 1) intact and loadable."""
    import errno

    import fasttrain.checkpoint as ck

    real_save, calls = torch.save, []

    def save(obj, f, *a, **kw):  # the first checkpoint fits, the second fills the disk
        calls.append(1)
        if len(calls) == 1:
            return real_save(obj, f, *a, **kw)
        f.write(b"partial zip")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(ck.torch, "save", save)
    assert main(cli_args(tmp_path, "train.save_every_steps=1")) == 2
    line = one_error_line(capsys)
    assert re.search(r"runs/ce_cifar10_lt_r100/last\.pt: could not write the checkpoint \(No space left on device\); "
                     r"the previous last\.pt is intact", line), line
    run = tmp_path / "runs" / RUN
    assert not [p for p in run.iterdir() if ".tmp" in p.name]
    assert load_checkpoint(run / "last.pt")["loader"]["position"] == 1


def _mount_tmpfs(where, size: str) -> bool:
    """A `size` tmpfs at `where` (root only); False where it cannot be mounted."""
    if os.geteuid() != 0:
        return False
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def test_a_full_tmpfs_fails_cleanly_and_resume_does_too(tmp_path, capsys):
    """The report's case, on a real 6 MB tmpfs (root only): a checkpoint of 3.8 MB fits once, the
    second does not. Both the run and its --resume end with the one-line checkpoint error (exit 2)
    — no TensorBoard traceback on resume, because no temp file was left to keep the disk full; a
    temp file a killed writer left there is removed when the resume starts."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "6m"):
        pytest.skip("needs root and a mountable tmpfs")
    try:
        argv = cli_args(tmp_path, f"out_dir={disk}", "train.epochs=2", "train.max_steps_per_epoch=4",
                        "data.synthetic_max_per_class=16", "train.save_every_steps=1")
        run = disk / RUN
        for attempt in (argv, [*argv, "--resume"]):
            assert main(attempt) == 2, attempt
            line = one_error_line(capsys)
            assert re.search(r"last\.pt: could not write the checkpoint \(No space left on device\); the previous "
                             r"last\.pt is intact", line), (attempt, line)
            assert not list(run.glob(".*.tmp.*")) and load_checkpoint(run / "last.pt")["loader"]["position"] == 1
            (run / ".last.pt.tmp.999999999").write_bytes(b"\0" * 1_000_000)  # a killed writer's (no such pid)
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def _plant_full_disk(path) -> None:
    """Make `path` a file whose every write fails with ENOSPC, as on a full disk (/dev/full)."""
    path.unlink(missing_ok=True)
    os.symlink("/dev/full", path)


# file: (the function that writes it, whether the full disk is planted at the file or at its temp file)
FULL_DISK_WRITERS = {
    "config.yaml": ("dump_config", False),
    "train.log": ("RunLog._open_writers", False),
    "metrics.jsonl": ("RunLog.epoch", False),
    "per_class_accuracy.png": ("RunLog.finish", True),
    "per_class.csv": ("RunLog.finish", True),
    "top1_vs_time.png": ("RunLog.finish", True),
    "summary.json": ("RunLog.finish", True),
}


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("name", [*FULL_DISK_WRITERS, "tb"])
def test_every_writer_of_a_run_reports_a_full_disk_in_one_line(name, tmp_path, monkeypatch, capsys):
    """Each file a run writes, hit by a real ENOSPC (a /dev/full link put in its place just before
    it is written; TensorBoard: its record writer raising ENOSPC in its thread): one line naming
    that file and 'No space left on device', exit 2, no traceback (not even from TensorBoard's
    writer thread), no temp file left."""
    import errno

    import fasttrain.trainer as trainer_module
    from fasttrain.checkpoint import temp_path
    from fasttrain.runlog import RunLog

    run = tmp_path / "runs" / RUN
    if name == "tb":
        from tensorboard.summary.writer.record_writer import RecordWriter

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(RecordWriter, "write", write)
    else:
        where, at_temp = FULL_DISK_WRITERS[name]
        owner, attr = (RunLog, where.split(".")[1]) if where.startswith("RunLog.") else (trainer_module, where)
        real = getattr(owner, attr)

        def planted(*a, **kw):  # the disk fills up just before this writer runs
            _plant_full_disk(temp_path(run / name) if at_temp else run / name)
            return real(*a, **kw)

        monkeypatch.setattr(owner, attr, planted)
    assert main(cli_args(tmp_path, "train.max_steps_per_epoch=2")) == 2
    line = one_error_line(capsys)
    assert f"{run / name}: could not write (No space left on device)" in line, line
    assert not list(run.glob(".*.tmp.*"))


def test_temp_files_of_killed_writers_are_removed_on_start_and_resume(tmp_path):
    """`.last.pt.tmp.<pid>` and the like, left by a writer killed mid-write (its pid is gone), are
    removed when a run starts or resumes; a live process's temp file is left alone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        fresh = tmp_path / "runs" / RUN
        fresh.mkdir(parents=True)
        (fresh / f".last.pt.tmp.{dead.pid}").write_bytes(b"torn")
        run_training(tiny(tmp_path, "train.stop_after_epochs=1"))  # a start
        assert not (fresh / f".last.pt.tmp.{dead.pid}").exists()
        stale = [fresh / f".last.pt.tmp.{dead.pid}", fresh / f".best.pt.tmp.{dead.pid}",
                 fresh / f".summary.json.tmp.{dead.pid}"]
        for path in stale:
            path.write_bytes(b"torn")
        kept = fresh / f".last.pt.tmp.{live.pid}"
        kept.write_bytes(b"being written")
        run_training(tiny(tmp_path), resume=True)  # a resume
        assert not any(p.exists() for p in stale) and kept.exists()
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize("what", ["weights", "optimizer state"])
def test_a_diverging_update_never_reaches_a_checkpoint(what, tmp_path, capsys):
    """An optimizer step that leaves a NaN/inf in the weights (or the momentum) while its loss was
    finite: the next checkpoint (every step here) is not written, the run stops with exit 3, and
    the message names the last checkpoint that is finite — after step 1 — which is what last.pt
    holds. Poisoned at the first step, the message says there is no checkpoint."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    steps, poison = [], {"at": 2}

    def poison_hook(optimizer, args, kwargs):  # after optimizer step number poison["at"] (1-based)
        steps.append(1)
        if len(steps) == poison["at"]:
            p = optimizer.param_groups[0]["params"][0]
            target = p if what == "weights" else optimizer.state[p]["momentum_buffer"]
            with torch.no_grad():
                target[(0,) * target.dim()] = float("inf")

    handle = register_optimizer_step_post_hook(poison_hook)
    try:
        assert main(cli_args(tmp_path, "train.save_every_steps=1", "train.log_every=1")) == 3
        line = one_error_line(capsys)
        assert re.search(r"became NaN/inf by epoch 0 step 1 \(0-indexed\) while the loss was still finite \(1 of "
                         r"\d+ tensors: .*\); training stopped and this state was not saved\. last\.pt holds the last "
                         r"good state \(epoch 0, step 1\)", line), line
        run = tmp_path / "runs" / RUN
        assert load_checkpoint(run / "last.pt")["loader"]["position"] == 1 and all_finite(run / "last.pt")
        assert not (run / "best.pt").exists()
        steps.clear()
        poison["at"] = 1
        assert main(cli_args(tmp_path, "name=first", "train.save_every_steps=1")) == 3
        assert "No checkpoint of this run was written yet" in one_error_line(capsys)
        assert not (tmp_path / "runs" / "first" / "last.pt").exists()
    finally:
        handle.remove()


def test_a_huge_learning_rate_leaves_only_finite_checkpoints(tmp_path, capsys):
    """lr = 1e6 (and written so: scientific notation): the run diverges and stops with exit 3 (a
    NaN loss or NaN/inf weights, whichever comes first); every checkpoint it left is finite, and
    the one the message names is the one on disk."""
    argv = cli_args(tmp_path, "optim.lr=1e6", "train.save_every_steps=1", "train.epochs=2",
                    "train.max_steps_per_epoch=4", "data.synthetic_max_per_class=16")
    assert main(argv) == 3
    line = one_error_line(capsys)
    run = tmp_path / "runs" / RUN
    for name in ("last.pt", "best.pt"):
        assert not (run / name).exists() or all_finite(run / name), name
    named = re.search(r"last\.pt holds the last good state \(epoch (\d+)(?:, step (\d+))?\)", line)
    if named:
        state = load_checkpoint(run / "last.pt")
        assert state["epoch"] == int(named.group(1))
        assert named.group(2) is None or state["loader"]["position"] == int(named.group(2))
    else:
        assert "No checkpoint of this run was written yet" in line and not (run / "last.pt").exists()


def test_resume_refuses_a_checkpoint_with_non_finite_weights(tmp_path, capsys):
    """A last.pt written by a diverged run of an older fasttrain cannot be continued: one line saying so."""
    run_training(tiny(tmp_path, "train.stop_after_epochs=1"))
    path = tmp_path / "runs" / RUN / "last.pt"
    state = load_checkpoint(path)
    next(iter(state["model"].values())).fill_(float("nan"))
    torch.save(state, path)
    assert main([*cli_args(tmp_path, "train.epochs=2"), "--resume"]) == 2
    assert re.search(r"last\.pt: the checkpoint holds NaN/inf weights \(1 of \d+ tensors", one_error_line(capsys))


def _eval_that_signals(monkeypatch, at_call: int) -> None:
    """Patch the trainer's `evaluate` so that its call number `at_call` (0-based) gets a SIGINT —
    Ctrl-C — in the middle of the evaluation."""
    import fasttrain.trainer as trainer_module

    real, calls = trainer_module.evaluate, []

    def evaluate(run, *a, **kw):
        calls.append(1)
        if len(calls) - 1 == at_call:
            os.kill(os.getpid(), signal.SIGINT)
        return real(run, *a, **kw)

    monkeypatch.setattr(trainer_module, "evaluate", evaluate)


@pytest.mark.parametrize("epoch", [0, 1], ids=["first epoch", "last epoch"])
def test_ctrl_c_during_evaluation_stops_after_it_and_resumes_exactly(epoch, tmp_path, monkeypatch):
    """SIGINT during epoch `epoch`'s evaluation: the evaluation finishes, the epoch's last.pt is
    written, the run exits 143 before any step of the next epoch (during the last epoch's
    evaluation too: not exit 0 as if finished). --resume then ends with the weights and the
    metrics rows of a run that was never interrupted."""
    cfg = tiny(tmp_path, "train.max_steps_per_epoch=3")
    Trainer(cfg, tmp_path / "runs" / "ref").fit()
    steps = json.loads((tmp_path / "runs" / "ref" / "metrics.jsonl").read_text().splitlines()[0])["steps"]
    trainer = Trainer(cfg, tmp_path / "runs" / "cut")
    seen = []
    for e in range(cfg.train.epochs):
        for s in range(steps):
            after_step_at(trainer, e, s, lambda e=e, s=s: seen.append((e, s)))
    _eval_that_signals(monkeypatch, at_call=epoch)
    with pytest.raises(SystemExit) as exc:
        trainer.fit()
    assert exc.value.code == 143
    assert seen == [(e, s) for e in range(epoch + 1) for s in range(steps)]  # no step of the next epoch
    state = load_checkpoint(tmp_path / "runs" / "cut" / "last.pt")
    assert state["epoch"] == epoch + 1 and [r["epoch"] for r in state["history"]] == list(range(epoch + 1))
    monkeypatch.undo()
    Trainer(cfg, tmp_path / "runs" / "cut", resume=True).fit()
    a, b = (load_checkpoint(tmp_path / "runs" / name / "last.pt") for name in ("ref", "cut"))
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    rows = [json.loads(x) for x in (tmp_path / "runs" / "cut" / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(x) for x in (tmp_path / "runs" / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["loss"], r["top1"]) for r in rows] == [(r["epoch"], r["loss"], r["top1"]) for r in ref_rows]
    assert (tmp_path / "runs" / "cut" / "summary.json").is_file()


def test_ctrl_c_in_fasttrain_eval_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    """`fasttrain eval` answers Ctrl-C (a real SIGINT in the middle of the evaluation) with exit 130
    and one line, not a KeyboardInterrupt traceback. The default SIGINT handler is set here, so the
    test does not depend on how pytest was started (in the background SIGINT is ignored)."""
    import fasttrain.evaluation as evaluation

    run_training(tiny(tmp_path, "train.stop_after_epochs=1"))
    real = evaluation.evaluate

    def evaluate(run, *a, **kw):
        os.kill(os.getpid(), signal.SIGINT)
        return real(run, *a, **kw)

    monkeypatch.setattr(evaluation, "evaluate", evaluate)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        capsys.readouterr()
        assert main(["eval", str(tmp_path / "runs" / RUN / "last.pt")]) == 130
    except KeyboardInterrupt:  # escaping, it would end the whole pytest session
        pytest.fail("fasttrain eval let Ctrl-C's KeyboardInterrupt escape (a traceback)")
    finally:
        signal.signal(signal.SIGINT, old)
    assert "interrupted" in one_error_line(capsys)


def test_a_resumed_epoch_row_is_marked_partial_and_the_resume_is_logged_once(tmp_path, caplog):
    """A run stopped after step 2 of epoch 0 and resumed: epoch 0's metrics.jsonl row says its
    loss / img/s / steps cover the steps from 2 on (`resumed_at_step: 2`, `steps: 2` of 4); a whole
    epoch's row has no such key; 'resumed from' is logged once, and is in train.log."""
    import logging

    cfg = tiny(tmp_path, "train.epochs=2", "train.max_steps_per_epoch=4", "data.synthetic_max_per_class=16")
    run = tmp_path / "runs" / RUN
    trainer = Trainer(cfg, run)
    after_step_at(trainer, 0, 1, lambda: setattr(trainer, "_stop_requested", True))
    with pytest.raises(SystemExit):
        trainer.fit()
    with caplog.at_level(logging.INFO, logger="fasttrain"):
        run_training(cfg, resume=True)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert (rows[0]["resumed_at_step"], rows[0]["steps"]) == (2, 2)
    assert "resumed_at_step" not in rows[1] and rows[1]["steps"] == 4
    assert sum("resumed from" in r.getMessage() for r in caplog.records) == 1
    assert sum("resumed from" in line for line in (run / "train.log").read_text().splitlines()) == 1


def test_a_run_that_failed_before_its_first_checkpoint_does_not_block_the_rerun(tmp_path, monkeypatch, capsys):
    """A first run that stops at its first step (NaN loss) leaves config.yaml, train.log and tb/ but
    no checkpoint: the corrected re-run starts there without --overwrite (and replaces those files)."""
    from fasttrain.methods import METHODS

    ce = METHODS["ce"]
    real = ce.loss

    def nan_loss(self, model, batch, progress):
        value, logs = real(self, model, batch, progress)
        return value * float("nan"), {**logs, "loss": (value * float("nan")).detach()}

    monkeypatch.setattr(ce, "loss", nan_loss)
    assert main(cli_args(tmp_path, "train.log_every=1")) == 3
    run = tmp_path / "runs" / RUN
    assert {"config.yaml", "train.log", "tb"} <= {p.name for p in run.iterdir()} and not (run / "last.pt").exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert main(cli_args(tmp_path)) == 0
    assert (run / "last.pt").is_file() and len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_torchrun_evaluates_the_saved_model_and_prints_once(tmp_path):
    """2 gloo ranks with BatchNorm: each rank's forwards update its own running statistics, yet the
    reported final evaluation (top-1, many/medium/few, ECE) is exactly single-process `fasttrain eval` of
    the saved last.pt — every rank evaluated rank 0's buffers, the saved ones. Only rank 0 prints
    the final JSON."""
    from test_ddp import tiny_train_args, torchrun

    from fasttrain.evaluation import evaluate_checkpoint

    args = tiny_train_args(tmp_path / "runs", tmp_path / "syn", "data.synthetic_max_per_class=32",
                           "data.synthetic_test_per_class=8", "train.max_steps_per_epoch=6", "optim.lr=0.01")
    proc = torchrun(args, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count('"run_dir"') == 1, proc.stdout
    run = tmp_path / "runs" / RUN
    final = json.loads((run / "summary.json").read_text())["final"]
    alone = evaluate_checkpoint(run / "last.pt", plot=None, csv=None)
    keys = ("top1", "many", "medium", "few", "ece")
    assert {k: final[k] for k in keys} == {k: alone[k] for k in keys}


def test_docs_recovery_page_names_an_existing_test_for_every_guarantee():
    """Each guarantee listed on the documentation site's recovery page (fasttrain/docs/user-guide/
    recovery.md, "Guarantees") names at least one test, and each test it names exists."""
    import importlib

    text = (ROOT / "fasttrain" / "docs" / "user-guide" / "recovery.md").read_text()
    section = text[text.index("## Guarantees"):text.index("## Bad input")]
    guarantees = section.split("\n- ")[1:]
    assert len(guarantees) >= 10
    for guarantee in guarantees:
        named = re.findall(r"(test_\w+)\.py::(test_\w+)", guarantee)
        assert named, f"names no test: {guarantee[:100]}"
        for module, name in named:
            assert callable(getattr(importlib.import_module(module), name, None)), f"{module}.py::{name}"
