"""What a person reads (fasttrain.textlog): train.log's header, progress, epoch and final lines, the
eval headline; plain text, never a Python repr."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from fasttrain.config import load_config
from fasttrain.textlog import duration, etas, report_headline
from fasttrain.trainer import run_training

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "ce" / "cifar10_lt_r100.yaml"
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO "  # what the log formatter puts before each line


def test_a_two_step_run_logs_a_header_progress_lines_and_a_final_line(tmp_path):
    """train.log of a 2-step run: the header (command, run and directory, device with threads, amp,
    data sizes, steps per epoch) before the first step, a progress line per `log_every` step with
    loss, img/s and both ETAs, the epoch line, and the final line with the headline and wall time."""
    cfg = load_config(CONFIG, [
        "data.dataset=synthetic", "data.num_classes=3", "data.synthetic_size=[32,32]", "data.synthetic_max_per_class=8",
        f"data.root={tmp_path / 'syn'}", f"out_dir={tmp_path / 'runs'}", "device=cpu", "train.epochs=1",
        "train.max_steps_per_epoch=2", "loader.num_workers=0", "loader.batch_size=4", "train.log_every=1"])
    run_training(cfg)
    run = tmp_path / "runs" / "ce_cifar10_lt_r100"
    lines = [re.sub("^" + STAMP, "", line) for line in (run / "train.log").read_text().splitlines()]
    header = lines[:5]
    assert header[0].startswith("command  ")
    assert header[1] == f"run      ce_cifar10_lt_r100 (method ce) in {run}"
    assert re.fullmatch(r"device   cpu \(.+, \d+ threads?, load [\d.]+\); amp (bf16 autocast|fp32 \(no autocast\)); "
                        r"loader torch", header[2]), header[2]
    assert re.fullmatch(r"data     synthetic: \d+ train images, \d+ test images, 3 classes", header[3]), header[3]
    assert header[4] == "schedule 1 epoch of 2 steps (4 rows x 1 stream per step); a progress line every 1 step"
    progress = r"epoch 0, step {}/2: loss [\d.]+, lr [\d.e-]+, \d+ img/s \(data wait \d+ %\); ETA epoch \w+, all 1 epoch \w+"
    assert re.fullmatch(progress.format(1) + r" \+ evaluation", lines[5]), lines[5]
    assert re.fullmatch(progress.format(2) + r" \+ evaluation", lines[6]), lines[6]
    assert re.match(r"epoch 0: loss [\d.]+, lr [\d.e-]+, \d+ img/s \(data wait \d+ %\), 2 steps; top-1 [\d.]+ % "
                    r"\(many .+ / medium .+ / few .+\), ECE [\d.]+ %; wall \w+", lines[7]), lines[7]
    assert re.fullmatch(r"finished ce_cifar10_lt_r100: top-1 [\d.]+ % \(many .+ / medium .+ / few .+\), ECE [\d.]+ %; "
                        r"best\.pt: epoch 0 \(test top-1 [\d.]+ %\); wall \w+, \d+ img/s", lines[-1]), lines[-1]
    assert not any("{'" in line or "None" in line for line in lines)  # no dict reprs


def test_headline_names_the_prediction_head_and_the_other_heads():
    report = {"top1": 45.724, "many": 60.1, "medium": 40.2, "few": None, "ece": 12.345,
              "heads": {"fc": {"top1": 31.1}, "fc_cb": {"top1": 45.724}, "sum": {"top1": 36.8}}}
    assert report_headline(report, "fc_cb") == ("top-1 45.72 % (many 60.10 / medium 40.20 / few –), ECE 12.35 %, "
                                                "head fc_cb (fc 31.10 / sum 36.80)")
    assert report_headline({"top1": 50.0, "many": 1.0, "medium": 2.0, "few": 3.0, "ece": 4.0}) == \
        "top-1 50.00 % (many 1.00 / medium 2.00 / few 3.00), ECE 4.00 %"


def test_etas_count_the_remaining_steps_and_evaluations():
    # 2 s per step, 10 steps per epoch, after step 4 of epoch 1 of 3, 2 evaluations due (epochs 1, 2) at 5 s
    assert etas(1, 3, 4, 10, 2.0, 2, 5.0) == pytest.approx((12.0, 12.0 + 20.0 + 10.0))
    assert [duration(s) for s in (0.4, 42, 417, 3725)] == ["0s", "42s", "6m57s", "1h02m"]


def test_a_run_with_stages_ends_with_every_stage_top1_in_the_log_and_the_result(tmp_path, caplog):
    """CE → LWS on synthetic data: `stage_results` lists both stages (name, method, directory, top-1
    last and best) as their summaries say, and one log line gives every stage's top-1."""
    lws = load_config(ROOT / "configs" / "decoupling" / "lws_cifar10_lt_r100.yaml").stages[0]
    lws.overrides["train"] = {"epochs": 1, "max_steps_per_epoch": 2}
    lws.overrides.setdefault("loader", {})["batch_size"] = 4
    cfg = load_config(CONFIG, [
        "data.dataset=synthetic", "data.num_classes=3", "data.synthetic_size=[32,32]", "data.synthetic_max_per_class=8",
        f"data.root={tmp_path / 'syn'}", f"out_dir={tmp_path / 'runs'}", "device=cpu", "train.epochs=1",
        "train.max_steps_per_epoch=2", "loader.num_workers=0", "loader.batch_size=4"])
    cfg.stages.append(lws)
    with caplog.at_level("INFO", logger="fasttrain"):
        out = run_training(cfg)
    run = tmp_path / "runs" / "ce_cifar10_lt_r100"
    rows = out["stage_results"]
    assert [(r["name"], r["method"], r["dir"]) for r in rows] == [
        ("ce_cifar10_lt_r100", "ce", str(run)), (f"ce_cifar10_lt_r100/{lws.name}", "lws", str(run / lws.name))]
    for row, summary in zip(rows, out["stages"]):
        assert row["top1"] == summary["final"]["top1"] and row["best_top1"] == summary["best"]["top1"]
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("stages: "))
    assert line == ("stages: " + " · ".join(f"{r['name']} ({r['method']}) {r['top1']:.2f} %" for r in rows))


def test_the_stage_line_warns_when_an_earlier_stage_beat_the_final_model(caplog):
    from fasttrain.trainer import _log_stage_results

    rows = [{"name": "ssd", "method": "ssd_stage1", "dir": "runs/ssd", "top1": 69.57, "best_top1": 71.65},
            {"name": "ssd/stage3", "method": "ssd_distill", "dir": "runs/ssd/stage3", "top1": 79.61, "best_top1": 79.93},
            {"name": "ssd/stage4", "method": "lws", "dir": "runs/ssd/stage4", "top1": 67.27, "best_top1": 70.28}]
    with caplog.at_level("INFO", logger="fasttrain"):
        _log_stage_results(rows)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["the last stage (ssd/stage4, 67.27 %) is the run's final model, but stage ssd/stage3 scored "
                        "higher (79.61 %): its model is runs/ssd/stage3/last.pt"]
    caplog.clear()
    with caplog.at_level("INFO", logger="fasttrain"):
        _log_stage_results(rows[:2])  # the last stage is the best: no warning
    assert [r.levelname for r in caplog.records] == ["INFO"]
