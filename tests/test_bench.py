"""`fasttrain bench`: the suites run and write valid reports; the GPU one-shot command keeps its
budget and file limits; the CPU speed switches (amp auto, channels_last) do what they say."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fasttrain.bench import SUITES
from fasttrain.bench import gpu as G
from fasttrain.bench import harness as H

ROOT = Path(__file__).resolve().parent.parent


def _fasttrain(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "fasttrain.cli", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


# --- harness ---------------------------------------------------------------------------------


def test_spread_is_median_and_20_80_percentiles():
    s = H.spread([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median"], s["p20"], s["p80"], s["n"]) == (3.0, 1.8, 4.2, 5)
    assert H.spread([7.0])["p20"] == H.spread([7.0])["p80"] == 7.0


def test_device_slug_names_the_cpu_model(monkeypatch):
    monkeypatch.setattr(H, "cpu_model", lambda: "Intel(R) Xeon(R) Platinum 8480C CPU @ 2.00GHz")
    assert H.device_slug(torch.device("cpu")) == "cpu-intel-xeon-platinum-8480c"


def test_validate_report_names_what_is_missing():
    good = {"suite": "x", "device": {"name": "cpu"}, "versions": {}, "config": {},
            "results": [H.row("a", [1.0, 2.0], "ms"), {"name": "b", "skipped": "no DALI"}]}
    assert H.validate_report(good) == []
    bad = {**good, "results": [{"name": "a", "unit": "ms", "median": 1.0}]}
    assert H.validate_report(bad) == ["results[0].p20", "results[0].p80", "results[0].n"]


def test_round_robin_alternates_and_drops_warmup():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = H.round_robin(fns, torch.device("cpu"), reps=2, warmup=1)
    assert calls == ["a", "b", "a", "b", "a", "b"] and [len(v) for v in times.values()] == [2, 2]


def test_every_suite_is_listed_with_its_description(capsys):
    from fasttrain.bench import main, suite_module
    from fasttrain.cli import main as cli_main

    assert cli_main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    for name in SUITES:
        assert f"{name:<9} {suite_module(name).DESCRIPTION}" in out
    with pytest.raises(SystemExit, match="unknown suite 'nope'"):
        main(["nope"])


# --- the GPU one-shot command ----------------------------------------------------------------


def test_outbox_keeps_at_most_8_files_of_at_most_16_mib(tmp_path):
    box = G.Outbox(tmp_path / "out")
    for i in range(9):
        box.put(f"f{i}.json", b"{}")
    assert box.put("f0.json", b"{ }")  # rewriting a file already there is always allowed
    assert not box.put("big.json", b"x" * (G.MAX_FILE_BYTES + 1))
    assert len(list((tmp_path / "out").iterdir())) == 8 and len(box.left_out) == 2


def test_a_part_that_overruns_is_killed_and_recorded(tmp_path):
    part = G.Part("sleepy", ["-c", "import time; time.sleep(60)"], 1.0)
    res = G.run_part(part, 1.0, tmp_path, tmp_path / "sleepy.log")
    assert res["status"] == "timeout" and res["returncode"] is None and res["elapsed_s"] < 15


def test_round_robin_reports_every_round_for_partial_saves():
    seen = []
    H.round_robin({"a": lambda: None}, torch.device("cpu"), reps=3, warmup=1,
                  on_round=lambda s: seen.append(len(s["a"])))
    assert seen == [0, 1, 2, 3]  # after the warm-up, then after each round


def _without_cuda(argv: list[str]) -> list[str]:
    """The arguments minus `--device cuda` (which argparse resolves, and this machine may lack)."""
    i = argv.index("--device")
    assert argv[i + 1] == "cuda"
    return argv[:i] + argv[i + 2:]


def test_gpu_plan_is_headline_first_and_fits_its_budget():
    """The order, the shares and the reduced sweeps of the real (not dry-run) GPU call."""
    import argparse

    from fasttrain.bench import kernels as K
    from fasttrain.bench import loaders as L

    plan = G.parts(dry_run=False)
    assert [p.name for p in plan] == ["step", "train", "step_cuda_graphs", "step_clip_torch", "step_clip_dali",
                                      "kernels", "pytest_gpu", "loaders"]
    assert sum(p.share for p in plan) == pytest.approx(1.0)
    budget = G.DEFAULT_BUDGET_S
    assert budget == 480
    assert 'BUDGET="${BUDGET_S:-480}"' in (ROOT / "benchmarks/gpu_oneshot.sh").read_text()
    # If every part uses its whole share, each still gets a useful slice, and all fit the budget.
    left, timeouts = budget - 5.0, {}
    for i, part in enumerate(plan):
        timeouts[part.name] = left * part.share / sum(p.share for p in plan[i:])
        left -= timeouts[part.name]
    assert min(timeouts.values()) >= 40 and left == pytest.approx(0, abs=1e-6)
    assert timeouts["train"] >= 100  # the 200-epoch headline: compile + 3 x 40 steps
    # kernels: a reduced sweep whose one compile group per kernel exists in it
    kp = argparse.ArgumentParser()
    K.add_arguments(kp)
    by_name = {p.name: p for p in plan}
    kernels, loaders, pytest_gpu = by_name["kernels"], by_name["loaders"], by_name["pytest_gpu"]
    kargs = kp.parse_args(_without_cuda(kernels.argv[kernels.argv.index("kernels") + 1:]))
    sweep = K.sweep_plan(kargs, gpu=True)
    assert len(sweep["groups"]) <= 8 and sweep["reps"] == 20 and sweep["dtypes"] == [torch.bfloat16]
    named = set(kargs.compile_groups.split(","))
    assert len(named) == 2 and named <= sweep["groups"]
    # loaders: nothing that needs DALI or FFCV (the device has neither), 3 reps of 1,024 images
    lp = argparse.ArgumentParser()
    L.add_arguments(lp)
    largs = lp.parse_args(_without_cuda(loaders.argv[loaders.argv.index("loaders") + 1:]))
    assert (largs.reps, largs.images) == (3, 1024)
    assert not any(n.startswith(("dali", "ffcv")) for n in largs.only.split(","))
    # pytest: every outcome listed, a per-test limit
    assert {"-v", "-rA"} <= set(pytest_gpu.argv) and float(pytest_gpu.env["FASTTRAIN_TEST_TIMEOUT_S"]) > 0
    # the install never reaches for the network (the device has none)
    assert "--no-index" in (ROOT / "benchmarks/gpu_oneshot.sh").read_text()


def test_every_suite_part_leaves_its_json_when_stopped(tmp_path):
    """Each suite part of the one-shot (dry run), stopped as an overrun is (SIGINT to its group)
    once its first JSON exists: what it wrote stays a valid report."""
    import signal
    import time

    stopped_midway = []
    for part in [p for p in G.parts(dry_run=True) if p.suite]:
        out = tmp_path / part.name
        # One part runs long enough to be caught mid-way whatever the machine's load (the dry-run
        # parts may all finish in the moment between their first JSON and the signal).
        longer = ["--reps", "500"] if part.name == "step_clip_torch" else []
        argv = [sys.executable, *part.argv, *longer, "--out-dir", str(out)]
        proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=G.default_sigint)  # SIGINT handled even if pytest runs with it ignored
        deadline = time.monotonic() + 240
        while not list(out.glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        running = proc.poll() is None
        if running:
            os.killpg(proc.pid, signal.SIGINT)
        err = proc.communicate(timeout=60)[1].decode(errors="replace")
        files = list(out.glob("*.json"))
        assert len(files) == 1, (part.name, err[-2000:])
        report = json.loads(files[0].read_text())
        assert H.validate_report(report) == [], part.name
        assert report["suite"] == part.suite
        if running and report.get("partial"):
            stopped_midway.append(part.name)
    assert "step_clip_torch" in stopped_midway, f"no part was stopped before it finished ({stopped_midway})"


def test_a_hung_test_fails_after_the_per_test_timeout(tmp_path):
    (tmp_path / "conftest.py").write_text((ROOT / "tests/conftest.py").read_text())
    (tmp_path / "test_hang.py").write_text("import time\n\ndef test_hangs():\n    time.sleep(30)\n\n"
                                           "def test_quick():\n    pass\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FASTTRAIN_TEST_TIMEOUT_S": "1"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res.stdout[-2000:]
    assert "1 failed, 1 passed" in res.stdout and "FASTTRAIN_TEST_TIMEOUT_S=1" in res.stdout


def test_gpu_first_tests_run_first_under_a_mark_expression(tmp_path):
    (tmp_path / "conftest.py").write_text((ROOT / "tests/conftest.py").read_text())
    (tmp_path / "test_order.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.gpu
        def test_a():
            pass

        @pytest.mark.gpu(first=True)
        def test_b():
            pass
    """))
    res = subprocess.run([sys.executable, "-m", "pytest", "-v", "-m", "gpu", "-p", "no:cacheprovider",
                          str(tmp_path)], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout[-2000:]
    assert res.stdout.index("test_b") < res.stdout.index("test_a")


def test_gpu_dry_run_runs_every_part_and_writes_valid_reports(tmp_path):
    """The exact command of the GPU session, on the CPU at tiny sizes: every suite part succeeds,
    its report has the required fields, the chart exists, the output folder holds ≤ 8 files."""
    out = tmp_path / "out"
    res = _fasttrain("bench", "gpu", "--dry-run", "--out", str(out), "--budget-s", "400", timeout=450)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "gpu_summary.json").read_text())
    assert [p["name"] for p in summary["parts"]] == [p.name for p in G.parts(True)]
    assert all(p["status"] == "ok" for p in summary["parts"]), [(p["name"], p.get("output_tail", "")[-800:])
                                                                 for p in summary["parts"] if p["status"] != "ok"]
    files = sorted(f.name for f in out.iterdir())
    assert len(files) <= G.MAX_FILES and "pytest_gpu.log" in files
    for name in ("kernels", "step", "step_cuda_graphs", "train", "loaders", "step_clip_torch", "step_clip_dali"):
        report = summary["reports"][name]
        assert H.validate_report(report) == [], name
        assert any("median" in r for r in report["results"]), name
        assert report["device"]["name"] and report["versions"]["torch"] == torch.__version__
        assert report["config"]["dry_run"] is (not name.startswith("step_clip"))  # the twin trains at its size
        assert summary["parts"][[p["name"] for p in summary["parts"]].index(name)]["png_bytes"] > 1000
    assert any(f.startswith("step_") and f.endswith(".png") for f in files)
    step = summary["reports"]["step"]
    assert {r["name"] for r in step["results"]} == {"loader", "ceiling", "data_only"}
    by = {r["name"]: r for r in step["results"]}  # one sample each in a dry run: only the definition holds
    assert step["loader_efficiency"] == pytest.approx(by["loader"]["median"] / by["ceiling"]["median"])
    assert summary["reports"]["train"]["extrapolation"]["full_run_s"] > 0
    for backend in ("torch", "dali"):  # LIFT's step on the CPU twin, fed by each loader
        clip = summary["reports"][f"step_clip_{backend}"]
        assert (clip["config"]["arch"], clip["config"]["backend"]) == ("open_clip/ViT-B-16", backend)
        assert clip["loader_efficiency"] > 0


# --- the official suite ----------------------------------------------------------------------

# A stand-in for a checkout of github.com/ynu-yangpeng/GLMC with the two modules the suite imports,
# their interfaces only (resnet32(num_class) -> forward(x, train) -> 4 outputs; GLMC_mixed's
# signature and six outputs). Written here, not shipped: the real code is never in this repository.
FAKE_MODEL = '''
import torch.nn as nn
import torch.nn.functional as F


class TinyNet(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc, self.fc_cb = nn.Linear(8, num_classes), nn.Linear(8, num_classes)
        self.projection_head, self.contrast_head = nn.Linear(8, 4), nn.Linear(4, 4)

    def forward(self, x, train=False):
        f = F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1).flatten(1)
        if not train:
            return self.fc_cb(f)
        z = self.projection_head(f)
        return self.fc(f), self.fc_cb(f), z, self.contrast_head(z)


def resnet32(num_class=10):
    return TinyNet(num_class)
'''
FAKE_UTIL = '''
import numpy as np


def GLMC_mixed(org1, org2, invs1, invs2, label_org, label_invs, label_org_w, label_invs_w, alpha=1):
    lam = np.random.beta(alpha, alpha)
    mix = lam * org1 + (1 - lam) * invs1
    org2[:, :, :8, :8] = invs2[:, :, :8, :8]
    y = lam * label_org + (1 - lam) * label_invs
    y_w = lam * label_org_w + (1 - lam) * label_invs_w
    return mix, org2, y, y, y_w, y_w
'''


def fake_official_dir(root: Path) -> Path:
    for rel, text in (("GLMC-2023/model/__init__.py", ""), ("GLMC-2023/model/ResNet_cifar.py", FAKE_MODEL),
                      ("GLMC-2023/utils/__init__.py", ""), ("GLMC-2023/utils/util.py", FAKE_UTIL)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def official_modules_restored():
    """The official code's generic package names (`model`, `utils`) leave sys.modules afterwards."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("model", "utils", "imbalance_data"):
            del sys.modules[name]


def test_official_suite_dry_run_against_a_fake_checkout(tmp_path, official_modules_restored):
    """Alternating official / fasttrain steps in one process: every configuration times, the
    speed-ups are against the official row, the report is valid and charted."""
    from fasttrain.bench import main

    official = fake_official_dir(tmp_path / "glmc")
    rc = main(["official", "--dry-run", "--device", "cpu", "--official-dir", str(official),
               "--configs", "official,fp32,fp32_nchw,bf32,bf16,convs_bf16", "--out-dir", str(tmp_path / "res")])
    assert rc == 0
    (path,) = (tmp_path / "res").glob("official_*.json")
    report = json.loads(path.read_text())
    assert H.validate_report(report) == []
    assert [r["name"] for r in report["results"]] == ["official", "fp32", "fp32_nchw", "bf32", "bf16", "convs_bf16"]
    # the conv-only ceiling: both forwards' 31 convolutions of the (dry-run, narrow) ResNet-32
    assert report["config"]["fasttrain_configs"]["convs_bf16"]["conv_calls"] == 2 * 31
    assert report["targets"]["best_bf16_vs_official"]["ceiling_convs_only"] > 0
    assert report["speedup_vs_official"]["official"] == 1.0
    setups = report["config"]["fasttrain_configs"]
    assert setups["fp32_nchw"]["channels_last"] is False and setups["bf16"]["amp"] == "bfloat16"
    assert setups["bf32"]["onednn_fp32_precision"] == "bf16"
    assert path.with_suffix(".png").stat().st_size > 1000


def test_conv_ceiling_takes_the_gradients_the_step_takes():
    """Every Conv2d call of both forwards; the stem's input (the images) gets no gradient."""
    from fasttrain.bench.official import conv_calls, convs_only

    calls = conv_calls(torch.device("cpu"), 4, "synthetic_cifar10_lt", dry_run=True)
    assert len(calls) == 2 * 31
    needs = [g for _, _, g in calls]
    assert needs.count(False) == 2 and not needs[0]  # the stem, once per forward
    convs_only(calls, torch.bfloat16, torch.device("cpu"))()  # runs


def test_official_suite_refuses_without_a_checkout(tmp_path, capsys):
    from fasttrain.bench import main

    with pytest.raises(SystemExit, match="--official-dir is required"):
        main(["official", "--dry-run", "--device", "cpu"])
    assert main(["official", "--device", "cpu", "--official-dir", str(tmp_path)]) == 2
    assert "no model/ResNet_cifar.py" in capsys.readouterr().err


@pytest.mark.slow
def test_official_suite_on_the_real_checkout(tmp_path):
    """With FASTTRAIN_GLMC_OFFICIAL=<checkout of github.com/ynu-yangpeng/GLMC>: its real model
    and mixing import and step on the CPU."""
    official = os.environ.get("FASTTRAIN_GLMC_OFFICIAL")
    if not official:
        pytest.skip("set FASTTRAIN_GLMC_OFFICIAL to a checkout of github.com/ynu-yangpeng/GLMC")
    res = _fasttrain("bench", "official", "--dry-run", "--device", "cpu", "--official-dir", official,
                     "--configs", "official,fp32", "--out-dir", str(tmp_path), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.slow
def test_loader_suite_with_every_backend_dry_run(tmp_path):
    """DALI and FFCV rows and their decode-only ceilings (slow: FFCV's numba compilation)."""
    res = _fasttrain("bench", "loaders", "--dry-run", "--device", "cpu", "--root", str(tmp_path / "corpus"),
                     "--out-dir", str(tmp_path / "res"), timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    (path,) = (tmp_path / "res").glob("loaders_*.json")
    report = json.loads(path.read_text())
    assert H.validate_report(report) == []
    names = {r["name"] for r in report["results"] if "median" in r}
    assert {"torch/views1", "tensor/views2", "official_pil/views1", "torch_decode_only"} <= names
    assert {"ffcv_decode_only", "ffcv/views2", "ffcv_resample_linear", "ffcv_resample_area"} <= names


def test_resample_rows_time_every_resize_mode_and_the_flip():
    pytest.importorskip("ffcv", reason="FFCV not installed")
    from fasttrain.bench.loaders import resample_rows
    from fasttrain.loaders.ffcv_pipeline import RESIZE_MODES

    rows = resample_rows((40, 30), 16, reps=2, windows=3)
    assert [r["name"] for r in rows] == [f"ffcv_resample_{m}" for m in RESIZE_MODES] + ["ffcv_resample_linear_flip"]
    for r in rows:
        assert r["group"] == "resample" and r["unit"] == "ms/view" and r["n"] == 2 and 0 < r["median"] < 1e3
        assert (r["windows"], r["image"], r["out"]) == (3, "40x30", "16x16")


def test_loader_targets_compare_normalised_rows_with_torch_and_uint8_rows_with_the_ceiling():
    from fasttrain.bench.loaders import loader_targets

    rows = [{"name": n, "group": "jpeg", "median": m} for n, m in
            [("torch/views1", 400.0), ("ffcv/views1", 640.0), ("ffcv_uint8/views1", 1100.0),
             ("ffcv_decode_only", 1500.0), ("dali/views1", 500.0)]]
    t = loader_targets(rows)
    assert t["jpeg:ffcv/views1_vs_torch"] == {"ratio": 1.6, "target": 1.5, "met": True}
    assert t["jpeg:dali/views1_vs_torch"]["met"] is False
    assert t["jpeg:ffcv/views1_vs_decode_only"]["ratio"] == pytest.approx(640 / 1500)
    assert t["jpeg:ffcv_uint8/views1_vs_decode_only"] == {"ratio": pytest.approx(1100 / 1500), "target": 0.7,
                                                         "met": True}
    assert "jpeg:dali_uint8/views1_vs_decode_only" not in t  # no such row, no such target


# --- the CPU speed switches ------------------------------------------------------------------


def test_amp_auto_policy_is_bf16_on_cuda_and_on_native_bf16_cpus(monkeypatch):
    from fasttrain import environment as E

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert E.auto_amp(cuda) is torch.bfloat16
    assert E.auto_amp(cpu, flags={"avx512f", "avx512_bf16"}) is torch.bfloat16
    assert E.auto_amp(cpu, flags={"amx_bf16", "amx_tile"}) is torch.bfloat16
    assert E.auto_amp(cpu, flags={"avx512f", "avx2"}) is None  # emulated bf16 does not count
    monkeypatch.setattr(E, "CPU_AUTO_BF16", False)
    assert E.auto_amp(cpu, flags={"avx512_bf16"}) is None
    assert E.amp_dtype("fp32", cpu) is None and E.amp_dtype("fp32", cuda) is None  # the strict switch


def _first_conv_formats(channels_last, method: str, amp: str = "fp32") -> list[tuple[bool, bool, bool]]:
    """(input contiguous NCHW, input channels_last, weight channels_last) at the first conv, for a
    training step and an evaluation pass of a run built with `model.channels_last`."""
    from helpers import lt_arrays

    from fasttrain.build import build_run
    from fasttrain.config import config_from_dict
    from fasttrain.evaluation import evaluate
    from fasttrain.methods import Progress
    from fasttrain.step import train_step

    ds = lt_arrays()
    cfg = config_from_dict({"device": "cpu", "method": {"name": method}, "model": {"arch": "resnet32",
                            "channels_last": channels_last}, "loader": {"backend": "tensor", "batch_size": 6,
                            "eval_batch_size": 64}, "train": {"amp": amp}}, "test")
    run = build_run(cfg, training=True, datasets=(ds, ds))
    conv = next(m for m in run.model.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    conv.register_forward_pre_hook(lambda m, inp: seen.append((
        inp[0].is_contiguous(), inp[0].is_contiguous(memory_format=torch.channels_last),
        m.weight.is_contiguous(memory_format=torch.channels_last))))
    run.train_loader.set_epoch(0)
    train_step(run.learner, next(iter(run.train_loader)), Progress(0, 1))
    evaluate(run)
    return seen


@pytest.mark.parametrize("method", ["ce", "glmc"])  # the views path and the mixing path
def test_channels_last_false_gives_nchw_inputs_and_weights_to_the_backbone(method):
    seen = _first_conv_formats(False, method)
    assert seen and all(nchw and not w_cl for nchw, _, w_cl in seen)


@pytest.mark.parametrize("method", ["ce", "glmc"])
def test_channels_last_true_gives_nhwc_inputs_and_weights(method):
    seen = _first_conv_formats(True, method, amp="bf16")
    assert seen and all(cl and w_cl and not nchw for nchw, cl, w_cl in seen)


def test_channels_last_auto_follows_the_per_device_table(monkeypatch):
    from fasttrain import environment as E

    monkeypatch.setitem(E.AUTO_CHANNELS_LAST, "cpu", False)
    assert all(nchw for nchw, _, _ in _first_conv_formats("auto", "ce"))
    monkeypatch.setitem(E.AUTO_CHANNELS_LAST, "cpu", True)
    assert all(cl for _, cl, _ in _first_conv_formats("auto", "ce"))


def test_channels_last_rejects_other_values():
    from fasttrain.config import config_from_dict
    from fasttrain.schema import ConfigError

    with pytest.raises(ConfigError, match="model.channels_last"):
        config_from_dict({"model": {"channels_last": "nhwc"}}, "test")


# --- the official FBL suite (whole epochs, child processes) -------------------------------------

FAKE_FBL_TRAIN = '''
import argparse
import torch

def train_one_epoch(args, train_loader, model, block, classifier, criterion, optimizer, epoch, log, tf_writer):
    lam = torch.cuda.FloatTensor([1.0, 2.0])  # the official loss builds its constant this way
    criterion.cuda()
    for x in train_loader:
        (x.cuda() * lam.sum()).sum()

def validate_one_epoch(args, val_loader, model, block, classifier, criterion, epoch, log=None, tf_writer=None):
    return sum(float(x.sum()) for x in val_loader)

def main(args):
    data = [torch.ones(2) for _ in range(3)]
    for epoch in range(args.epochs):
        train_one_epoch(args, data, None, None, None, torch.nn.Identity(), None, epoch, None, None)
        validate_one_epoch(args, data, None, None, None, None, epoch)
    print("ran all", args.epochs, "epochs")

if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--workers", type=int, default=0)
    args, _ = p.parse_known_args()
    main(args)
'''


def test_official_fbl_child_runs_a_cuda_only_train_py_on_the_cpu_and_stops_after_n_epochs(tmp_path):
    from fasttrain.bench.official_fbl import parse_official

    (tmp_path / "train.py").write_text(FAKE_FBL_TRAIN)
    proc = subprocess.run([sys.executable, "-m", "fasttrain.bench.official_fbl", "--child", str(tmp_path), "2",
                           "--workers", "2"], capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr
    epochs = parse_official(proc.stdout)
    assert [e["epoch"] for e in epochs] == [0, 1] and "ran all" not in proc.stdout  # stopped at the third
    assert all(e["total_s"] >= e["train_s"] + e["test_s"] - 1e-3 for e in epochs)


def test_official_fbl_suite_times_both_sides_and_estimates_the_full_run(tmp_path):
    from fasttrain.bench import main

    (tmp_path / "fbl" / "train.py").parent.mkdir()
    (tmp_path / "fbl" / "train.py").write_text(FAKE_FBL_TRAIN)
    rc = main(["official_fbl", "--device", "cpu", "--official-dir", str(tmp_path / "fbl"), "--configs",
               "official_w0,official_w2", "--epochs", "2", "--out-dir", str(tmp_path / "res")])
    assert rc == 0
    (path,) = (tmp_path / "res").glob("official_fbl_*.json")
    report = json.loads(path.read_text())
    assert H.validate_report(report) == []
    hours = {r["name"]: r for r in report["results"] if r["group"] == "200 epochs"}
    assert set(hours) == {"official_w0", "official_w2"} and all(r["n"] == 1 for r in hours.values())
    w0 = report["epochs"]["official_w0"]
    assert hours["official_w0"]["median"] == pytest.approx(sum(e["total_s"] for e in w0) / 2 * 200 / 3600)
    assert main(["official_fbl", "--device", "cpu", "--configs", "official_w0", "--out-dir", str(tmp_path)]) == 2


def test_official_fbl_fasttrain_epochs_split_train_and_the_rest():
    from fasttrain.bench.official_fbl import fasttrain_epochs

    rows = [{"epoch": 0, "wall_s": 30.0, "steps": 194, "img_per_s": 620.8}, {"epoch": 1, "wall_s": 55.0, "steps": 194,
                                                                             "img_per_s": 620.8}]
    epochs = fasttrain_epochs(rows, 64)
    assert [e["total_s"] for e in epochs] == [30.0, 25.0]
    assert epochs[1]["train_s"] == pytest.approx(20.0) and epochs[1]["test_s"] == pytest.approx(5.0)


def test_a_suite_stopped_midway_leaves_the_rows_it_measured(tmp_path, monkeypatch):
    """kernels writes its JSON after every group (marked partial), so a suite killed for time (the
    GPU one-shot's budget) keeps what it measured; the finished report is no longer partial."""
    from fasttrain.bench import kernels

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what the one-shot's SIGINT does in the middle of the loss groups

    monkeypatch.setattr(kernels, "loss_rows", interrupted)
    out = tmp_path / "res"
    with pytest.raises(KeyboardInterrupt):
        main_bench(["kernels", "--dry-run", "--device", "cpu", "--out-dir", str(out)])
    (path,) = out.glob("kernels_*.json")
    partial = json.loads(path.read_text())
    assert partial["partial"] is True and any(r["group"].startswith("mix") for r in partial["results"])
    monkeypatch.undo()
    main_bench(["kernels", "--dry-run", "--device", "cpu", "--out-dir", str(out)])
    assert "partial" not in json.loads(path.read_text())


def main_bench(argv):
    from fasttrain.bench import main

    return main(argv)


def test_an_overrunning_part_gets_sigint_first(tmp_path):
    """SIGINT before SIGTERM: pytest prints its summary, a suite's KeyboardInterrupt keeps its JSON."""
    marker = tmp_path / "interrupted"
    code = (f"import signal, sys, time\n"
            f"signal.signal(signal.SIGINT, lambda *a: (open({str(marker)!r}, 'w').close(), sys.exit(130)))\n"
            f"time.sleep(60)\n")
    res = G.run_part(G.Part("sigint", ["-c", code], 1.0), 1.0, tmp_path, tmp_path / "sigint.log")
    assert res["status"] == "timeout" and marker.exists() and res["elapsed_s"] < 10


def test_the_one_shot_runs_the_headline_parts_first():
    assert [p.name for p in G.parts(False)][:2] == ["step", "train"]
