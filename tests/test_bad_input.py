"""Every bad input gets a clear one-paragraph error naming the offending thing, a non-zero exit
status, no traceback, and nothing half-written. One table: the cases run here through the CLI's
`main` (in-process, so each costs a config load or a few tiny training steps), and the cases whose
details are tested next to their code are pointed at (the pointers are checked to exist).

What the user sees is the `error: ...` line on stderr; exit status 2 for bad input (config, data,
checkpoint, run directory), 3 when training cannot go on (NaN/inf loss, out of memory).
"""
from __future__ import annotations

import errno
import importlib
import re
from pathlib import Path

import pytest
import torch
import yaml

from fasttrain.checkpoint import load_checkpoint
from fasttrain.cli import main

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "ce" / "cifar10_lt_r100.yaml"
RUN = "ce_cifar10_lt_r100"

# Cases whose details are tested beside the code that raises them (file::test).
POINTERS = {
    "list file with a bad line": "test_data_lists.py::test_bad_lines_name_file_and_line",
    "label out of range (list file)": "test_data_lists.py::test_bad_lines_name_file_and_line",
    "label out of range (CIFAR pickle)": "test_data_cifar.py::test_missing_and_bad_cifar_files",
    "missing image": "test_data_lists.py::test_missing_image_names_file_and_line",
    "a class with zero samples": "test_data_lists.py::test_empty_class_is_an_error",
    "corrupt image, DALI: error or skip-and-count (loader.skip_corrupt)":
        "test_dali_loader.py::test_skip_corrupt_skips_and_counts",
    "corrupt image, DALI: the error names the file": "test_dali_loader.py::test_bad_file_error_names_the_file",
    "unknown key in a method section": "test_config.py::test_unknown_method_key",
    "a run directory that holds a run": "test_reliability.py::test_a_run_directory_is_never_reused_silently",
    "a checkpoint whose pickle would run code": "test_reliability.py::test_a_checkpoint_whose_pickle_would_run_code_is_refused",
}


def test_every_pointer_names_an_existing_test():
    for case, where in POINTERS.items():
        module, _, name = where.partition("::")
        assert callable(getattr(importlib.import_module(module.removesuffix(".py")), name, None)), (case, where)


@pytest.fixture(scope="module")
def syn_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("syn")


def tiny(tmp_path: Path, syn: Path, *extra: str) -> list[str]:
    return ["train", str(CONFIG), "data.dataset=synthetic", "data.num_classes=3", "data.synthetic_size=[32,32]",
            "data.synthetic_max_per_class=8", f"data.root={syn}", f"out_dir={tmp_path / 'runs'}", "device=cpu",
            "train.epochs=1", "train.max_steps_per_epoch=3", "loader.num_workers=0", "loader.batch_size=4", *extra]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- the cases ------------------------------------------------------------------------------------
# Each returns (argv, the regex the error line must match, exit status); it may monkeypatch.

def yaml_syntax_error(tmp_path, syn, monkeypatch):
    bad = write(tmp_path / "bad.yaml", f"base: {CONFIG}\noptim:\n  lr: [0.1\n")
    return ["train", str(bad)], r"bad\.yaml:\d+:\d+: invalid YAML", 2


def unknown_key(tmp_path, syn, monkeypatch):
    bad = write(tmp_path / "bad.yaml", yaml.safe_dump({"base": str(CONFIG), "optim": {"learning_rate": 0.1}}))
    return ["train", str(bad)], r"bad\.yaml.*optim\.learning_rate.*did you mean 'lr'", 2


def wrong_type(tmp_path, syn, monkeypatch):
    return ["train", str(CONFIG), "train.epochs=ten"], r"train\.epochs.*expected.*got", 2


def out_of_range(tmp_path, syn, monkeypatch):
    return ["train", str(CONFIG), "optim.lr=-0.1"], r"optim\.lr: expected a value >= 0, got -0\.1", 2


def out_of_range_new_keys(tmp_path, syn, monkeypatch):
    return ["train", str(CONFIG), "train.grad_accum_steps=0"], r"train\.grad_accum_steps: expected a value > 0", 2


def missing_data_root(tmp_path, syn, monkeypatch):
    return (["train", str(CONFIG), f"data.root={tmp_path / 'nowhere'}", f"out_dir={tmp_path / 'runs'}"],
            r"nowhere/cifar-10-batches-py.*missing CIFAR-10 file; run .*fasttrain data cifar10", 2)


def _imagenet_lt(tmp_path, lines: list[str], make_files: bool = False):
    root = tmp_path / "inet"
    lst = write(tmp_path / "train.txt", "\n".join(lines) + "\n")
    if make_files:
        for line in lines:
            write(root / line.split()[0], "")
    return ["train", str(CONFIG), "data.dataset=imagenet_lt", f"data.root={root}", f"data.train_list={lst}",
            f"out_dir={tmp_path / 'runs'}", "augment.train=imagenet"]


def list_bad_line(tmp_path, syn, monkeypatch):
    return _imagenet_lt(tmp_path, ["train/n0/a.JPEG 0", "train/n0/b.JPEG"]), r"train\.txt:2: bad line", 2


def list_label_out_of_range(tmp_path, syn, monkeypatch):
    return (_imagenet_lt(tmp_path, ["train/n0/a.JPEG 0", "train/n0/b.JPEG 1000"]),
            r"train\.txt:2: label 1000 out of range 0\.\.999", 2)


def zero_sample_class(tmp_path, syn, monkeypatch):
    return (_imagenet_lt(tmp_path, ["train/n0/a.JPEG 0", "train/n1/b.JPEG 1"]),
            r"train\.txt: 998 of 1000 classes have no training samples", 2)


def missing_image(tmp_path, syn, monkeypatch):
    # Every train image exists (one per class); the shipped test list's images do not.
    argv = _imagenet_lt(tmp_path, [f"train/n{c}/a.JPEG {c}" for c in range(1000)], make_files=True)
    return argv, r"ImageNet_LT_test\.txt.*:1: image not found: .*val/", 2


def corrupt_image(tmp_path, syn, monkeypatch):
    from helpers import smooth_jpeg

    root = tmp_path / "folder"
    for split, n in (("train", 3), ("test", 1)):
        for c in ("cat", "dog"):
            for i in range(n):
                (root / split / c).mkdir(parents=True, exist_ok=True)
                (root / split / c / f"{i}.jpg").write_bytes(smooth_jpeg(i, 40, 40))
    (root / "train" / "dog" / "2.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    return (["train", str(CONFIG), "data.dataset=folder", f"data.root={root}", f"out_dir={tmp_path / 'runs'}",
             "device=cpu", "augment.train=imagenet", "augment.crop_size=32", "augment.eval_resize=36",
             "loader.num_workers=0", "loader.batch_size=3", "train.epochs=1"],
            r"dog/2\.jpg: cannot decode image", 2)


def resume_other_model(tmp_path, syn, monkeypatch):
    assert main(tiny(tmp_path, syn, "train.epochs=2", "train.stop_after_epochs=1")) == 0
    return (tiny(tmp_path, syn, "train.epochs=2", "model.arch=resnet10", "--resume"),
            r"--resume .*last\.pt: written by a different model/config — .*weights.*model\.arch: 'resnet32' → "
            r"'resnet10'", 2)


def unwritable_out_dir(tmp_path, syn, monkeypatch):
    blocker = write(tmp_path / "a_file", "not a directory")
    return (tiny(tmp_path, syn, f"out_dir={blocker / 'runs'}"),
            r"out_dir: cannot write the run directory .*a_file/runs/" + RUN, 2)


def disk_full_while_checkpointing(tmp_path, syn, monkeypatch):
    import fasttrain.checkpoint as ck

    real_save, calls = torch.save, []

    def save(obj, f, *a, **kw):  # the first checkpoint fits on the disk, the second does not
        calls.append(1)
        if len(calls) > 1:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(ck.torch, "save", save)
    return (tiny(tmp_path, syn, "train.save_every_steps=1"),
            r"last\.pt: could not write the checkpoint \(No space left on device\); the previous last\.pt is intact", 2)


def nan_loss(tmp_path, syn, monkeypatch):
    from fasttrain.methods import METHODS

    ce = METHODS["ce"]
    real = ce.loss

    def loss(self, model, batch, progress):
        value, logs = real(self, model, batch, progress)
        if progress.step == 2:
            value = value * float("nan")
            logs = {**logs, "loss": value.detach()}
        return value, logs

    monkeypatch.setattr(ce, "loss", loss)
    return (tiny(tmp_path, syn, "train.save_every_steps=1", "train.log_every=50"),
            r"the loss became nan at epoch 0 step 2 \(0-indexed\); training stopped\. The batch's dataset indices: "
            r"\[\d+(, \d+)*\]\. last\.pt holds the last good state \(epoch 0, step 2\)", 3)


def out_of_memory(tmp_path, syn, monkeypatch):
    import fasttrain.trainer as trainer

    def step(*a, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "train_step", step)
    return (tiny(tmp_path, syn),
            r"out of device memory at epoch 0 step 0 with loader\.batch_size=4 per process .*Lower loader\.batch_size "
            r"and raise train\.grad_accum_steps .*CUDA out of memory", 3)


CASES = [yaml_syntax_error, unknown_key, wrong_type, out_of_range, out_of_range_new_keys, missing_data_root,
         list_bad_line, list_label_out_of_range, zero_sample_class, missing_image, corrupt_image, resume_other_model,
         unwritable_out_dir, disk_full_while_checkpointing, nan_loss, out_of_memory]


@pytest.mark.filterwarnings("ignore:.*differs from the upstream")  # the hand-made list files of the list cases
@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_is_one_clear_error(case, tmp_path, syn_root, monkeypatch, capsys):
    argv, pattern, status = case(tmp_path, syn_root, monkeypatch)
    capsys.readouterr()
    assert main(argv) == status  # an uncaught exception (a traceback) would fail here
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert re.search(pattern, lines[0]), lines[0]
    runs = tmp_path / "runs"
    debris = [p for p in runs.rglob("*") if ".tmp" in p.name] if runs.exists() else []
    assert debris == []  # nothing half-written
    if status == 2 and case not in (resume_other_model, disk_full_while_checkpointing):
        assert not (runs / RUN / "last.pt").exists()  # refused before anything was trained or saved


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, syn_root, monkeypatch, capsys):
    """The failed second save left the first (after step 1) in place, loadable, and no temp file."""
    argv, _, _ = disk_full_while_checkpointing(tmp_path, syn_root, monkeypatch)
    assert main(argv) == 2
    assert load_checkpoint(tmp_path / "runs" / RUN / "last.pt")["loader"]["position"] == 1
    assert not list((tmp_path / "runs" / RUN).glob(".last.pt.tmp.*"))


def test_nan_keeps_the_last_good_checkpoint(tmp_path, syn_root, monkeypatch, capsys):
    """After the NaN of step 2, last.pt is the state after step 1 (position 2) and its weights are finite."""
    argv, _, _ = nan_loss(tmp_path, syn_root, monkeypatch)
    assert main(argv) == 3
    state = load_checkpoint(tmp_path / "runs" / RUN / "last.pt")
    assert state["loader"]["position"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
