"""One finished run -> one folder of the results record (`fasttrain results record RUN_DIR`).

A record is `<root>/<dataset tag>/<run name>/seed<k>/`: the small files the run wrote (resolved
config, summary, per-epoch metrics, per-class CSV, log, provenance) plus `record.json`, what makes
the number reproducible (command, commit, machine, threads, versions, wall time). Never a
checkpoint: a record is text a reviewer can read in the repository.
"""
from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import yaml

from fasttrain import provenance
from fasttrain.schema import ConfigError

# What every record holds, copied from the run directory as written by the run.
RUN_FILES = ("config.yaml", "summary.json", "metrics.jsonl", "per_class.csv", "train.log")
RECORD_JSON = "record.json"


class ResultsError(ConfigError):
    """A record or a results directory that cannot be read or written (printed as one line)."""


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise ResultsError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a mapping at the top level")
    return data


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl, one dict per line (a resumed run holds each epoch once)."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ResultsError(f"{path}, line {n}: not valid JSON ({exc.msg})") from None
    return rows


def dataset_tag(config: dict) -> str:
    """The record's dataset folder: `cifar10_lt_r100` for CIFAR-LT (the ratio is part of the
    dataset), the dataset name elsewhere (`imagenet_lt`, `inat2018`)."""
    data = config.get("data") or {}
    name = data.get("dataset")
    if not name:
        raise ResultsError("config.yaml: no data.dataset")
    ratio = data.get("imbalance_ratio")
    return f"{name}_r{float(ratio):g}" if name.startswith("cifar") and ratio else str(name)


def wall_seconds(metrics: list[dict]) -> float:
    """Training wall time over every invocation: each row's `wall_s` counts from the start of the
    process that wrote it, so a drop marks a resume and the previous segment's last value is added."""
    total, last = 0.0, 0.0
    for row in metrics:
        wall = float(row.get("wall_s", 0.0))
        if wall < last:
            total += last
        last = wall
    return total + last


def _stage_names(config: dict) -> list[str]:
    """The names of a run config's later stages (its `stages` list; the root holds the first stage)."""
    return [str(s.get("name")) for s in (config.get("stages") or []) if isinstance(s, dict)]


def epoch_offset(run_dir: Path, config_name: str) -> int:
    """The epochs trained before this stage of its run (the root's and every earlier stage's), so the
    figure draws a stage's curve after them; 0 for a run that is not a stage."""
    if "/" not in config_name:
        return 0
    root, stage = run_dir.parent, config_name.split("/", 1)[1]
    names = _stage_names(read_yaml(root / "config.yaml")) if (root / "config.yaml").is_file() else []
    earlier = [root] + [root / n for n in names[:names.index(stage)]] if stage in names else [root]
    return sum(len(read_metrics(d / "metrics.jsonl")) for d in earlier if (d / "metrics.jsonl").is_file())


def _trained_nothing(run_dir: Path) -> bool:
    """A finished post-hoc run: its summary lists no trained epoch."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return False
    summary = read_json(path)
    return summary.get("epochs") == [] and "final" in summary


def record_run(run_dir: Path, root: Path, note: str = "", overwrite: bool = False, name: str | None = None) -> Path:
    """Copy the finished run `run_dir` into the record under `root`; returns the record folder.

    The record is named after the run's config `name`, or `name`: a stage directory (config name
    `<run>/<stage>`, e.g. cRT after CE) needs one, as does the root of a run with stages: it holds the
    first stage only (GLMC inside a GLMC + MaxNorm run, SSD's stage I), and the config's name belongs
    to the run's result, its last stage."""
    run_dir, root = Path(run_dir), Path(root)
    # A post-hoc stage (tau-norm: train.epochs 0) evaluates once and writes no metrics.jsonl.
    optional = {"metrics.jsonl"} if _trained_nothing(run_dir) else set()
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file() and name not in optional]
    if missing:
        raise ResultsError(f"{run_dir}: not a finished run directory (missing {', '.join(missing)}); "
                           "a run writes summary.json and per_class.csv when its last epoch is done")
    config = read_yaml(run_dir / "config.yaml")
    summary = read_json(run_dir / "summary.json")
    if "final" not in summary:
        raise ResultsError(f"{run_dir / 'summary.json'}: no 'final' report (the run did not finish)")
    starts = provenance.read(run_dir)
    if not starts:
        raise ResultsError(f"{run_dir}: no provenance.json (command, commit and machine unknown); runs started "
                           "by this version of fasttrain write it")
    seed = config.get("seed")
    config_name = str(config.get("name") or run_dir.name)
    later = _stage_names(config)
    if later and name is None:
        # The root of a staged run holds its first stage only: under the config's name it would stand in
        # the results table for the whole run (SSD's stage I as the SSD row).
        raise ResultsError(f"{run_dir}: the first stage of run {config_name}, whose later stages are "
                           f"{', '.join(later)}; the run's result is {run_dir / later[-1]} (record it with "
                           f"--name {config_name}); record this stage under a name of its own with --name")
    name = name or config_name
    if "/" in name:
        raise ResultsError(f"{run_dir}: a stage of run {config_name.split('/')[0]} (config name {config_name}); "
                           "give its record a name with --name, e.g. the run's name as the results table lists it")
    dest = root / dataset_tag(config) / name / f"seed{seed}"
    if dest.exists():
        if not overwrite:
            raise ResultsError(f"{dest} already holds a record; pass --overwrite to replace it")
        shutil.rmtree(dest)
    metrics = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    first = starts[0]
    record = {
        "name": name, "config_name": config_name, "dataset": dataset_tag(config), "seed": seed, "method": summary.get("method"),
        "command": first.get("command"), "resumes": [s.get("command") for s in starts[1:]],
        "git_commit": first.get("git_commit"), "git_dirty": first.get("git_dirty"),
        "commits": sorted({s.get("git_commit") for s in starts if s.get("git_commit")}),
        "cpu_model": first.get("cpu_model"), "threads": first.get("threads"), "machine": first.get("machine"),
        "threads_per_start": [s.get("threads") for s in starts],  # a resume may have run with other threads
        "gpu": first.get("gpu"), "env": first.get("env", {}), "versions": first.get("versions") or summary.get("versions"),
        "device": summary.get("device"), "amp": summary.get("amp"), "processes": summary.get("processes", 1),
        "epochs": len(metrics), "epoch_offset": epoch_offset(run_dir, config_name),
        "wall_s": round(wall_seconds(metrics) if metrics else float(summary.get("wall_s", 0.0)), 1),
        "started": first.get("started"), "note": note,
        "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    dest.mkdir(parents=True)
    for name in (*RUN_FILES, provenance.FILE):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dest / name)
    (dest / RECORD_JSON).write_text(json.dumps(record, indent=1) + "\n")
    return dest
