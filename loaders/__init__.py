"""Loader backends (installed as `fasttrain.loaders`).

`BACKENDS` is the one list of backend names: config choices (`loader.backend`), `fasttrain info`
and the loader conformance tests are all derived from it, so adding a backend is one file
beside this one plus one line here. Every backend class takes the same keyword arguments (see
`build_loader`), honours the `fasttrain.batch.Batch` contract and subclasses
`base.LoaderBackend`. Backends are imported lazily so that a missing optional dependency
(DALI, FFCV) only matters when that backend is asked for.
"""
from __future__ import annotations

import importlib

# backend name -> (module, class)
BACKENDS: dict[str, tuple[str, str]] = {
    "torch": ("fasttrain.loaders.torch_backend", "TorchLoader"),
    "tensor": ("fasttrain.loaders.tensor", "TensorLoader"),
    "dali": ("fasttrain.loaders.dali", "DaliLoader"),
    "ffcv": ("fasttrain.loaders.ffcv", "FfcvLoader"),
}


def loader_class(backend: str) -> type:
    """The backend class registered under `backend` (imports its module)."""
    if backend not in BACKENDS:
        raise ValueError(f"loader.backend: unknown backend {backend!r}; choose from {sorted(BACKENDS)}")
    module, cls = BACKENDS[backend]
    return getattr(importlib.import_module(module), cls)


def backend_status() -> dict[str, dict]:
    """Per registered backend: whether it is usable here, why, and which datasets it reads."""
    out = {}
    for name in BACKENDS:
        try:
            cls = loader_class(name)
            ok, detail = cls.available()
            out[name] = {"usable": ok, "detail": detail, "reads": list(cls.reads)}
        except Exception as exc:  # a broken optional install must not break `fasttrain info`
            out[name] = {"usable": False, "detail": f"{type(exc).__name__}: {exc}", "reads": []}
    return out


def build_loader(backend: str, dataset, samplers, *, batch_size: int, num_views: int, device,
                 augment, loader, train: bool, seed: int = 0):
    """Build a loader backend.

    dataset: LTDataset; samplers: list of Sampler (one per stream; the first defines the
    epoch length) or None for sequential evaluation order; augment: AugmentConfig;
    loader: LoaderConfig; train: training augmentation (True) or eval transform (False).
    """
    return loader_class(backend)(dataset, samplers, batch_size=batch_size, num_views=num_views, device=device,
                                 augment=augment, loader=loader, train=train, seed=seed)
