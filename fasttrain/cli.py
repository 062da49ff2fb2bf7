"""Command line: `fasttrain train|eval|data|bench|info|...`."""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import textwrap
from pathlib import Path

from fasttrain import __version__
from fasttrain.checkpoint import CheckpointError, WriteError
from fasttrain.guard import TrainingError
from fasttrain.schema import ConfigError


def _cmd_train(args) -> int:
    from fasttrain.config import load_config
    from fasttrain.distributed import env_context
    from fasttrain.trainer import run_training

    cfg = load_config(args.config, args.overrides)
    summary = run_training(cfg, resume=args.resume, overwrite=args.overwrite)
    if env_context().rank != 0:  # under torchrun the job's result is printed once, by rank 0
        return 0
    if "final" not in summary:
        print(json.dumps({"run_dir": str(Path(cfg.out_dir) / cfg.name), "stopped_at_epoch": summary["stopped_at_epoch"],
                          "continue_with": f"fasttrain train {args.config} ... --resume"}, indent=1))
        return 0
    final = summary["final"]
    print(json.dumps({"run_dir": str(Path(cfg.out_dir) / cfg.name), "final": final, "best": summary["best"],
                      "img_per_s": round(summary["img_per_s"], 1), "wall_s": round(summary["wall_s"], 1),
                      "stages": summary["stage_results"]}, indent=1))
    return 0


def _cmd_eval(args) -> int:
    from fasttrain.evaluation import checkpoint_evaluation, per_class_rows

    checkpoint = Path(args.checkpoint)
    report, run = checkpoint_evaluation(checkpoint, args.overrides, tau=args.tau, tau_head=args.tau_head,
                                        confusion=Path(args.confusion) if args.confusion else None)
    human = sys.stderr if args.json else sys.stdout  # with --json the JSON is all of stdout, for programs
    print(_eval_headline(report, checkpoint, args.tau), file=human, flush=True)
    written = ([args.confusion] if args.confusion else []) + _write_eval_files(report, run, checkpoint, args)
    if written:
        print(f"wrote {', '.join(map(str, written))}", file=human)
    if args.json:
        print(json.dumps(report if args.per_class else {k: v for k, v in report.items() if k != "per_class"},
                         indent=1))
    elif args.per_class:
        _print_table(per_class_rows(report, run.train_set, run.cfg.data.few_shot_rule))
    return 0


def _eval_headline(report: dict, checkpoint: Path, tau: float | None) -> str:
    """`top-1 45.72 % (many … / medium … / few …), ECE …, head fc_cb (fc … / sum …) — CHECKPOINT`."""
    from fasttrain.textlog import report_headline

    tau_note = f", τ-normalised (τ = {tau:g})" if tau is not None else ""
    return f"{report_headline(report, report['head'])}{tau_note} — {checkpoint}"


def _write_eval_files(report: dict, run, checkpoint: Path, args) -> list[str]:
    """The per-class CSV and PNG (default beside the checkpoint, none with --no-files); their paths."""
    from fasttrain.evaluation import class_names, heads_per_class, plot_per_class, write_per_class_csv

    stem = checkpoint.with_name(checkpoint.stem)
    csv = args.csv or (None if args.no_files else f"{stem}_per_class.csv")
    plot = args.plot or (None if args.no_files else f"{stem}_per_class.png")
    if csv:
        _write_eval_file(csv, lambda path: write_per_class_csv(report, run.train_set, run.cfg.data.few_shot_rule, path))
    if plot:
        _write_eval_file(plot, lambda path: plot_per_class(
            report["per_class"], run.train_set.train_counts, path, title=f"{checkpoint.name}: top-1 {report['top1']:.2f}%",
            heads=heads_per_class(report), names=class_names(run.train_set)))
    return [path for path in (csv, plot) if path]


def _write_eval_file(path: str, write) -> None:
    """`write(path)`; a failed write (read-only run directory, full disk) is one line naming the file
    and the way around it, and leaves no temp file."""
    from fasttrain.checkpoint import temp_path

    try:
        write(Path(path))
    except OSError as exc:
        temp_path(path).unlink(missing_ok=True)
        raise WriteError(f"{path}: could not write ({exc.strerror or exc}); name another file with --csv / --plot, "
                         "or write none with --no-files") from None


def _print_table(rows: list[list]) -> None:
    """Rows as aligned columns (numbers right-aligned, two decimals)."""
    cells = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    numeric = [isinstance(v, (int, float)) for v in rows[1]] if len(rows) > 1 else [False] * len(widths)
    for row in cells:
        print("  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip())


def _cmd_configs(args) -> int:
    from fasttrain.shipped import list_configs

    rows = list_configs()
    width = max(len(r["name"]) for r in rows)
    # Descriptions are whole sentences, wrapped to the terminal under their own column.
    text_width = max(40, shutil.get_terminal_size((120, 24)).columns - width - 3)
    for r in rows:
        lines = textwrap.wrap(r["target"] or r["about"], text_width, break_on_hyphens=False) or [""]
        print(f"{r['name']:<{width}}  {lines[0]}")
        for line in lines[1:]:
            print(f"{'':<{width}}  {line}")
    return 0


def _cmd_config(args) -> int:
    import yaml

    from fasttrain.config import load_config, to_dict

    if args.action == "show":
        if not args.rest:
            raise ConfigError("config show: give a config file or a shipped config name")
        cfg = load_config(args.rest[0], args.rest[1:])
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    from fasttrain.keys import format_text, key_reference, method_markdown

    section = args.rest[0] if args.rest else None
    if args.markdown:  # the method-key table of the site's config-key page (python -m fasttrain.docgen generate)
        if section != "method":
            raise ConfigError("config keys --markdown: only for `config keys method` (the method-key table)")
        print(method_markdown())
        return 0
    print("\n".join(format_text(key_reference(section))))
    return 0


def _cmd_predict(args) -> int:
    from fasttrain.inference import predict

    rows = predict(args.checkpoint, args.targets, topk=args.topk, out=args.out, batch_size=args.batch_size,
                   device=args.device)
    if args.out is None:
        for r in rows:
            print(json.dumps(r))
    return 0


def _cmd_export(args) -> int:
    from fasttrain.inference import export

    out = args.out or str(Path(args.checkpoint).with_suffix({"safetensors": ".safetensors", "torchscript": ".ts",
                                                             "onnx": ".onnx"}[args.format]))
    print(json.dumps({"written": str(export(args.checkpoint, args.format, out)), "config": f"{out}.json"}))
    return 0


def _cmd_sweep(args) -> int:
    from fasttrain.sweep import run_sweep

    out = run_sweep(args.config, args.seeds, args.set, args.overrides)
    print((Path(out["dir"]) / "results.md").read_text(), end="")
    failed = [r["tag"] for r in out["runs"] if "error" in r]
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)} (re-run the same command to retry them)",
              file=sys.stderr)
        return 1
    return 0


def _cmd_info(args) -> int:
    from fasttrain.info import collect_info

    print(json.dumps(collect_info(), indent=1))
    return 0


def _worker_message(exc: Exception) -> str:
    """The message of `exc`; an error re-raised from a DataLoader worker carries the worker's
    traceback in its text: its last line is the message the user needs."""
    text = str(exc)
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fasttrain", description="High-throughput long-tailed recognition trainer")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    p.add_argument("--version", action="version", version=f"fasttrain {__version__}")
    t = sub.add_parser("train", help="train from a YAML config")
    t.add_argument("config", help="a YAML file or a shipped config name (see `fasttrain configs`), "
                                  "e.g. glmc/cifar10_lt_r100")
    t.add_argument("overrides", nargs="*", help="section.key=value overrides")
    t.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue from <out_dir>/<name>/last.pt, or from the given checkpoint")
    t.add_argument("--overwrite", action="store_true",
                   help="start again in a run directory that holds a run (deletes its files)")
    t.set_defaults(func=_cmd_train)
    e = sub.add_parser("eval", help="evaluate a checkpoint (top-1, many/medium/few, ECE, per-class PNG)")
    e.add_argument("checkpoint")
    e.add_argument("overrides", nargs="*", help="section.key=value overrides (e.g. data.root=...)")
    e.add_argument("--plot", help="where to write the per-class accuracy PNG; default <checkpoint>_per_class.png")
    e.add_argument("--per-class", action="store_true", help="print per-class accuracies too (a table; with --json "
                                                           "in the JSON)")
    e.add_argument("--json", action="store_true", help="print the whole report as JSON (the only output on stdout; "
                                                      "the headline goes to stderr)")
    e.add_argument("--no-files", action="store_true", help="write no per-class CSV / PNG (unless --csv / --plot "
                                                          "name them)")
    e.add_argument("--tau", type=float, default=None,
                   help="evaluate with a tau-normalised classifier w_c / ||w_c||^tau (decoupling's tau-norm)")
    e.add_argument("--tau-head", default="fc", help="the Linear head --tau normalises (GLMC: fc_cb)")
    e.add_argument("--csv", help="per-class CSV (class, name, train count, group, accuracy); "
                                 "default <checkpoint>_per_class.csv")
    e.add_argument("--confusion", help="also write the confusion-matrix PNG here")
    e.set_defaults(func=_cmd_eval)
    d = sub.add_parser("data", help="fetch, build or check datasets (see `fasttrain data --help`)",
                       add_help=False)
    d.add_argument("rest", nargs=argparse.REMAINDER)  # handled by fasttrain.data.cli.main
    b = sub.add_parser("bench", help="benchmark suites: loaders, kernels, step, train, official, gpu "
                                     "(see `fasttrain bench --help`)", add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)  # handled by fasttrain.bench.main
    rs = sub.add_parser("results", help="the results tables (README, the site's results page) and figures from the results record; "
                                        "`results record RUN_DIR` adds a finished run (see `fasttrain results --help`)",
                        add_help=False)
    rs.add_argument("rest", nargs=argparse.REMAINDER)  # handled by fasttrain.results.cli.main
    pr = sub.add_parser("predict", help="top-k classes of images with a checkpoint (the run's eval transform)")
    pr.add_argument("checkpoint")
    pr.add_argument("targets", nargs="+", metavar="IMAGE_OR_DIR_OR_LIST",
                    help="images, folders of images and/or list files of image paths (any number, in order)")
    pr.add_argument("--topk", type=int, default=5)
    pr.add_argument("--out", help="write a CSV (file, class1, name1, prob1, ...) instead of JSON lines")
    pr.add_argument("--batch-size", type=int, default=64)
    pr.add_argument("--device", default="auto")
    pr.set_defaults(func=_cmd_predict)
    ex = sub.add_parser("export", help="export a checkpoint's model (+ its resolved config beside it)")
    ex.add_argument("checkpoint")
    ex.add_argument("--format", choices=["safetensors", "torchscript", "onnx"], required=True)
    ex.add_argument("--out", help="output file (default: the checkpoint's name with the format's suffix)")
    ex.set_defaults(func=_cmd_export)
    sw = sub.add_parser("sweep", help="a grid of runs (seeds x settings), one process each; mean ± std table")
    sw.add_argument("config", help="a YAML file or a shipped config name (see `fasttrain configs`)")
    sw.add_argument("overrides", nargs="*", help="section.key=value overrides applied to every run")
    sw.add_argument("--seeds", type=int, nargs="+", default=[0])
    sw.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2",
                    help="a swept key and its values (repeatable; the grid is their product)")
    sw.set_defaults(func=_cmd_sweep)
    c = sub.add_parser("configs", help="list the shipped configs with the numbers they target")
    c.set_defaults(func=_cmd_configs)
    k = sub.add_parser("config", help="`config show CONFIG [overrides]`: the resolved config; "
                                      "`config keys [SECTION]`: every key with type, default, meaning, values")
    k.add_argument("action", choices=["show", "keys"])
    k.add_argument("rest", nargs="*", help="show: CONFIG [section.key=value ...]; keys: [SECTION], a section "
                                           "(run, data, ..., method) or one method's keys (method.glmc)")
    k.add_argument("--markdown", action="store_true", help="keys method: the method keys as a Markdown table")
    k.set_defaults(func=_cmd_config)
    i = sub.add_parser("info", help="versions, devices and usable optional backends/kernels")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["data"]:  # `fasttrain data ...` has its own parser (and its own --help)
        from fasttrain.data.cli import main as data_main

        return data_main(argv[1:])
    if argv[:1] == ["results"]:  # `results [DIR]` and `results record RUN_DIR` (fasttrain.results.cli)
        from fasttrain.results.cli import main as results_main

        return results_main(argv[1:])
    if argv[:1] == ["bench"]:  # each suite has its own parser (and its own --help)
        from fasttrain.bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose or args.command == "train" else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        return args.func(args)
    except (ConfigError, CheckpointError, WriteError, FileNotFoundError) as exc:  # the message says what to do
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `fasttrain config keys | head`: the reader has gone, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141
    except KeyboardInterrupt:  # Ctrl-C (`train` handles it itself: it saves last.pt and exits 143)
        print(f"error: fasttrain {args.command}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except TrainingError as exc:  # training could not go on (NaN/inf loss, out of memory): why, and what to do
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except Exception as exc:  # user-facing errors from data checks carry file/line context
        from fasttrain.data.index import DatasetError

        if isinstance(exc, DatasetError):
            print(f"error: {_worker_message(exc)}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
