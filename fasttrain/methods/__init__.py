"""Methods registry: adding a method = one file + one line here."""
from __future__ import annotations

from fasttrain.methods.base import Method, MethodConfig, MethodContext, Progress, StreamSpec
from fasttrain.methods.ce import CrossEntropy
from fasttrain.methods.glmc import GLMC
from fasttrain.methods.maxnorm import MaxNorm

METHODS: dict[str, type[Method]] = {
    "ce": CrossEntropy,
    "glmc": GLMC,
    "maxnorm": MaxNorm,
}

__all__ = ["METHODS", "Method", "MethodConfig", "MethodContext", "Progress", "StreamSpec"]
