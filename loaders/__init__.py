"""Loader backends (installed as `fasttrain.loaders`).

`BACKENDS` (name -> class) is the one list of backend names: config choices (`loader.backend`),
`fasttrain info` and the loader conformance tests are all derived from it. A backend is one file
beside this one whose class is decorated with `@register_backend("name")`, plus its import line
below. Every backend class takes the same keyword arguments (see `build_loader`), honours the
`fasttrain.batch.Batch` contract and subclasses `base.LoaderBackend`, which lays every epoch out.
Importing a backend's module is cheap: optional dependencies (DALI, FFCV) are imported when the
backend is built, so a missing one only matters when that backend is asked for.
"""
from __future__ import annotations

from .base import (AUGMENT_POLICIES, AUTOAUGMENT_POLICIES, BACKENDS, LoaderBackend,  # noqa: F401
                   policy_refusal, register_backend)
from . import torch_backend, tensor, dali, ffcv  # noqa: F401,E402 - each registers its backend


def loader_class(backend: str) -> type:
    """The backend class registered under `backend`."""
    if backend not in BACKENDS:
        raise ValueError(f"loader.backend: unknown backend {backend!r}; choose from {sorted(BACKENDS)}")
    return BACKENDS[backend]


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
    epoch length) or None for sequential evaluation order; batch_size: rows of one step over all
    streams (the trainer passes loader.batch_size x streams); augment: AugmentConfig;
    loader: LoaderConfig; train: training augmentation (True) or eval transform (False).
    A training `augment.policy` the backend does not apply (its class's `policies`) is refused here,
    naming the backend and the ones that apply it.
    """
    cls = loader_class(backend)
    reason = policy_refusal(backend, augment, train)
    if reason:
        raise ValueError(reason)
    return cls(dataset, samplers, batch_size=batch_size, num_views=num_views, device=device,
                                 augment=augment, loader=loader, train=train, seed=seed)
