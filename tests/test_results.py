"""The results record: provenance written by every run, `fasttrain results record` (never a
checkpoint, never a silent overwrite), the tables and figure built from records, clear errors on
broken records, and the README's tables equal to the command's output."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fasttrain.config import load_config
from fasttrain.results.cli import check_files, readme_blocks, replace_blocks
from fasttrain.results.collect import load_record, load_records, load_spec
from fasttrain.results.record import ResultsError, record_run, wall_seconds
from fasttrain.results.tables import blocks
from fasttrain.trainer import run_training

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "ce" / "cifar10_lt_r100.yaml"

SPEC = """\
columns:
  synthetic: Synthetic
  cifar10_lt_r100: CIFAR-10-LT ρ100
rows:
  - method: CE
    family: configs/ce/
    runs: {synthetic: tiny_ce, cifar10_lt_r100: ce_cifar10_lt_r100}
    published:
      synthetic: {top1: 50.0, source: "a paper, Table 1"}
  - method: Balanced Softmax
    runs: {synthetic: tiny_bs}
    notes: {cifar10_lt_r100: later}
"""


def tiny_run(tmp_path: Path, name: str, *extra: str) -> Path:
    cfg = load_config(CONFIG, [
        "data.dataset=synthetic", "data.num_classes=3", "data.synthetic_size=[32,32]", "data.synthetic_max_per_class=8",
        f"data.root={tmp_path / 'syn'}", f"out_dir={tmp_path / 'runs'}", "device=cpu", "train.epochs=2",
        "train.max_steps_per_epoch=2", "loader.num_workers=0", "loader.batch_size=4", f"name={name}", *extra])
    run_training(cfg)
    return tmp_path / "runs" / name


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("results")
    return (tiny_run(tmp, "tiny_ce"), tiny_run(tmp, "tiny_bs", "method.name=balanced_softmax", "seed=3"))


def test_every_run_writes_its_provenance(two_runs):
    starts = json.loads((two_runs[0] / "provenance.json").read_text())["starts"]
    assert len(starts) == 1
    start = starts[0]
    assert start["git_commit"] is None or len(start["git_commit"]) == 40
    assert start["threads"] >= 1 and start["cpu_model"] and start["versions"]["torch"]
    assert start["command"] and start["started"].startswith("20")


def test_a_record_holds_the_run_files_and_never_a_checkpoint(two_runs, tmp_path):
    dest = record_run(two_runs[0], tmp_path / "acc", note="tensor backend")
    assert dest == tmp_path / "acc" / "synthetic" / "tiny_ce" / "seed0"
    names = {p.name for p in dest.iterdir()}
    assert names == {"config.yaml", "summary.json", "metrics.jsonl", "per_class.csv", "train.log", "provenance.json",
                     "record.json"}
    assert (two_runs[0] / "last.pt").is_file()  # the run has checkpoints; the record does not
    meta = json.loads((dest / "record.json").read_text())
    assert meta["note"] == "tensor backend" and meta["epochs"] == 2 and meta["wall_s"] > 0
    assert meta["threads"] >= 1 and meta["command"] and "torch" in meta["versions"]
    with pytest.raises(ResultsError, match="already holds a record.*--overwrite"):
        record_run(two_runs[0], tmp_path / "acc")
    record_run(two_runs[0], tmp_path / "acc", overwrite=True)


def test_an_unfinished_run_is_refused_naming_what_is_missing(two_runs, tmp_path):
    run = tmp_path / "half"
    shutil.copytree(two_runs[0], run)
    (run / "summary.json").unlink()
    with pytest.raises(ResultsError, match="missing summary.json"):
        record_run(run, tmp_path / "acc")
    proc = subprocess.run([sys.executable, "-m", "fasttrain.cli", "results", "record", str(run), "--into",
                           str(tmp_path / "acc")], capture_output=True, text=True)
    assert proc.returncode == 2 and "missing summary.json" in proc.stderr and "Traceback" not in proc.stderr


def _record_dir(two_runs, tmp_path) -> Path:
    acc = tmp_path / "acc"
    acc.mkdir()
    (acc / "table.yaml").write_text(SPEC)
    for run in two_runs:
        record_run(run, acc)
    return acc


def test_the_tables_read_the_last_epoch_the_best_epoch_and_the_published_number(two_runs, tmp_path):
    acc = _record_dir(two_runs, tmp_path)
    records = load_records(acc)
    assert [(r.name, r.seed) for r in records] == [("tiny_bs", 3), ("tiny_ce", 0)]
    summary = json.loads((two_runs[0] / "summary.json").read_text())
    out = blocks(load_spec(acc), records)
    assert set(out) == {"measured", "comparison", "synthetic"}
    ce_row = next(line for line in out["synthetic"].splitlines() if line.startswith("| CE "))
    cells = [c.strip() for c in ce_row.split("|")[1:-1]]
    assert cells[2] == f"**{summary['final']['top1']:.2f}**"
    assert cells[3] == f"{summary['best']['top1']:.2f} ({summary['best']['epoch']})"
    assert cells[5] == "50.00 (a paper, Table 1)"
    assert cells[6] == f"{summary['best']['top1'] - 50.0:+.2f}"
    assert "| Balanced Softmax | `tiny_bs` |" in out["synthetic"]
    comparison = out["comparison"].splitlines()
    assert comparison[2] == f"| CE | `configs/ce/` | {summary['final']['top1']:.2f} | not yet measured |"
    assert comparison[3].endswith("| not yet measured (later) |")
    measured = out["measured"].splitlines()  # the short table: one row per recorded run, its record named
    assert measured[2] == (f"| CE | Synthetic | **{summary['final']['top1']:.2f}** | {summary['best']['top1']:.2f} "
                           "| 50.00 | `synthetic/tiny_ce/` |")
    assert measured[3].startswith("| Balanced Softmax | Synthetic |") and measured[3].endswith("| – | `synthetic/tiny_bs/` |")


def test_seeds_are_averaged_with_their_spread(two_runs, tmp_path):
    acc = _record_dir(two_runs, tmp_path)
    second = acc / "synthetic" / "tiny_ce" / "seed1"
    shutil.copytree(acc / "synthetic" / "tiny_ce" / "seed0", second)
    meta = json.loads((second / "record.json").read_text())
    (second / "record.json").write_text(json.dumps({**meta, "seed": 1}))
    summary = json.loads((second / "summary.json").read_text())
    summary["final"]["top1"] += 2.0
    (second / "summary.json").write_text(json.dumps(summary))
    row = next(line for line in blocks(load_spec(acc), load_records(acc))["synthetic"].splitlines()
               if line.startswith("| CE "))
    a = summary["final"]["top1"] - 2.0
    assert f"**{a + 1:.2f} ± 1.41 ({a:.2f}, {a + 2:.2f})**" in row and "| 0, 1 |" in row


def test_the_command_writes_the_figure_and_rewrites_and_checks_readme_blocks(two_runs, tmp_path):
    acc = _record_dir(two_runs, tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:comparison -->\nold\n<!-- /results:comparison -->\ntext\n"
                      "<!-- results:synthetic -->\n<!-- /results:synthetic -->\n"
                      "<!-- results:measured -->\n<!-- /results:measured -->\n")
    cli = [sys.executable, "-m", "fasttrain.cli", "results", str(acc), "--readme", str(readme)]
    assert subprocess.run([*cli, "--check"], capture_output=True).returncode == 1
    proc = subprocess.run([*cli, "--write"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    png = acc / "synthetic.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = readme.read_text()
    assert text.startswith("# x\n") and "\ntext\n" in text and "old" not in text
    assert readme_blocks(text) == blocks(load_spec(acc), load_records(acc), os.path.relpath(acc, tmp_path))
    assert subprocess.run([*cli, "--check"], capture_output=True).returncode == 0


def test_the_readme_and_the_docs_page_share_the_blocks_and_only_the_readme_links_records(two_runs, tmp_path):
    """`--readme` and `--docs`: each file gets the blocks it has markers for; every generated block
    needs a place in one of them; the README's `measured` table links each record folder, the site's
    page names it (a site page cannot link outside the site)."""
    acc = _record_dir(two_runs, tmp_path)
    readme, page = tmp_path / "README.md", tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    readme.write_text("# x\n<!-- results:measured -->\n<!-- /results:measured -->\n")
    page.write_text("# r\n<!-- results:measured -->\n<!-- /results:measured -->\n")
    cli = [sys.executable, "-m", "fasttrain.cli", "results", str(acc), "--readme", str(readme), "--docs", str(page)]
    proc = subprocess.run([*cli, "--write"], capture_output=True, text=True)
    assert proc.returncode == 2 and "no place for the generated block(s) comparison, synthetic" in proc.stderr
    assert "old" not in readme.read_text() and readme.read_text().count("|") == 0  # nothing written
    page.write_text(page.read_text() + "<!-- results:comparison -->\nold\n<!-- /results:comparison -->\n"
                    "<!-- results:synthetic -->\n<!-- /results:synthetic -->\n")
    assert check_files(acc, readme, page) != []
    proc = subprocess.run([*cli, "--write"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert check_files(acc, readme, page) == []
    mine = readme_blocks(readme.read_text())
    assert set(mine) == {"measured"} and f"[synthetic/tiny_ce/]({os.path.relpath(acc, tmp_path)}/synthetic/tiny_ce/)" in mine["measured"]
    theirs = readme_blocks(page.read_text())
    assert set(theirs) == {"measured", "comparison", "synthetic"} and "| `synthetic/tiny_ce/` |" in theirs["measured"]
    assert subprocess.run([*cli, "--check"], capture_output=True).returncode == 0


def test_broken_records_and_specs_are_named(two_runs, tmp_path):
    acc = _record_dir(two_runs, tmp_path)
    summary_path = acc / "synthetic" / "tiny_ce" / "seed0" / "summary.json"
    summary = json.loads(summary_path.read_text())
    del summary["best"]
    summary_path.write_text(json.dumps(summary))
    with pytest.raises(ResultsError, match=r"tiny_ce/seed0/summary.json: missing key 'best'"):
        load_records(acc)
    (acc / "table.yaml").write_text(SPEC.replace("notes: {cifar10_lt_r100: later}", "notes: {imagenet: later}"))
    with pytest.raises(ResultsError, match=r"table.yaml: rows\[1\] \(Balanced Softmax\): notes names unknown column"):
        load_spec(acc)
    with pytest.raises(ResultsError, match="no place for the generated block"):
        replace_blocks("no markers\n", {"comparison": "x"}, Path("README.md"))


def test_wall_time_adds_the_segments_of_a_resumed_run():
    rows = [{"wall_s": 10}, {"wall_s": 20}, {"wall_s": 5}, {"wall_s": 12}]  # resumed after the second epoch
    assert wall_seconds(rows) == 32


def test_readme_and_docs_tables_equal_the_results_command_output():
    """README's short table and the site's results page are what `fasttrain results benchmarks/accuracy
    --readme README.md --docs fasttrain/docs/results.md --write` writes."""
    assert check_files(ROOT / "benchmarks" / "accuracy", ROOT / "README.md", ROOT / "fasttrain" / "docs" / "results.md") == []


def test_a_run_resumed_with_other_threads_says_so(two_runs, tmp_path):
    """The machine column names every thread count a run's starts used, in order."""
    from fasttrain.results.tables import _machine

    run = tmp_path / "resumed"
    shutil.copytree(two_runs[0], run)
    starts = json.loads((run / "provenance.json").read_text())["starts"]
    (run / "provenance.json").write_text(json.dumps({"starts": [{**starts[0], "threads": 2},
                                                                {**starts[0], "threads": 1}, {**starts[0], "threads": 1}]}))
    dest = record_run(run, tmp_path / "acc")
    assert json.loads((dest / "record.json").read_text())["threads_per_start"] == [2, 1, 1]
    assert _machine([load_record(dest)]).endswith(", 2 then 1 threads")
    n = starts[0]["threads"]
    assert _machine([load_record(record_run(two_runs[0], tmp_path / "acc2"))]).endswith(f", {n} thread{'s' if n > 1 else ''}")


def test_a_stage_directory_is_recorded_under_the_name_given(two_runs, tmp_path):
    """A stage's config name is `<run>/<stage>`: its record needs --name (the results table's run name)."""
    shutil.copytree(two_runs[0], tmp_path / "run")  # the run's first stage (2 epochs), its stage inside
    stage = tmp_path / "run" / "crt"
    shutil.copytree(two_runs[0], stage)
    config = (stage / "config.yaml").read_text()
    (stage / "config.yaml").write_text(config.replace("name: tiny_ce", "name: tiny_ce/crt", 1))
    with pytest.raises(ResultsError, match="a stage of run tiny_ce.*--name"):
        record_run(stage, tmp_path / "acc")
    dest = record_run(stage, tmp_path / "acc", name="tiny_crt")
    assert dest == tmp_path / "acc" / "synthetic" / "tiny_crt" / "seed0"
    meta = json.loads((dest / "record.json").read_text())
    assert (meta["name"], meta["config_name"]) == ("tiny_crt", "tiny_ce/crt")
    assert meta["epoch_offset"] == 2  # the figure draws the stage after its run's 2 epochs
    assert load_record(dest).name == "tiny_crt"


def test_the_root_of_a_staged_run_needs_a_name_of_its_own(two_runs, tmp_path):
    """The root holds the first stage only: under the config's name it would stand for the whole run."""
    run = tmp_path / "staged"
    shutil.copytree(two_runs[0], run)
    config = (run / "config.yaml").read_text()
    assert "\nstages: []" in config
    (run / "config.yaml").write_text(config.replace("\nstages: []", "\nstages:\n- name: crt\n  overrides: {}\n- name: last\n  overrides: {}", 1))
    with pytest.raises(ResultsError, match=r"first stage of run tiny_ce, whose later stages are crt, last; "
                                           r"the run's result is .*staged/last .*--name tiny_ce\)"):
        record_run(run, tmp_path / "acc")
    assert not (tmp_path / "acc").exists()
    dest = record_run(run, tmp_path / "acc", name="tiny_ce_stage1")
    assert json.loads((dest / "record.json").read_text())["name"] == "tiny_ce_stage1"


def test_a_post_hoc_stage_is_recorded_without_epochs_and_labelled(two_runs, tmp_path):
    """τ-norm trains nothing: no metrics.jsonl, no best epoch; its one evaluation is both readings."""
    from fasttrain.results.tables import dataset_table

    run = tmp_path / "posthoc"
    shutil.copytree(two_runs[0], run)
    (run / "metrics.jsonl").unlink()
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "epochs": [], "best": {"top1": -1.0, "epoch": -1},
                                                  "wall_s": 12.5}))
    dest = record_run(run, tmp_path / "own")
    meta = json.loads((dest / "record.json").read_text())
    assert (meta["epochs"], meta["wall_s"]) == (0, 12.5) and not (dest / "metrics.jsonl").exists()
    record = load_record(dest)
    assert (record.best_top1, record.best_epoch, record.curve) == (summary["final"]["top1"], None, [])
    (run / "summary.json").write_text(json.dumps(summary))  # a trained run without metrics is still refused
    with pytest.raises(ResultsError, match="missing metrics.jsonl"):
        record_run(run, tmp_path / "own2")
    spec = load_spec(_record_dir(two_runs, tmp_path))
    table = dataset_table(spec, [record], "synthetic")
    assert f"| {summary['final']['top1']:.2f} (post-hoc) |" in table
