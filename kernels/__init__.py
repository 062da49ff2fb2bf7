"""Fused kernels (installed as `fasttrain.kernels`): each beside its pure-torch reference."""
