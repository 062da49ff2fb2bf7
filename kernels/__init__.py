"""Fused kernels (installed as `fasttrain.kernels`): each beside its pure-torch reference."""

from .soft_ce import SoftTargetCrossEntropy, soft_target_cross_entropy  # noqa: E402,F401 - the one loss of the project
