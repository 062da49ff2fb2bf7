"""Fused normalize + crop/flip + MixUp/CutMix (reference.py = spec, triton_kernel.py, function.py)."""
from .function import IMPLS, fused_mix, fused_normalize

__all__ = ["IMPLS", "fused_mix", "fused_normalize"]
