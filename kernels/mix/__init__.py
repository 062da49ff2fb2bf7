"""Fused normalize + crop/flip + MixUp/CutMix (reference.py = spec, triton_kernel.py, function.py)."""
from .function import fused_mix, fused_normalize

__all__ = ["fused_mix", "fused_normalize"]
