"""Loader backends (installed as `fasttrain.loaders`).

Every backend class takes the same keyword arguments (see `build_loader`) and honours the
`Batch` contract in `base.py`. Backends are imported lazily so that a missing optional
dependency (DALI, FFCV) only matters when that backend is asked for.
"""
from __future__ import annotations

import importlib

# backend name -> (module, class)
BACKENDS: dict[str, tuple[str, str]] = {
    "torch": ("fasttrain.loaders.torch_backend", "TorchLoader"),
    "tensor": ("fasttrain.loaders.tensor", "TensorLoader"),
    "dali": ("fasttrain.loaders.dali", "DaliLoader"),
}


def build_loader(backend: str, dataset, samplers, *, batch_size: int, num_views: int, device,
                 augment, loader, train: bool, seed: int = 0):
    """Build a loader backend.

    dataset: LTDataset; samplers: list of Sampler (one per stream; the first defines the
    epoch length) or None for sequential evaluation order; augment: AugmentConfig;
    loader: LoaderConfig; train: training augmentation (True) or eval transform (False).
    """
    if backend not in BACKENDS:
        raise ValueError(f"loader.backend: unknown backend {backend!r}; choose from {sorted(BACKENDS)}")
    module, cls = BACKENDS[backend]
    backend_cls = getattr(importlib.import_module(module), cls)
    return backend_cls(dataset, samplers, batch_size=batch_size, num_views=num_views, device=device,
                       augment=augment, loader=loader, train=train, seed=seed)
