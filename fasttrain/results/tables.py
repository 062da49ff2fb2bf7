"""The README's results tables, built from the record (markdown text, deterministic: the README
test compares it byte for byte)."""
from __future__ import annotations

import statistics

from fasttrain.results.collect import Record, Row, TableSpec

UNMEASURED = "not yet measured"


def _fmt(values: list[float | None]) -> str:
    """One number, or the mean ± sample std over seeds with each seed's value."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({', '.join(f'{v:.2f}' for v in values)})"


def _mean(values: list[float]) -> float:
    return statistics.mean(values)


def _groups(r: list[Record]) -> str:
    def one(attr: str) -> str:
        vals = [getattr(x, attr) for x in r if getattr(x, attr) is not None]
        return f"{_mean(vals):.1f}" if vals else "–"
    return " / ".join(one(a) for a in ("many", "medium", "few"))


def _note(row: Row | None, dataset: str) -> str:
    """ " (note)" of a table row's cell, e.g. " (τ on test)"; "" without one."""
    note = row.notes.get(dataset) if row else None
    return f" ({note})" if note else ""


def _threads(r: Record) -> str:
    """The run's thread count, or each count in the order the run's starts used them ("2 then 1")."""
    counts = [t for t in r.threads_per_start if t is not None]
    distinct = [t for i, t in enumerate(counts) if i == 0 or t != counts[i - 1]]
    text = " then ".join(map(str, distinct)) if len(distinct) > 1 else str(r.threads)
    return f"{text} thread" + ("" if text == "1" else "s")


def _machine(r: list[Record]) -> str:
    first = r[0]
    where = first.gpu or f"{first.cpu_model or 'CPU'}, {_threads(first)}"
    return f"{_mean([x.wall_s for x in r]) / 3600:.2f} h, {where}"


def runs_of(records: list[Record], dataset: str, name: str) -> list[Record]:
    return sorted((r for r in records if r.dataset == dataset and r.name == name), key=lambda r: r.seed)


def _ordered_names(spec: TableSpec, records: list[Record], dataset: str) -> list[tuple[Row | None, str]]:
    """The run names recorded for `dataset`: table rows first (in their order), then any other."""
    named = [(row, row.runs[dataset]) for row in spec.rows if dataset in row.runs]
    known = {name for _, name in named}
    extra = sorted({r.name for r in records if r.dataset == dataset} - known)
    return [(row, name) for row, name in named if runs_of(records, dataset, name)] + [(None, n) for n in extra]


def dataset_table(spec: TableSpec, records: list[Record], dataset: str) -> str:
    """Every recorded run of `dataset`: last-epoch top-1 (primary), best on test with its epoch,
    many / medium / few of the last epoch, the published number with its source, wall time and machine."""
    lines = ["| method | run | top-1, last epoch | best on test (epoch) | many / medium / few | published "
             "| best − published | seeds | epochs | wall, machine |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row, name in _ordered_names(spec, records, dataset):
        runs = runs_of(records, dataset, name)
        best = _fmt([r.best_top1 for r in runs])
        on = {r.best_on for r in runs}
        label = "" if on == {"test"} else f" on {'/'.join(sorted(on))}"
        epochs_best = ", ".join("post-hoc" if r.best_epoch is None else str(r.best_epoch) for r in runs)
        pub = row.published.get(dataset) if row else None
        gap = f"{_mean([r.best_top1 for r in runs]) - pub.top1:+.2f}" if pub else "–"
        lines.append(
            f"| {row.method if row else name} | `{name}` | **{_fmt([r.top1 for r in runs])}**{_note(row, dataset)} | {best}{label} "
            f"({epochs_best}) | {_groups(runs)} | {f'{pub.top1:.2f} ({pub.source})' if pub else '–'} | {gap} "
            f"| {', '.join(str(r.seed) for r in runs)} | {max(r.epochs for r in runs)} | {_machine(runs)} |")
    return "\n".join(lines)


def comparison_table(spec: TableSpec, records: list[Record]) -> str:
    """One row per method, one column per dataset: the last-epoch top-1 (mean over seeds) where a
    record exists, else "not yet measured" with the row's note for that column."""
    lines = ["| method | config family | " + " | ".join(spec.columns.values()) + " |",
             "|---|---|" + "---|" * len(spec.columns)]
    for row in spec.rows:
        cells = []
        for tag in spec.columns:
            runs = runs_of(records, tag, row.runs[tag]) if tag in row.runs else []
            if runs:  # a measured cell keeps its note (e.g. "τ on test": the choice saw the test set)
                cells.append(f"{_mean([r.top1 for r in runs]):.2f}" + _note(row, tag))
            elif tag in row.runs or tag in row.notes:
                note = row.notes.get(tag)
                cells.append(f"{UNMEASURED} ({note})" if note else UNMEASURED)
            else:
                cells.append("–")
        family = f"`{row.family}`" if row.family else ""
        lines.append(f"| {row.method} | {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measured_table(spec: TableSpec, records: list[Record], link_base: str | None = None) -> str:
    """The short table: one row per recorded run (method, dataset, last-epoch and best-on-test top-1,
    the published number) and where its record is. `link_base`: the record folders as links relative
    to this directory prefix (the README's, e.g. `benchmarks/accuracy`); None: as code paths (a page
    of the documentation site, which cannot link outside the site)."""
    lines = ["| method | dataset | top-1, last epoch | best on test | published | record |",
             "|---|---|---|---|---|---|"]
    for tag in list(spec.columns) + sorted({r.dataset for r in records} - set(spec.columns)):
        for row, name in _ordered_names(spec, records, tag):
            runs = runs_of(records, tag, name)
            pub = row.published.get(tag) if row else None
            where = f"{tag}/{name}/"
            record = f"[{where}]({link_base.rstrip('/')}/{where})" if link_base is not None else f"`{where}`"
            lines.append(f"| {row.method if row else name} | {spec.columns.get(tag, tag)} "
                         f"| **{_fmt([r.top1 for r in runs])}**{_note(row, tag)} | {_fmt([r.best_top1 for r in runs])} "
                         f"| {f'{pub.top1:.2f}' if pub else '–'} | {record} |")
    return "\n".join(lines)


def blocks(spec: TableSpec, records: list[Record], link_base: str | None = None) -> dict[str, str]:
    """The generated blocks by name: `measured` (the short table; record links relative to `link_base`),
    `comparison`, and one per dataset column with records."""
    out = {"measured": measured_table(spec, records, link_base), "comparison": comparison_table(spec, records)}
    for tag in spec.columns:
        if any(r.dataset == tag for r in records):
            out[tag] = dataset_table(spec, records, tag)
    for tag in sorted({r.dataset for r in records} - set(spec.columns)):
        out[tag] = dataset_table(spec, records, tag)
    return out
