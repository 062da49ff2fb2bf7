"""Using a trained checkpoint without its training data: `fasttrain predict` and `fasttrain export`.

A checkpoint holds the resolved config and `meta` (class names, train counts, normalisation,
image size), so the model, the method's prediction rule (e.g. Logit Adjustment's post-hoc offset,
GLMC's `fc_cb` head) and the eval transform are rebuilt exactly as evaluation would use them.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from fasttrain.build import build_run, eval_augment
from fasttrain.checkpoint import load_checkpoint
from fasttrain.compat import quiet_export_notices
from fasttrain.config import config_from_dict
from fasttrain.data.index import DatasetError, LTDataset
from fasttrain.evaluation import five_crops, tte_crop_size
from fasttrain.loaders import build_loader
from fasttrain.model_state import WEIGHTS_REF, load_weights

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FORMATS = ("safetensors", "torchscript", "onnx")


def load_for_inference(path: str | Path, device: str = "auto"):
    """(run, meta) for checkpoint `path`: the eval-only run built from stand-in datasets."""
    state = load_checkpoint(path)
    if "config" not in state or "meta" not in state:
        raise RuntimeError(f"{path}: checkpoint has no stored config/meta (written by fasttrain before predict "
                           "support? evaluate it with `fasttrain eval`, then retrain or re-save)")
    raw = dict(state["config"], stages=[], device=device)
    model = dict(raw.get("model", {}), init_from=None)
    if WEIGHTS_REF not in state and "pretrained" in model:
        model["pretrained"] = None  # the checkpoint holds every weight (else its frozen ones come from there)
    raw["model"] = model
    cfg = config_from_dict(raw, f"{path} (stored config)")
    meta = state["meta"]
    counts = np.asarray(meta["train_counts"])
    stub = LTDataset("checkpoint", len(counts), np.zeros(0, np.int64), counts, paths=[],
                     mean=tuple(meta["mean"]), std=tuple(meta["std"]))
    cfg.loader.backend = "torch"  # predictions read image files
    run = build_run(cfg, datasets=(stub, stub))
    load_weights(run.model, state, str(path), cfg.model)
    run.model.eval()
    return run, meta


def _image_files(target: str | Path) -> list[str]:
    target = Path(target)
    if target.is_dir():
        files = sorted(str(p) for p in target.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    elif not target.is_file():
        raise FileNotFoundError(f"{target}: no such image, folder or list file")
    elif target.suffix.lower() in IMAGE_SUFFIXES:
        files = [str(target)]
    else:  # a list file: one path per line (a trailing label is ignored)
        lines = [ln.split()[0] for ln in target.read_text().splitlines() if ln.strip()]
        files = [str((target.parent / ln) if not Path(ln).is_absolute() else ln) for ln in lines]
    if not files:
        raise DatasetError(f"{target}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def image_files(targets: str | Path | list[str | Path]) -> list[str]:
    """The images of one target or of several, in the order given: an image, every image under a
    folder (sorted), or the paths listed in a list file."""
    if isinstance(targets, (str, Path)):
        targets = [targets]
    return [file for target in targets for file in _image_files(target)]


@torch.no_grad()
def predict(checkpoint: str | Path, targets: str | Path | list[str | Path], topk: int = 5,
            out: str | Path | None = None, batch_size: int = 64, device: str = "auto") -> list[dict]:
    """Top-k classes for every image of `targets` (see `image_files`), batched on the run's device;
    optional CSV."""
    files = image_files(targets)  # before the model is built: a wrong path fails at once
    run, meta = load_for_inference(checkpoint, device)
    aug = run.cfg.augment
    if "image_size" in meta:  # an in-memory (CIFAR-style) model: images are brought to its input size
        aug.eval_resize, aug.crop_size = int(min(meta["image_size"])), int(min(meta["image_size"]))
    ds = LTDataset("predict", len(meta["train_counts"]), np.zeros(len(files), np.int64),
                   np.asarray(meta["train_counts"]), paths=files)
    tte = tte_crop_size(aug)  # the run's test-time ensembling, as evaluated
    loader = build_loader("torch", ds, None, batch_size=batch_size, num_views=1, device=run.device,
                          augment=eval_augment(aug), loader=run.cfg.loader, train=False, seed=run.cfg.seed)
    k = min(topk, len(meta["class_names"]))
    rows = []
    autocast = torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.augmenter.dtype == torch.bfloat16)
    for batch in loader:
        with autocast:
            x = run.augmenter.views(batch)[0]
            views = five_crops(x, tte) if tte else [x]
            logits = torch.stack([run.method.predict(run.model, v).float() for v in views]).mean(dim=0)
        probs, classes = torch.softmax(logits.float(), dim=1).topk(k, dim=1)
        for i, idx in enumerate(batch.index.tolist()):
            top = classes[i].tolist()
            rows.append({"file": files[idx], "classes": top, "names": [meta["class_names"][c] for c in top],
                         "probs": [round(p, 6) for p in probs[i].tolist()]})
    if out is not None:
        with open(out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file"] + [f"{key}{j + 1}" for j in range(k) for key in ("class", "name", "prob")])
            for r in rows:
                w.writerow([r["file"]] + [v for j in range(k) for v in (r["classes"][j], r["names"][j], r["probs"][j])])
    return rows


class Predictor(nn.Module):
    """normalised images (B, 3, H, W) -> the method's prediction logits; what export writes."""

    def __init__(self, method, model: nn.Module):
        super().__init__()
        self.method, self.model = method, model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.predict(self.model, x)


def example_input(run, meta) -> torch.Tensor:
    size = meta.get("image_size") or [run.cfg.augment.crop_size] * 2
    return torch.randn(2, 3, *size, device=run.device).contiguous(memory_format=torch.channels_last)


def export(checkpoint: str | Path, fmt: str, out: str | Path) -> Path:
    """Write the model (safetensors: weights; torchscript / onnx: the prediction graph) and, beside
    it, `<out>.json` with the resolved config and meta."""
    if fmt not in FORMATS:
        raise ValueError(f"export format: expected one of {list(FORMATS)}, got {fmt!r}")
    run, meta = load_for_inference(checkpoint, "cpu")
    out = Path(out)
    info = {"config": load_checkpoint(checkpoint)["config"], "meta": meta, "format": fmt,
            "input": "normalised float32 (B, 3, H, W); mean/std in meta"}
    if fmt == "safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError as exc:
            raise ImportError("export --format safetensors needs the safetensors package: pip install safetensors") from exc
        state = {k: v.detach().contiguous() for k, v in run.model.state_dict().items()}
        save_file(state, str(out), metadata={"fasttrain": json.dumps(info)})
    else:
        predictor = Predictor(run.method, run.model).eval()
        x = example_input(run, meta)
        with quiet_export_notices():
            if fmt == "torchscript":
                torch.jit.trace(predictor, x, check_trace=False).save(str(out))
            else:
                torch.onnx.export(predictor, (x,), str(out), input_names=["images"], output_names=["logits"],
                                  dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    give_default_mode(out)
    Path(f"{out}.json").write_text(json.dumps(info, indent=1))
    return out


def give_default_mode(path: Path) -> None:
    """The mode a new file gets here (0666 less the umask): safetensors writes its file 0600, so an
    export would otherwise be private while its .json and the other formats are not."""
    umask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
