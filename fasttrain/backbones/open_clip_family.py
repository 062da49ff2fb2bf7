"""CLIP image towers through open_clip (`open_clip/<arch>`, e.g. `open_clip/ViT-B-16`): the image
encoder of an open_clip model, without its text tower, as a fasttrain backbone.

- The trunk is a container holding the tower as `visual`, so a whole open_clip checkpoint
  (`visual.*` plus the text tower's keys) loads into it key for key: the text tower's keys are
  `removed_keys`, expected and dropped (`model.pretrained: /path/to/open_clip_model.safetensors`).
- `feature_dim` is the tower's output: the projected embedding (ViT-B-16: 512-d). `arch_kwargs`
  `{image_projection: false}` drops the projection and gives the tower's width instead (768-d
  `ln_post` class token, what LIFT puts its classifier on).
- Other `arch_kwargs` change open_clip's model config: `vision_cfg` / `text_cfg` are merged into the
  built-in ones (`{vision_cfg: {image_size: 336}}`), other keys replace top-level entries
  (`embed_dim`, `quick_gelu`).
- Library weights (`model.pretrained: library:<tag>`, a tag of `open_clip.list_pretrained_tags_by_model`,
  e.g. `openai`, `laion2b_s34b_b88k`; `library` = the first tag) come from the local caches: the
  Hugging Face cache for tags published there, `~/.cache/clip` for URL-only tags. A tag trained with
  QuickGELU (OpenAI's) builds the model with QuickGELU. Where the file is absent and cannot be
  downloaded, the error says which file to place where.
- The text tower stays outside the model (no parameter of the run, in no checkpoint) until
  `encode_class_prompts` has made the class-prompt features a text-initialised classifier starts from
  (fasttrain.models.CosineClassifier.from_text); `release_text_tower` frees it.

open_clip is an optional dependency (`pip install fasttrain[clip]`), imported inside the functions.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
import torch.nn as nn

from fasttrain.backbones.base import LibraryBackbone
from fasttrain.backbones.weights import WeightsError

PROJECTION_KEY = "image_projection"  # arch_kwargs key read by fasttrain, not passed to open_clip
HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's Hub files, preferred first
URL_CACHE = "~/.cache/clip"  # open_clip's folder for URL downloads (its default cache_dir)


def _open_clip():
    try:
        import open_clip
    except ImportError:
        raise WeightsError("model.arch: open_clip/<arch> needs the open_clip package: "
                           "pip install 'fasttrain[clip]' (or pip install open_clip_torch)") from None
    return open_clip


def names() -> list[str]:
    return _open_clip().list_models()


def pretrained_tags(name: str) -> list[str]:
    return _open_clip().list_pretrained_tags_by_model(name)


class _Towers(nn.Module):
    """The trunk: the image tower as `visual`, laid out like an open_clip checkpoint."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual


class _TextTower:
    """The open_clip model the tower came from, kept outside the module tree (not a parameter of
    the run, not in its checkpoints, shared by deep copies) to encode class prompts once."""

    def __init__(self, model: nn.Module, name: str, image_proj: torch.Tensor | None):
        self.model = model
        self.name = name
        self.image_proj = image_proj  # the tower's projection when the backbone dropped it
        self.weights_file: str | None = None

    def __deepcopy__(self, memo):
        return self


class OpenClipBackbone(LibraryBackbone):
    """The image tower of an open_clip model: (B, 3, H, W) -> (B, feature_dim)."""

    text_tower: _TextTower | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.visual(x)

    def on_weights_file(self, path: str) -> None:
        if self.text_tower is not None:
            self.text_tower.weights_file = str(path)  # its text weights too, read when prompts are encoded

    @torch.no_grad()
    def encode_class_prompts(self, class_names: list[str], template: str = "a photo of a {}.",
                             batch: int = 256) -> torch.Tensor:
        """(C, feature_dim) L2-normalised text features of `template` filled with each class name
        (underscores as spaces), in this backbone's feature space: CLIP's joint embedding, or, when
        the backbone gives the tower's width (`image_projection: false`), the text features mapped
        back through the image projection's transpose and normalised again (LIFT's rule)."""
        import torch.nn.functional as F

        tower = self.text_tower
        if tower is None:
            raise ValueError(f"{self.arch}: its text tower was released; encode class prompts right after building")
        oc = _open_clip()
        model = tower.model
        if tower.weights_file is not None:  # the text tower's part of the file the image tower came from
            from fasttrain.backbones.weights import read_state_dict

            state = read_state_dict(tower.weights_file)
            result = model.load_state_dict({k: v for k, v in state.items() if not k.startswith("visual.")},
                                           strict=False)
            if result.missing_keys:
                raise WeightsError(f"model.pretrained: {tower.weights_file} has no text tower for the class prompts "
                                   f"(missing {', '.join(result.missing_keys[:8])}); give a whole open_clip checkpoint")
            if tower.image_proj is not None and "visual.proj" in state:  # the dropped projection, from the file
                tower.image_proj = state["visual.proj"]
            tower.weights_file = None
        tokenizer = oc.get_tokenizer(tower.name)
        prompts = [template.format(c.replace("_", " ")) for c in class_names]
        model.eval()
        feats = torch.cat([model.encode_text(tokenizer(prompts[i:i + batch]), normalize=True)
                           for i in range(0, len(prompts), batch)])
        if tower.image_proj is not None:
            feats = F.normalize(feats @ tower.image_proj.t().to(feats.dtype), dim=-1)
        return feats.float()

    def release_text_tower(self) -> None:
        self.text_tower = None


def _model_kwargs(oc, name: str, kwargs: dict) -> dict:
    """open_clip's model config for `name` with `kwargs` applied (vision_cfg / text_cfg merged)."""
    base = oc.get_model_config(name)
    if base is None:
        raise WeightsError(f"model.arch: open_clip has no model config {name!r}")
    out: dict = {}
    for key, value in kwargs.items():
        if key in ("vision_cfg", "text_cfg") and isinstance(value, dict):
            merged = copy.deepcopy(base.get(key, {}))
            merged.update(value)
            out[key] = merged
        else:
            out[key] = value
    return out


def _cached_file(pcfg: dict) -> str | None:
    """A local copy of the weights open_clip's pretrained config `pcfg` points to, or None."""
    hub = pcfg.get("hf_hub") or ""
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)  # "org/name/" = the default files, "org/name/file" = that file
        for f in ((filename,) if filename else HF_FILES):
            found = try_to_load_from_cache(repo, f)
            if isinstance(found, str):
                return found
    url = pcfg.get("url") or ""
    if url:
        path = Path(os.path.expanduser(URL_CACHE)) / os.path.basename(url)
        if path.is_file():
            return str(path)
    return None


def _wrap(model: nn.Module, arch: str, projection: bool, name: str) -> OpenClipBackbone:
    visual = model.visual
    removed = sorted({k.split(".")[0] for k in model.state_dict() if not k.startswith("visual.")})
    image_proj = None
    if projection:
        dim = int(getattr(visual, "output_dim", 0) or 0)
    else:
        if not hasattr(visual, "proj"):
            raise WeightsError(f"model.arch_kwargs: {arch}'s image tower has no projection to drop "
                               f"({PROJECTION_KEY}: false works for open_clip ViT towers)")
        image_proj = visual.proj.detach()
        visual.proj = None
        removed.append("visual.proj")
        dim = int(visual.transformer.width)
    if not dim:  # timm / ModifiedResNet towers: ask the tower
        with torch.no_grad():
            size = getattr(visual, "image_size", 224)
            size = size[0] if isinstance(size, (tuple, list)) else size
            dim = int(visual.eval()(torch.zeros(1, 3, size, size)).shape[-1])
    backbone = OpenClipBackbone(_Towers(visual), dim, arch, tuple(removed))
    model.visual = nn.Identity()  # the tower lives in the backbone only
    backbone.text_tower = _TextTower(model, name, image_proj)
    return backbone


def default_tag(name: str) -> str:
    tags = pretrained_tags(name)
    if not tags:
        raise WeightsError(f"model.pretrained: open_clip has no pretrained weights for {name}")
    return tags[0]


def build(name: str, kwargs: dict, weights: str | None = None, *, library_weights: bool = False) -> OpenClipBackbone:
    """open_clip/<name>; with `library_weights`, open_clip's weights of tag `weights` (default: the
    first tag) from the local cache, downloaded there first when the machine can."""
    oc = _open_clip()
    arch = f"open_clip/{name}"
    kwargs = dict(kwargs)
    projection = bool(kwargs.pop(PROJECTION_KEY, True))
    model_kwargs = _model_kwargs(oc, name, kwargs)
    if not library_weights:
        return _wrap(oc.create_model(name, pretrained=None, **model_kwargs), arch, projection, name)
    tag = weights or default_tag(name)
    pcfg = oc.get_pretrained_cfg(name, tag)
    if not pcfg:
        raise WeightsError(f"model.pretrained: open_clip has no weights {tag!r} for {name}; tags: "
                           f"{', '.join(pretrained_tags(name)) or 'none'}")
    if pcfg.get("quick_gelu"):
        model_kwargs.setdefault("quick_gelu", True)  # the activation these weights were trained with
    local = _cached_file(pcfg)
    if local is not None:  # open_clip's own loader (its checkpoint conversions), no network
        return _wrap(oc.create_model(name, pretrained=local, **model_kwargs), arch, projection, name)
    try:
        model = oc.create_model(name, pretrained=tag, **model_kwargs)
    except Exception as exc:  # offline, HTTP errors, timeouts
        raise WeightsError(_missing_message(name, tag, pcfg, exc)) from None
    return _wrap(model, arch, projection, name)


def _missing_message(name: str, tag: str, pcfg: dict, exc: Exception) -> str:
    why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    head = (f"model.pretrained: open_clip weights {name} / {tag} are not in the local cache and could not be "
            f"downloaded ({why}).")
    hub = pcfg.get("hf_hub") or ""
    if hub:
        from huggingface_hub import constants

        repo, fname = os.path.split(hub)
        fname = fname or HF_FILES[0]
        source = f"https://huggingface.co/{repo}/resolve/main/{fname}"
        return (f"{head} Either download {source} and set model.pretrained=/path/to/{fname}, or fill the Hugging "
                f"Face cache {constants.HF_HUB_CACHE} (follows $HF_HOME / $HF_HUB_CACHE) on this machine, e.g. copy "
                f"the folder models--{repo.replace('/', '--')} from a machine that ran `hf download {repo}`")
    url = pcfg.get("url") or ""
    where = Path(os.path.expanduser(URL_CACHE)) / os.path.basename(url)
    return (f"{head} Place the file {where.name} (from {url}) at {where}, or put it anywhere and set "
            f"model.pretrained=/path/to/{where.name} (a TorchScript file from OpenAI must first be re-saved as a "
            "state dict)")
