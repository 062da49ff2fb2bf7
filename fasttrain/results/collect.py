"""Read a results directory: its records (one per finished run and seed) and `table.yaml`, the
rows and columns of the comparison table with the published number each row is compared with."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fasttrain.results.record import RECORD_JSON, ResultsError, read_json, read_metrics, read_yaml

TABLE_SPEC = "table.yaml"


@dataclass
class Record:
    """One finished run of one seed, as the tables and the figure read it."""
    dataset: str
    name: str
    seed: int
    top1: float  # the last epoch's evaluation: the primary number
    many: float | None
    medium: float | None
    few: float | None
    best_top1: float  # the best evaluated epoch, chosen on `best_on` (the papers' reading when `test`)
    best_epoch: int | None  # None: a post-hoc run (nothing trained; its one evaluation is both readings)
    best_on: str
    curve: list[tuple[int, float]]  # (epoch, top-1) of every evaluated epoch
    epochs: int
    wall_s: float
    cpu_model: str | None
    gpu: str | None
    threads: int | None
    git_commit: str | None
    note: str
    path: Path
    threads_per_start: tuple = ()  # the threads of every start (first, then each --resume)
    epoch_offset: int = 0  # a stage's record: the epochs its run trained before it (the figure's x offset)


@dataclass
class Published:
    top1: float
    source: str


@dataclass
class Row:
    """A method of the comparison table: its config family, and per column (dataset tag) the run
    name whose records fill the cell, a note for an unmeasured cell, and the published number."""
    method: str
    family: str
    runs: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    published: dict[str, Published] = field(default_factory=dict)


@dataclass
class TableSpec:
    columns: dict[str, str]  # dataset tag -> header
    rows: list[Row]


def _need(data: dict, key: str, where: Path):
    node = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ResultsError(f"{where}: missing key '{key}'")
        node = node[part]
    return node


def load_record(folder: Path) -> Record:
    """The record in `folder` (record.json, summary.json, metrics.jsonl); a missing file or key is an
    error naming it."""
    folder = Path(folder)
    meta = read_json(folder / RECORD_JSON)
    summary = read_json(folder / "summary.json")
    where = folder / "summary.json"
    final, best = _need(summary, "final", where), _need(summary, "best", where)
    metrics = read_metrics(folder / "metrics.jsonl") if (folder / "metrics.jsonl").is_file() else []
    post_hoc = int(best.get("epoch", -1)) < 0 and not metrics
    curve = [(int(r["epoch"]), float(r["top1"])) for r in metrics if r.get("top1") is not None]
    return Record(
        dataset=_need(meta, "dataset", folder / RECORD_JSON), name=_need(meta, "name", folder / RECORD_JSON),
        seed=_need(meta, "seed", folder / RECORD_JSON), top1=float(_need(final, "top1", where)),
        many=final.get("many"), medium=final.get("medium"), few=final.get("few"),
        best_top1=float(final["top1"] if post_hoc else _need(best, "top1", where)),
        best_epoch=None if post_hoc else int(_need(best, "epoch", where)),
        best_on=best.get("on", "test"), curve=curve, epochs=int(_need(meta, "epochs", folder / RECORD_JSON)),
        wall_s=float(_need(meta, "wall_s", folder / RECORD_JSON)), cpu_model=meta.get("cpu_model"),
        gpu=meta.get("gpu"), threads=meta.get("threads"), git_commit=meta.get("git_commit"),
        note=meta.get("note", ""), path=folder, threads_per_start=tuple(meta.get("threads_per_start") or ()),
        epoch_offset=int(meta.get("epoch_offset", 0)))


def load_records(root: Path) -> list[Record]:
    """Every record under `root` (`<dataset>/<name>/seed<k>/record.json`), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise ResultsError(f"{root}: no such results directory")
    return [load_record(p.parent) for p in sorted(root.glob(f"*/*/seed*/{RECORD_JSON}"))]


def load_spec(root: Path) -> TableSpec:
    """`root`/table.yaml: `columns` (dataset tag: header) and `rows` (method, family, runs, notes,
    published {tag: {top1, source}})."""
    path = Path(root) / TABLE_SPEC
    data = read_yaml(path)
    columns = _need(data, "columns", path)
    rows = []
    for i, raw in enumerate(_need(data, "rows", path)):
        where = f"rows[{i}]"
        if not isinstance(raw, dict) or "method" not in raw:
            raise ResultsError(f"{path}: {where} needs a 'method'")
        unknown = set(raw) - {"method", "family", "runs", "notes", "published"}
        if unknown:
            raise ResultsError(f"{path}: {where} ({raw['method']}): unknown key(s) {', '.join(sorted(unknown))}")
        published = {}
        for tag, pub in (raw.get("published") or {}).items():
            if not isinstance(pub, dict) or "top1" not in pub or "source" not in pub:
                raise ResultsError(f"{path}: {where} ({raw['method']}): published.{tag} needs top1 and source")
            published[tag] = Published(float(pub["top1"]), str(pub["source"]))
        for key in ("runs", "notes", "published"):
            bad = set(raw.get(key) or {}) - set(columns)
            if bad:
                raise ResultsError(f"{path}: {where} ({raw['method']}): {key} names unknown column(s) "
                                   f"{', '.join(sorted(bad))}; columns are {', '.join(columns)}")
        rows.append(Row(raw["method"], raw.get("family", ""), dict(raw.get("runs") or {}),
                        dict(raw.get("notes") or {}), published))
    return TableSpec(dict(columns), rows)
