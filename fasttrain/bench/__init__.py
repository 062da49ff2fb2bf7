"""`fasttrain bench SUITE [options]`: every speed claim of the project as one command.

`SUITES` is the one list of suite names (the CLI's choices come from it). Each suite is a module
of this package with `DESCRIPTION`, `add_arguments(parser)` and `run(args, argv) -> report`; the
shared harness (timing, statistics, JSON + PNG report) is `fasttrain.bench.harness`. Suites are
imported only when asked for, so `fasttrain --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# suite name -> module
SUITES: dict[str, str] = {
    "loaders": "fasttrain.bench.loaders",
    "kernels": "fasttrain.bench.kernels",
    "step": "fasttrain.bench.step",
    "train": "fasttrain.bench.train",
    "official": "fasttrain.bench.official",
    "official_fbl": "fasttrain.bench.official_fbl",
    "gpu": "fasttrain.bench.gpu",
}


def suite_module(name: str):
    if name not in SUITES:
        raise SystemExit(f"fasttrain bench: unknown suite {name!r}; choose from {', '.join(SUITES)}")
    return importlib.import_module(SUITES[name])


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: fasttrain bench SUITE [options]   (fasttrain bench SUITE --help for a suite's options)\n")
        for name in SUITES:
            print(f"  {name:<9} {suite_module(name).DESCRIPTION}")
        return 0
    name, rest = argv[0], argv[1:]
    module = suite_module(name)
    parser = argparse.ArgumentParser(prog=f"fasttrain bench {name}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    from fasttrain.schema import ConfigError

    try:
        report = module.run(args, rest)
    except (ConfigError, FileNotFoundError) as exc:  # the message says what to do
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return int(report.get("exit_code", 0)) if isinstance(report, dict) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
