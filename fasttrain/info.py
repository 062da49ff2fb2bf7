"""`fasttrain info`: versions, devices, and which optional backends/kernels are usable."""
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

    from fasttrain.trainer import versions

    info: dict = {"versions": versions()}
    info["devices"] = {"cuda_available": torch.cuda.is_available(),
                       "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    ok, detail = _probe("triton")
    info["triton"] = {"installed": ok, "detail": detail,
                      "kernels_usable": ok and torch.cuda.is_available(),
                      "note": "fused kernels run on CUDA; elsewhere the pure-torch references are used"}
    try:
        from fasttrain.loaders.dali import dali_available

        ok, detail = dali_available()
    except ImportError as exc:
        ok, detail = False, str(exc)
    info["dali"] = {"usable": ok, "detail": detail, "install": "pip install 'fasttrain[dali]'"}
    ok, detail = _probe("ffcv")
    info["ffcv"] = {"usable": ok, "detail": detail}
    ok, detail = _probe("apex")
    if ok:
        ok = importlib.util.find_spec("apex.optimizers") is not None
        detail = detail if ok else "an unrelated 'apex' package (no apex.optimizers)"
    info["apex"] = {"usable": ok, "detail": detail}
    info["loaders"] = ["torch", "tensor", "dali"]
    from fasttrain.methods import METHODS

    info["methods"] = sorted(METHODS)
    return info
