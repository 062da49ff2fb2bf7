"""`fasttrain sweep CONFIG --seeds 0 1 2 [--set key=v1,v2 ...]`: a grid of runs and its table.

Runs go one after the other, each in its own process (a crash costs that run only), each in its own
run directory `<out_dir>/<name>_sweep/<tag>`. Re-running the same command resumes: finished runs
(their final summary.json exists) are skipped, an interrupted one continues from its last.pt. The
table — mean ± std over seeds of top-1 / many / medium / few per setting, as LT papers report
CIFAR-LT numbers — is written as Markdown and JSON beside the runs.
"""
from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
from pathlib import Path

from fasttrain.config import load_config, parse_override
from fasttrain.schema import ConfigError

METRICS = ("top1", "many", "medium", "few")


def parse_sets(sets: list[str]) -> list[tuple[str, list[str]]]:
    """`key=v1,v2` -> (key, [v1, v2]); values stay text, parsed as overrides by each run."""
    out = []
    for text in sets:
        if "=" not in text:
            raise ConfigError(f"--set {text!r}: expected section.key=value1,value2")
        key, values = text.split("=", 1)
        out.append((key, values.split(",")))
    return out


def grid(seeds: list[int], sets: list[tuple[str, list[str]]]) -> list[dict]:
    """Every combination: {'tag', 'setting', 'overrides'} (the seed last, so settings group)."""
    keys = [k for k, _ in sets]
    runs = []
    for values in itertools.product(*[v for _, v in sets]):
        setting = dict(zip(keys, values))
        for seed in seeds:
            parts = [f"{k.rsplit('.', 1)[-1]}{v}" for k, v in setting.items()] + [f"seed{seed}"]
            runs.append({"tag": "_".join(parts).replace("/", "-"), "setting": setting, "seed": seed,
                         "overrides": [f"{k}={v}" for k, v in setting.items()] + [f"seed={seed}"]})
    return runs


def _final_summary(run_dir: Path, stages: list[str]) -> Path:
    return run_dir.joinpath(*stages[-1:]) / "summary.json" if stages else run_dir / "summary.json"


def run_sweep(config: str, seeds: list[int], sets: list[str], overrides: list[str] | None = None) -> dict:
    overrides = list(overrides or [])
    for text in overrides:
        parse_override(text)  # bad syntax fails before anything runs
    base = load_config(config, overrides)
    root = Path(base.out_dir) / f"{base.name}_sweep"
    stages = [s.name for s in base.stages]
    runs = grid(seeds, parse_sets(sets))
    for cfg_check in runs:  # every combination must resolve before the first run starts
        load_config(config, overrides + cfg_check["overrides"])
    results = []
    for r in runs:
        run_dir = root / r["tag"]
        summary = _final_summary(run_dir, stages)
        if not summary.is_file():
            resume = ["--resume"] if (run_dir / "last.pt").is_file() else ["--overwrite"]  # continue, or redo
            cmd = [sys.executable, "-m", "fasttrain.cli", "train", str(config), *overrides, *r["overrides"],
                   f"name={base.name}_sweep/{r['tag']}", *resume]
            print(f"[sweep] {r['tag']}: {' '.join(cmd[3:])}", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd)
            if proc.returncode != 0 or not summary.is_file():
                results.append({**r, "error": f"exit code {proc.returncode}; see {run_dir / 'train.log'}"})
                continue
        final = json.loads(summary.read_text())["final"]
        results.append({**r, **{m: final.get(m) for m in METRICS}})
    table = summarise(results)
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.json").write_text(json.dumps({"config": str(config), "overrides": overrides, "runs": results,
                                                   "table": table}, indent=1))
    (root / "results.md").write_text(markdown(table))
    return {"dir": str(root), "runs": results, "table": table}


def summarise(results: list[dict]) -> list[dict]:
    """Per setting: n, and mean / std (sample std over seeds; 0 for one seed) of each metric."""
    rows = []
    for key, group in itertools.groupby(results, key=lambda r: json.dumps(r["setting"], sort_keys=True)):
        done = [r for r in group if "error" not in r]
        row = {"setting": json.loads(key), "n": len(done)}
        for m in METRICS:
            vals = [r[m] for r in done if r.get(m) is not None]
            row[m] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0} if vals else None
        rows.append(row)
    return rows


def markdown(table: list[dict]) -> str:
    lines = ["| setting | n | top-1 | many | medium | few |", "|---|---|---|---|---|---|"]
    for row in table:
        setting = ", ".join(f"{k}={v}" for k, v in row["setting"].items()) or "(config)"
        cells = ["–" if row[m] is None else f"{row[m]['mean']:.2f} ± {row[m]['std']:.2f}" for m in METRICS]
        lines.append(f"| {setting} | {row['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
