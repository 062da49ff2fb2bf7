"""`fasttrain results [DIR]`: the results tables and figures from the record in DIR (default
`benchmarks/accuracy`); `fasttrain results record RUN_DIR`: add a finished run to it.

The README and the documentation site's results page hold each generated table between
`<!-- results:NAME -->` and `<!-- /results:NAME -->` (NAME: `measured`, the short table of every
recorded run; `comparison`; or a dataset tag such as `cifar10_lt_r100`). Each file gets the blocks
whose markers it holds, and every generated block must have a place in one of them. `--write`
replaces the blocks, `--check` fails when they differ from what the record gives (the test suite
runs it). The README's `measured` table links each record; the site's names its folder.
"""
from __future__ import annotations

import argparse
import os
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


def build(root: Path, link_base: str | None = None) -> dict[str, str]:
    """The generated blocks of the record in `root` (record links relative to `link_base`, see
    `tables.measured_table`)."""
    return blocks(load_spec(root), load_records(root), link_base)


def targets(root: Path, readme: Path | None = None, docs: Path | None = None) -> list[tuple[Path, str | None]]:
    """The files to fill and the link base of each: the README links the record folders (relative to
    its own directory), a documentation page names them."""
    out = []
    if readme is not None:
        out.append((Path(readme), os.path.relpath(Path(root).resolve(), Path(readme).resolve().parent)))
    if docs is not None:
        out.append((Path(docs), None))
    return out


def check_files(root: Path, readme: Path | None = None, docs: Path | None = None) -> list[str]:
    """`FILE: NAME` for every block of the files that differs from the record's tables, and `NAME`
    for a generated block that has a place in none of them (empty: in step)."""
    stale, placed = [], set()
    for path, link_base in targets(root, readme, docs):
        have, want = readme_blocks(path.read_text()), build(root, link_base)
        placed |= set(have)
        stale += [f"{path}: {name}" for name in sorted(have) if have[name] != want.get(name)]
    return stale + sorted(set(build(root)) - placed)


def check_readme(root: Path, readme: Path) -> list[str]:
    """`check_files` of the README alone (every generated block must be in it)."""
    return check_files(root, readme=readme)


def write_files(root: Path, readme: Path | None = None, docs: Path | None = None) -> list[str]:
    """Replace the blocks of the files with the record's tables; a generated block with no place in
    any of them is an error naming the markers to add (no file is written then)."""
    files = targets(root, readme, docs)
    texts = {path: path.read_text() for path, _ in files}
    placed = set().union(*(readme_blocks(text) for text in texts.values()))
    homeless = sorted(set(build(root)) - placed)
    if homeless:
        names = ", ".join(str(path) for path, _ in files)
        raise ResultsError(f"{names}: no place for the generated block(s) {', '.join(homeless)}; add "
                           + " and ".join(f"'<!-- results:{n} -->' + '<!-- /results:{n} -->'" for n in homeless))
    done = []
    for path, link_base in files:
        want = build(root, link_base)
        mine = {name: want[name] for name in readme_blocks(texts[path]) if name in want}
        path.write_text(replace_blocks(texts[path], mine, path))
        done.append(f"{path}: {', '.join(mine) or 'no blocks'}")
    return done


def record_parser() -> argparse.ArgumentParser:
    """`fasttrain results record`'s arguments (also read by the CLI reference page)."""
    p = argparse.ArgumentParser(prog="fasttrain results record",
                                description="copy a finished run's small files into the results record")
    p.add_argument("run_dir", help="a finished run (or stage) directory: config.yaml, summary.json, ... ")
    p.add_argument("--into", type=Path, default=DEFAULT_DIR, help=f"the results directory (default {DEFAULT_DIR})")
    p.add_argument("--note", default="", help="what differs from the shipped config, e.g. the loader backend")
    p.add_argument("--overwrite", action="store_true", help="replace an existing record of this run and seed")
    p.add_argument("--name", help="the record's run name (default: the config's name); needed for a stage "
                                  "directory (e.g. --name crt_cifar10_lt_r100 for <run>/crt) and for the root of "
                                  "a run with stages, which holds its first stage only")
    return p


def _record(argv: list[str]) -> int:
    args = record_parser().parse_args(argv)
    print(record_run(Path(args.run_dir), args.into, note=args.note, overwrite=args.overwrite, name=args.name))
    return 0


def tables_parser() -> argparse.ArgumentParser:
    """`fasttrain results`'s arguments (also read by the CLI reference page)."""
    p = argparse.ArgumentParser(prog="fasttrain results", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", nargs="?", type=Path, default=DEFAULT_DIR, help=f"results directory (default {DEFAULT_DIR})")
    p.add_argument("--readme", type=Path, help="the README whose generated blocks to --write or --check "
                                               "(its `measured` table links the records)")
    p.add_argument("--docs", type=Path, help="a documentation page whose generated blocks to --write or --check "
                                             "(fasttrain/docs/results.md)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="replace the files' blocks with the record's tables")
    mode.add_argument("--check", action="store_true", help="exit 1 when the files' blocks differ (no figure written)")
    return p


def _tables(argv: list[str]) -> int:
    p = tables_parser()
    args = p.parse_args(argv)
    if (args.write or args.check) and args.readme is None and args.docs is None:
        p.error("--write and --check need --readme and/or --docs")
    files = " ".join(f"--{k} {v}" for k, v in (("readme", args.readme), ("docs", args.docs)) if v is not None)
    if args.check:
        stale = check_files(args.dir, args.readme, args.docs)
        if stale:
            print(f"block(s) {'; '.join(stale)} differ from the record in {args.dir} (or have no place); "
                  f"run `fasttrain results {args.dir} {files} --write`", file=sys.stderr)
            return 1
        print(f"{files}: in step with {args.dir}")
        return 0
    records = load_records(args.dir)
    generated = blocks(load_spec(args.dir), records)
    for tag in sorted({r.dataset for r in records}):
        print(f"wrote {plot_dataset(records, tag, args.dir / f'{tag}.png')}", file=sys.stderr)
    if args.write:
        for line in write_files(args.dir, args.readme, args.docs):
            print(f"updated {line}", file=sys.stderr)
    for name, table in generated.items():
        print(f"<!-- results:{name} -->\n{table}\n<!-- /results:{name} -->\n")
    return 0


def main(argv: list[str]) -> int:
    try:
        return _record(argv[1:]) if argv[:1] == ["record"] else _tables(argv)
    except (ResultsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
