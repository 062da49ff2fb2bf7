"""`fasttrain info`: versions, devices, and which optional backends/kernels are usable here.

Every list of names comes from its registry (loader backends, methods, datasets, samplers,
schedules, backbones), so a newly registered one shows up without an edit here."""
from __future__ import annotations

import importlib
import importlib.util


def _probe(module: str) -> tuple[bool, str]:
    if importlib.util.find_spec(module) is None:
        return False, "not installed"
    try:
        mod = importlib.import_module(module)
        return True, getattr(mod, "__version__", "installed")
    except Exception as exc:  # broken installs must not crash `info`
        return False, f"import failed: {type(exc).__name__}: {exc}"


def collect_info() -> dict:
    import torch

    from fasttrain.config import choices
    from fasttrain.environment import cpu_model, versions
    from fasttrain.loaders import backend_status

    info: dict = {"versions": versions()}
    info["devices"] = {"cpu": cpu_model(), "cuda_available": torch.cuda.is_available(),
                       "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    ok, detail = _probe("triton")
    info["triton"] = {"installed": ok, "detail": detail,
                      "kernels_usable": ok and torch.cuda.is_available(),
                      "note": "fused kernels run on CUDA; elsewhere the pure-torch references are used"}
    info["loaders"] = backend_status()
    ok, detail = _probe("apex")
    if ok:
        ok = importlib.util.find_spec("apex.optimizers") is not None
        detail = detail if ok else "an unrelated 'apex' package (no apex.optimizers)"
    info["apex"] = {"usable": ok, "detail": detail}
    names = choices()
    for key, field in (("methods", "method.name"), ("datasets", "data.dataset"), ("samplers", "loader.sampler"),
                       ("schedules", "schedule.name"), ("backbones", "model.arch")):
        info[key] = sorted(names[field])
    return info
