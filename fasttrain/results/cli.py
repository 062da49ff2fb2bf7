"""`fasttrain results [DIR]`: the README's results tables and figures from the record in DIR
(default `benchmarks/accuracy`); `fasttrain results record RUN_DIR`: add a finished run to it.

The README holds each generated table between `<!-- results:NAME -->` and `<!-- /results:NAME -->`
(NAME: `comparison`, or a dataset tag such as `cifar10_lt_r100`); `--write` replaces those blocks,
`--check` fails when they differ from what the record gives (the test suite runs it).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from fasttrain.results.collect import load_records, load_spec
from fasttrain.results.figure import plot_dataset
from fasttrain.results.record import ResultsError, record_run
from fasttrain.results.tables import blocks

DEFAULT_DIR = Path("benchmarks/accuracy")
_BLOCK = re.compile(r"<!-- results:(?P<name>[\w.-]+) -->\n(?P<body>.*?)\n?<!-- /results:(?P=name) -->", re.S)


def readme_blocks(text: str) -> dict[str, str]:
    """The generated blocks a README holds, by name."""
    return {m["name"]: m["body"].strip("\n") for m in _BLOCK.finditer(text)}


def replace_blocks(text: str, new: dict[str, str], readme: Path) -> str:
    missing = sorted(set(new) - set(readme_blocks(text)))
    if missing:
        raise ResultsError(f"{readme}: no place for the generated block(s) {', '.join(missing)}; add "
                           + " and ".join(f"'<!-- results:{n} -->' + '<!-- /results:{n} -->'" for n in missing))
    return _BLOCK.sub(lambda m: f"<!-- results:{m['name']} -->\n{new.get(m['name'], m['body'].strip())}\n"
                                f"<!-- /results:{m['name']} -->", text)


def build(root: Path) -> dict[str, str]:
    """The generated blocks of the record in `root`."""
    return blocks(load_spec(root), load_records(root))


def check_readme(root: Path, readme: Path) -> list[str]:
    """The names of the README blocks that differ from the record's tables (empty: in step)."""
    have, want = readme_blocks(Path(readme).read_text()), build(root)
    return sorted(name for name in set(have) | set(want) if have.get(name) != want.get(name))


def _record(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fasttrain results record",
                                description="copy a finished run's small files into the results record")
    p.add_argument("run_dir", help="a finished run (or stage) directory: config.yaml, summary.json, ... ")
    p.add_argument("--into", type=Path, default=DEFAULT_DIR, help=f"the results directory (default {DEFAULT_DIR})")
    p.add_argument("--note", default="", help="what differs from the shipped config, e.g. the loader backend")
    p.add_argument("--overwrite", action="store_true", help="replace an existing record of this run and seed")
    args = p.parse_args(argv)
    print(record_run(Path(args.run_dir), args.into, note=args.note, overwrite=args.overwrite))
    return 0


def _tables(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fasttrain results", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", nargs="?", type=Path, default=DEFAULT_DIR, help=f"results directory (default {DEFAULT_DIR})")
    p.add_argument("--readme", type=Path, help="the README whose generated blocks to --write or --check")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="replace the README's blocks with the record's tables")
    mode.add_argument("--check", action="store_true", help="exit 1 when the README's blocks differ (no figure written)")
    args = p.parse_args(argv)
    if (args.write or args.check) and args.readme is None:
        p.error("--write and --check need --readme")
    if args.check:
        stale = check_readme(args.dir, args.readme)
        if stale:
            print(f"{args.readme}: block(s) {', '.join(stale)} differ from the record in {args.dir}; "
                  f"run `fasttrain results {args.dir} --readme {args.readme} --write`", file=sys.stderr)
            return 1
        print(f"{args.readme}: in step with {args.dir}")
        return 0
    records = load_records(args.dir)
    generated = blocks(load_spec(args.dir), records)
    for tag in sorted({r.dataset for r in records}):
        print(f"wrote {plot_dataset(records, tag, args.dir / f'{tag}.png')}", file=sys.stderr)
    if args.write:
        args.readme.write_text(replace_blocks(args.readme.read_text(), generated, args.readme))
        print(f"updated {args.readme}: {', '.join(generated)}", file=sys.stderr)
    for name, table in generated.items():
        print(f"<!-- results:{name} -->\n{table}\n<!-- /results:{name} -->\n")
    return 0


def main(argv: list[str]) -> int:
    try:
        return _record(argv[1:]) if argv[:1] == ["record"] else _tables(argv)
    except (ResultsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
