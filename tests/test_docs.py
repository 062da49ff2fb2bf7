"""The README and the documentation site (fasttrain/docs/, fasttrain/mkdocs.yml): the generated pages
equal what `python -m fasttrain.docgen generate` writes, every command of a fenced `bash` block parses with the
installed CLI (other programs against an explicit allow-list of forms), every page of the nav has
real content, nothing cites a file the repository lacks, and the site builds with `--strict`
(skipped, with the reason, where the `docs` extra is not installed)."""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fasttrain.docgen import DOCS_DIR, PAGES, docs_parser, stale_pages

ROOT = Path(__file__).resolve().parent.parent
MKDOCS_YML = ROOT / "fasttrain" / "mkdocs.yml"
SOURCES = [ROOT / "README.md", *sorted(DOCS_DIR.rglob("*.md"))]
# The method notes the project was written from: not part of the repository, so nothing may cite them
# (built from two parts so that this file does not name them itself).
NOTES = "METHODS" + ".md"
# Where the repository's own text lives, outside the documentation pages (checked on their own).
CITING = ["README.md", "configs", "fasttrain", "kernels", "loaders", "tests", "benchmarks"]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- generated pages ---------------------------------------------------------------------------------


def test_generated_pages_are_what_the_generator_writes():
    """config keys, shipped configs and the command line are generated from the code; a stale page
    (a key, a config header or an argument changed since) fails here."""
    assert stale_pages() == [], "stale generated page(s): run `python -m fasttrain.docgen generate`"


def test_generated_pages_do_not_depend_on_the_machine(monkeypatch):
    """CI's machine has another core count and terminal: the pages must come out the same (a default
    taken from `os.cpu_count()` is written as "the CPU count")."""
    from unittest import mock

    monkeypatch.setenv("COLUMNS", "40")
    with mock.patch("os.cpu_count", return_value=64):
        assert stale_pages() == []


def test_docs_check_command_reports_stale_pages(tmp_path):
    """`python -m fasttrain.docgen check` exits 1 naming a stale page, 0 once `generate` wrote it."""
    from fasttrain.docgen import main

    assert main(["check", "--docs-dir", str(tmp_path)]) == 1
    assert main(["generate", "--docs-dir", str(tmp_path)]) == 0
    assert main(["check", "--docs-dir", str(tmp_path)]) == 0
    assert sorted(_rel_to(p, tmp_path) for p in tmp_path.rglob("*.md")) == sorted(PAGES)


def _rel_to(path: Path, base: Path) -> str:
    return str(path.relative_to(base))


def _table_keys(text: str) -> set[str]:
    """The keys in the first column of the page's tables (`| \\`data.root\\` | ...`)."""
    return {m.group(1) for m in re.finditer(r"^\| `([\w./-]+)` \|", text, re.M)}


def test_every_config_key_is_on_the_reference_page_and_every_listed_key_exists():
    from fasttrain.keys import key_reference

    page = (DOCS_DIR / "reference" / "config-keys.md").read_text()
    generated = {row["key"] for row in key_reference()}
    listed = _table_keys(page)
    assert sorted(generated - listed) == [], "keys missing from the config-key page"
    assert sorted(listed - generated) == [], "the config-key page lists keys that do not exist"


def test_every_shipped_config_is_on_the_configs_page():
    from fasttrain.shipped import list_configs

    listed = _table_keys((DOCS_DIR / "reference" / "configs.md").read_text())
    assert {row["name"] for row in list_configs()} == listed


# --- pages: real content, no missing files ------------------------------------------------------------


def _nav_pages(nav) -> list[str]:
    out = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        out += _nav_pages(value) if isinstance(value, list) else [value]
    return out


def test_every_nav_page_exists_has_content_and_every_page_is_in_the_nav():
    config = yaml.safe_load(MKDOCS_YML.read_text())
    pages = _nav_pages(config["nav"])
    assert len(pages) == len(set(pages))
    on_disk = sorted(str(p.relative_to(DOCS_DIR)) for p in DOCS_DIR.rglob("*.md"))
    assert sorted(pages) == on_disk, "a page is missing from the nav, or the nav names a missing page"
    for page in pages:
        text = (DOCS_DIR / page).read_text()
        words = len(re.sub(r"```.*?```", "", text, flags=re.S).split())
        assert words >= 150 or "::: " in text, f"{page}: {words} words: a stub"
        assert not re.search(r"\b(TODO|TBD|FIXME)\b", text), f"{page}: unfinished"


def test_the_site_is_not_committed_and_not_installed():
    """The built site goes to build/site/ (git-ignored scratch), never into the tree's sources, and
    setup.py installs no Markdown."""
    config = yaml.safe_load(MKDOCS_YML.read_text())
    site = (MKDOCS_YML.parent / config["site_dir"]).resolve()
    assert site.is_relative_to(ROOT / "build")
    ignored = subprocess.run(["git", "check-ignore", "-q", str(site / "index.html")], cwd=ROOT)
    assert ignored.returncode in (0, 128), "build/site/ must be git-ignored"  # 128: not a git checkout
    assert ".md" not in re.search(r"package_data=\{.*?\}", (ROOT / "setup.py").read_text(), re.S).group(0)


def test_nothing_cites_a_file_the_repository_lacks():
    """The method specification the project was written from is not in the repository: no page
    points at it. Local links of the README resolve."""
    for path in SOURCES:
        assert NOTES not in path.read_text(), f"{_rel(path)} cites {NOTES}, which users do not have"
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), f"README links {target}, which does not exist"


def _tracked_text_files(paths: list[str]) -> list[Path]:
    """The tracked files under `paths` (git ls-files; every file there outside a git checkout), minus
    fasttrain/docs/ and binary files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--", *paths], cwd=ROOT, capture_output=True)
    if listed.returncode == 0:
        files = [ROOT / name for name in listed.stdout.decode().split("\0") if name]
    else:  # not a git checkout (an unpacked sdist): every file
        files = [p for top in paths for p in ([ROOT / top] if (ROOT / top).is_file() else (ROOT / top).rglob("*"))
                 if p.is_file() and "__pycache__" not in p.parts]
    out = []
    for path in files:
        if path.is_relative_to(DOCS_DIR) or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" not in data[:8192]:  # gzipped lists, images: binary
            out.append(path)
    return out


def test_no_tracked_file_cites_the_method_notes():
    """Config headers, docstrings, comments, tests, benchmarks and the README cite the papers, the
    official repositories or the documentation pages, never the method notes the project was written
    from: users do not have them."""
    files = _tracked_text_files(CITING)
    assert any(p.suffix == ".yaml" for p in files) and any(p.suffix == ".py" for p in files)
    hits = [f"{_rel(path)}:{n}: {line.strip()}" for path in files
            for n, line in enumerate(path.read_bytes().decode("utf-8", "replace").splitlines(), 1) if NOTES in line]
    assert hits == [], f"{len(hits)} line(s) cite {NOTES}, which users do not have:\n" + "\n".join(hits[:20])


def test_readme_is_short_and_keeps_the_two_commands_as_ci_runs_them():
    text = (ROOT / "README.md").read_text()
    assert 150 <= len(text.splitlines()) <= 250
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest -q tests" in text and ".venv/bin/python -m pytest -q tests" in ci
    assert "fasttrain data cifar10 --root data" in ci and "fasttrain data cifar10 --root data" in text
    extras = re.search(r"pip install -q -e '\.\[([\w,-]+)\]'", ci).group(1).split(",")
    for extra in extras:  # the README says what each extra CI installs needs
        assert f"| `{extra}` |" in text, f"README does not explain the {extra} extra CI installs"
    assert "mkdocs build --strict -q -f fasttrain/mkdocs.yml" in ci


def test_license_and_citation():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License") and "fasttrain authors" in (ROOT / "LICENSE").read_text()
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["title"] and cff["authors"] and cff["message"]
    titles = " ".join(ref["title"] for ref in cff["references"])
    for method in ("Mixture Consistency", "Self Supervision to Distillation", "Feature-Balanced Loss"):
        assert method in titles


# --- every command in a fenced bash block parses ------------------------------------------------------


def bash_commands(path: Path) -> list[tuple[int, str]]:
    """(line, logical command line) of every fenced ```bash block: `\\`-continued lines joined, comment
    lines dropped."""
    out = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            j = i + 1
            pending, start = "", None
            while lines[j].strip() != "```":
                line = lines[j]
                if start is None:
                    start = j + 1
                if line.rstrip().endswith("\\"):
                    pending += line.rstrip()[:-1]
                else:
                    full = (pending + line).strip()
                    if full and not full.startswith("#"):
                        out.append((start, full))
                    pending, start = "", None
                j += 1
            i = j
        i += 1
    return out


def _split(line: str) -> list[list[str]]:
    """Simple commands of a line: split on &&, ||, ;, | ; redirections and their targets dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current, skip = [], [], False
    for token in lexer:
        if skip:
            skip = False
            continue
        if token in ("&&", "||", ";", "|", "&"):
            commands.append(current)
            current = []
        elif token in (">", ">>", "<", "2>"):
            skip = True
        else:
            current.append(token)
    return [c for c in commands + [current] if c]


def _extras() -> set[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            return {k.value for k in node.value.keys}
    raise AssertionError("setup.py has no extras_require")


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | None:
    """parse_args, with argparse's exit turned into an AssertionError carrying its message (None for a
    --help / --version exit)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code:
            raise AssertionError(err.getvalue().strip().splitlines()[-1]) from None
        return None


def _check_config(config: str, overrides: list[str]) -> None:
    """A config given as `configs/...` or a shipped name loads with its overrides (a wrong key or value
    is an error); a path into a run directory (written by an earlier command) is not checked."""
    from fasttrain.config import load_config

    if config.startswith(("runs/", "/")) or config.endswith("config.yaml"):
        return
    load_config(str(ROOT / config) if config.startswith("configs/") else config, overrides)


def check_fasttrain(argv: list[str]) -> None:
    """`fasttrain ARGV` parses with the parser that command uses; train / sweep / config show also
    load their config with its overrides."""
    from fasttrain.bench import SUITES, suite_module
    from fasttrain.cli import build_parser
    from fasttrain.data.cli import _parser as data_parser
    from fasttrain.results.cli import record_parser, tables_parser

    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "data":
        _parse(data_parser(), rest)
    elif command == "results":
        _parse(record_parser(), rest[1:]) if rest[:1] == ["record"] else _parse(tables_parser(), rest)
    elif command == "bench":
        assert rest and rest[0] in SUITES, f"unknown bench suite {rest[:1]}"
        parser = argparse.ArgumentParser(prog=f"fasttrain bench {rest[0]}")
        suite_module(rest[0]).add_arguments(parser)
        _parse(parser, rest[1:])
    else:
        args = _parse(build_parser(), argv)
        if args is None:
            return
        if args.command in ("train", "sweep"):
            _check_config(args.config, list(args.overrides))
            for item in getattr(args, "set", []):
                key, values = item.split("=", 1)
                _check_config(args.config, [*args.overrides, f"{key}={values.split(',')[0]}"])
        if args.command == "config" and args.action == "show":
            _check_config(args.rest[0], args.rest[1:])


def _program(token: str) -> str:
    return token.rsplit("/", 1)[-1]


def check_command(argv: list[str]) -> str:
    """Check one simple command; returns what was checked (for the report)."""
    while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):  # FOO=1 cmd: environment
        argv = argv[1:]
    if not argv:
        return "assignment"
    prog, args = _program(argv[0]), argv[1:]
    if prog == "fasttrain":
        check_fasttrain(args)
        return "fasttrain"
    if prog in ("python", "python3"):
        if args[:2] == ["-m", "venv"]:
            assert len(args) == 3, "python -m venv DIR"
        elif args[:2] == ["-m", "pytest"]:
            for target in (a for a in args[2:] if not a.startswith("-") and a not in ("gpu", "slow")):
                assert (ROOT / target.split("::")[0]).exists(), f"pytest target {target} does not exist"
        elif args[:2] == ["-m", "fasttrain.cli"]:
            check_fasttrain(args[2:])
        elif args[:2] == ["-m", "fasttrain.docgen"]:
            _parse(docs_parser(), args[2:])
        elif args[:1] == ["-c"]:
            compile(args[1], "<python -c>", "exec")
        else:
            raise AssertionError(f"python form not allowed: {args[:2]}")
        return "python"
    if prog == "pip":
        assert args[0] == "install", "pip install ..."
        for arg in args[1:]:
            m = re.fullmatch(r"\.\[([\w,-]+)\]", arg)
            if m:
                unknown = set(m.group(1).split(",")) - _extras()
                assert not unknown, f"unknown extra(s) {unknown}"
        return "pip"
    if prog in ("torchrun", "srun"):
        if prog == "srun":
            return check_command(args)
        assert "-m" in args and args[args.index("-m") + 1] == "fasttrain.cli", "torchrun ... -m fasttrain.cli ..."
        assert any(a.startswith("--nproc-per-node") for a in args), "torchrun needs --nproc-per-node"
        check_fasttrain(args[args.index("-m") + 2:])
        return "torchrun"
    if prog == "tensorboard":
        assert args[:1] == ["--logdir"] and len(args) >= 2, "tensorboard --logdir DIR"
        return "tensorboard"
    if prog == "mkdocs":
        assert args[0] in ("build", "serve") and "-f" in args, "mkdocs build|serve -f fasttrain/mkdocs.yml"
        assert (ROOT / args[args.index("-f") + 1]).is_file()
        return "mkdocs"
    if prog == "apt-get":
        assert args[:1] == ["install"] and "-y" in args, "apt-get install -y PACKAGES"
        return "apt-get"
    if prog == "git":
        assert args[:1] in (["hash-object"], ["clone"]), "git hash-object FILE | git clone URL DIR"
        return "git"
    if prog == "bash":
        assert (ROOT / args[0]).is_file(), f"bash {args[0]}: no such script"
        return "bash"
    if prog == "cp":
        assert len([a for a in args if not a.startswith("-")]) >= 2, "cp SRC... DST"
        return "cp"
    raise AssertionError(f"'{prog}' is not on the allow-list of programs a documented command may run")


COMMANDS = [(path, line, text) for path in SOURCES for line, text in bash_commands(path)]


def test_the_docs_show_commands():
    """The README's two commands are among those checked, and the site shows many more."""
    readme = [text for path, _, text in COMMANDS if path.name == "README.md"]
    assert ".venv/bin/python -m pytest -q tests" in readme
    assert any("fasttrain train configs/glmc/cifar10_lt_r100_demo.yaml" in t for t in readme)
    assert len(COMMANDS) >= 60


@pytest.mark.parametrize("path,line,text", COMMANDS, ids=[f"{_rel(p)}:{n}" for p, n, _ in COMMANDS])
def test_every_command_in_a_bash_block_parses(path, line, text):
    if re.match(r"[A-Za-z_]\w*=\$\(", text):  # a shell variable from a command substitution (SLURM script)
        return
    for argv in _split(text):
        check_command(argv)


@pytest.mark.parametrize("argv,message", [
    (["fasttrain", "train"], "the following arguments are required: config"),
    (["fasttrain", "eval", "x.pt", "--bogus"], "unrecognized arguments: --bogus"),
    (["fasttrain", "train", "glmc/cifar10_lt_r100", "optim.learning_rate=0.1"], "did you mean"),
    (["fasttrain", "data", "cifar10"], "--root"),
    (["rm", "-rf", "x"], "allow-list"),
    ([".venv/bin/pip", "install", "-e", ".[nope]"], "unknown extra"),
])
def test_a_wrong_command_is_caught(argv, message):
    """The checker is not a rubber stamp: wrong arguments, keys, extras and programs fail."""
    with pytest.raises(Exception, match=message):
        check_command(argv)


# --- the site builds ----------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
                    reason="the docs extra is not installed (pip install -e '.[docs]'); CI installs it")
def test_the_site_builds_strict(tmp_path):
    """`mkdocs build --strict`: a broken internal link or anchor, a page missing from the nav or an
    API object that does not exist fails; the built pages cite no file the repository lacks."""
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(MKDOCS_YML),
                           "--site-dir", str(tmp_path / "site")], capture_output=True, text=True,
                          env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    html = {p: p.read_text() for p in (tmp_path / "site").rglob("*.html")}
    assert len(html) >= len(_nav_pages(yaml.safe_load(MKDOCS_YML.read_text())["nav"]))
    assert [str(p) for p, text in html.items() if NOTES in text] == []
    api = (tmp_path / "site" / "reference" / "api.html").read_text()
    assert "load_config" in api and "run_training" in api and "Augmenter" in api
