"""`loaders/` and `kernels/` install as `fasttrain.loaders` / `fasttrain.kernels`, never as
generic top-level packages — both for the editable install and for a built wheel."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = ("import importlib.util, fasttrain, fasttrain.loaders.base, fasttrain.kernels, fasttrain.loaders.torch_backend;"
         "assert importlib.util.find_spec('loaders') is None, 'generic top-level loaders importable';"
         "assert importlib.util.find_spec('kernels') is None, 'generic top-level kernels importable';"
         "print(fasttrain.__file__, fasttrain.loaders.base.__file__)")


def run_probe(cwd, env=None):
    return subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True)


def test_editable_install_imports_namespaced_packages(tmp_path):
    proc = run_probe(tmp_path)  # outside the repo: only the installed mapping can resolve them
    assert proc.returncode == 0, proc.stderr
    assert str(ROOT / "loaders" / "base.py") in proc.stdout


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> tuple[list[str], Path]:
    """The wheel built from this checkout (its file names) and installed into a fresh site folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    # setuptools reuses <repo>/build/: files renamed or removed since an earlier build would
    # still go into the wheel, so start from an empty one (it is git-ignored scratch space).
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp / "dist"), str(ROOT)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("fasttrain-*.whl")
    target = tmp / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel)], capture_output=True, text=True)
    assert inst.returncode == 0, inst.stderr[-3000:]
    return zipfile.ZipFile(wheel).namelist(), target


def test_built_wheel_imports_namespaced_packages(tmp_path, installed_wheel):
    names, target = installed_wheel
    assert "fasttrain/loaders/base.py" in names and "fasttrain/kernels/__init__.py" in names
    assert "fasttrain/kernels/soft_ce/reference.py" in names
    assert any(n.startswith("fasttrain/splits/imagenet_lt/") for n in names)
    assert not any(n.startswith(("loaders/", "kernels/")) for n in names)
    # PYTHONPATH entries come before the editable install's finder on the import path, so
    # this process imports the wheel's copy; the probe checks which copy it got.
    env = dict(os.environ, PYTHONPATH=str(target))
    proc = run_probe(tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(str(target)), proc.stdout


def test_wheel_ships_the_configs_and_trains_one_step_from_one_by_name(tmp_path, installed_wheel):
    """A user who installs the wheel (no checkout) gets the configs and can train from a name."""
    names, target = installed_wheel
    shipped = sorted(str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*.yaml"))
    assert sorted(n.removeprefix("fasttrain/configs/") for n in names if n.startswith("fasttrain/configs/")) == shipped
    env = dict(os.environ, PYTHONPATH=str(target), FASTTRAIN_NO_TQDM="1", OMP_NUM_THREADS="1")
    listed = subprocess.run([sys.executable, "-m", "fasttrain.cli", "configs"], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert listed.returncode == 0 and "glmc/cifar10_lt_r100 " in listed.stdout, listed.stderr[-2000:]
    run = subprocess.run(
        [sys.executable, "-m", "fasttrain.cli", "train", "ce/cifar10_lt_r100", "data.dataset=synthetic",
         "data.num_classes=3", "data.synthetic_size=[32,32]", "data.synthetic_max_per_class=8",
         f"data.root={tmp_path / 'syn'}", f"out_dir={tmp_path / 'runs'}", "device=cpu", "train.epochs=1",
         "train.max_steps_per_epoch=1", "loader.num_workers=0", "loader.batch_size=4"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    where = subprocess.run([sys.executable, "-c", "import fasttrain.shipped as s; print(s.configs_dir())"],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
    assert where.stdout.strip() == str(target / "fasttrain" / "configs")  # the wheel's copy, not the checkout's
    summary = (tmp_path / "runs" / "ce_cifar10_lt_r100" / "summary.json").read_text()
    assert '"steps": 1' in summary
