"""`fasttrain predict` and `fasttrain export` from a checkpoint, without the training data."""
from __future__ import annotations

import csv
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fasttrain.config import load_config
from fasttrain.inference import Predictor, example_input, export, load_for_inference, predict

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A 1-step CE run on a synthetic JPEG corpus (3 classes, 32x32): its best.pt."""
    from fasttrain.trainer import run_training

    tmp = tmp_path_factory.mktemp("infer")
    over = ["data.dataset=synthetic", "data.num_classes=3", "data.synthetic_size=[40,32]",
            "data.synthetic_max_per_class=6", f"data.root={tmp / 'syn'}", f"out_dir={tmp / 'runs'}", "device=cpu",
            "train.epochs=1", "train.max_steps_per_epoch=1", "loader.num_workers=0", "loader.batch_size=4",
            "augment.train=imagenet", "augment.crop_size=32", "augment.eval_resize=36", "method.name=logit_adjust",
            "method.posthoc=true",
            "train.amp=fp32"]  # the test calls method.predict on fp32 weights outside autocast: exact fp32
    run_training(load_config(ROOT / "configs" / "ce" / "cifar10_lt_r100.yaml", over))
    return tmp / "runs" / "ce_cifar10_lt_r100" / "best.pt"


def test_predict_matches_the_methods_prediction_and_writes_csv(checkpoint, tmp_path):
    images = checkpoint.parents[2] / "syn" / "test"
    rows = predict(checkpoint, images, topk=2, out=tmp_path / "p.csv", device="cpu")
    files = sorted(p for p in images.rglob("*.jpg"))
    assert [r["file"] for r in rows] == [str(p) for p in files] and all(len(r["classes"]) == 2 for r in rows)
    run, meta = load_for_inference(checkpoint, "cpu")
    assert meta["class_names"] == ["c0000", "c0001", "c0002"]  # the corpus' class folders
    # the method's own prediction rule (Logit Adjustment's post-hoc offset) decides, not the raw logits
    from fasttrain.batch import Batch
    from fasttrain.compat import quiet_tvio_deprecation
    from torchvision.io import decode_jpeg, read_file
    from torchvision.transforms import v2

    with quiet_tvio_deprecation():
        img = decode_jpeg(read_file(str(files[0])))
    img = v2.CenterCrop(32)(v2.Resize(36, antialias=True)(img))[None].contiguous(memory_format=torch.channels_last)
    x = run.augmenter.views(Batch(views=[img], labels=torch.zeros(1, dtype=torch.long), stream=torch.zeros(1)))[0]
    with torch.no_grad():
        want = torch.softmax(run.method.predict(run.model, x).float(), 1)
    assert rows[0]["classes"][0] == int(want.argmax()) and rows[0]["probs"][0] == pytest.approx(want.max().item(), abs=1e-5)
    table = list(csv.reader(open(tmp_path / "p.csv")))
    assert table[0] == ["file", "class1", "name1", "prob1", "class2", "name2", "prob2"] and len(table) == len(rows) + 1
    out = subprocess.run([sys.executable, "-m", "fasttrain.cli", "predict", str(checkpoint), str(files[0]),
                          "--topk", "1", "--device", "cpu"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["classes"] == rows[0]["classes"][:1]


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript"])
def test_export_outputs_equal_the_checkpoints(checkpoint, tmp_path, fmt):
    out = export(checkpoint, fmt, tmp_path / f"model.{fmt}")
    info = json.loads(Path(f"{out}.json").read_text())
    assert info["meta"]["class_names"] and info["config"]["method"]["name"] == "logit_adjust"
    run, meta = load_for_inference(checkpoint, "cpu")
    x = example_input(run, meta)
    want = Predictor(run.method, run.model).eval()(x)
    if fmt == "safetensors":
        from safetensors.torch import load_file

        fresh, _ = load_for_inference(checkpoint, "cpu")
        with torch.no_grad():
            for p in fresh.model.parameters():
                p.zero_()
        fresh.model.load_state_dict(load_file(str(out)))
        got = Predictor(fresh.method, fresh.model).eval()(x)
    else:
        got = torch.jit.load(str(out))(x)
    torch.testing.assert_close(got, want)


def test_export_onnx_when_its_runtime_is_installed(checkpoint, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = export(checkpoint, "onnx", tmp_path / "model.onnx")
    run, meta = load_for_inference(checkpoint, "cpu")
    x = example_input(run, meta)
    want = Predictor(run.method, run.model).eval()(x).detach().numpy()
    got = ort.InferenceSession(str(out)).run(None, {"images": x.contiguous().numpy()})[0]
    assert abs(got - want).max() < 1e-4


def test_predict_takes_several_images_folders_and_list_files(checkpoint, tmp_path, capsys):
    """`fasttrain predict CKPT a.jpg b.jpg c.jpg` (and folders / list files among them): one JSON line
    per image, in the order given; a missing one is one line naming it, exit 2."""
    from fasttrain.cli import main

    images = checkpoint.parents[2] / "syn" / "test"
    files = sorted(images.rglob("*.jpg"))
    three = [files[2], files[0], files[-1]]
    assert main(["predict", str(checkpoint), *map(str, three), "--topk", "1", "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in rows] == [str(f) for f in three]
    listed = tmp_path / "two.txt"
    listed.write_text(f"{files[1]} 0\n{files[3]}\n")
    assert main(["predict", str(checkpoint), str(files[0]), str(images / "c0001"), str(listed), "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    folder = sorted(str(f) for f in (images / "c0001").rglob("*.jpg"))
    assert [r["file"] for r in rows] == [str(files[0]), *folder, str(files[1]), str(files[3])]
    assert main(["predict", str(checkpoint), str(files[0]), str(tmp_path / "missing.jpg"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {tmp_path / 'missing.jpg'}: no such image, folder or list file"


def test_eval_prints_its_headline_first_and_names_the_files_it_writes(checkpoint, tmp_path, capsys):
    """`fasttrain eval`: line 1 the headline (top-1, many / medium / few, ECE, the checkpoint), line 2
    the files written; --no-files writes none; --json prints the report alone on stdout."""
    from fasttrain.cli import main

    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(checkpoint.read_bytes())
    assert main(["eval", str(ckpt)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"top-1 [\d.]+ % \(many .+ / medium .+ / few .+\), ECE [\d.]+ % — " + re.escape(str(ckpt)),
                        lines[0]), lines[0]
    assert lines[1:] == [f"wrote {tmp_path / 'best_per_class.csv'}, {tmp_path / 'best_per_class.png'}"]
    assert (tmp_path / "best_per_class.csv").is_file() and (tmp_path / "best_per_class.png").is_file()
    (tmp_path / "best_per_class.csv").unlink()
    assert main(["eval", str(ckpt), "--no-files", "--json"]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert out.err.splitlines()[0].startswith(f"top-1 {report['top1']:.2f} %") and "per_class" not in report
    assert not (tmp_path / "best_per_class.csv").exists()


def test_export_is_quiet_and_its_files_get_the_usual_mode(checkpoint, tmp_path):
    """Every format and its .json get 0666 less the umask (safetensors writes 0600 itself); the
    exporters' known harmless notices are muted, while any other warning still shows."""
    import os
    import warnings

    from fasttrain.compat import quiet_export_notices

    umask = os.umask(0)
    os.umask(umask)
    formats = ["safetensors", "torchscript"] + (["onnx"] if importlib.util.find_spec("onnx") else [])
    for fmt in formats:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = export(checkpoint, fmt, tmp_path / f"model.{fmt}")
        assert [str(w.message) for w in caught if issubclass(w.category, (UserWarning, FutureWarning))] == [], fmt
        for path in (out, Path(f"{out}.json")):
            assert path.stat().st_mode & 0o777 == 0o666 & ~umask, (fmt, oct(path.stat().st_mode))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_export_notices():
            warnings.warn("a real problem", UserWarning)
    assert [str(w.message) for w in caught] == ["a real problem"]
