"""Methods registry: adding a method = one file + one line here."""
from __future__ import annotations

from fasttrain.methods.base import Method, MethodConfig, MethodContext, Progress, StreamSpec
from fasttrain.methods.balanced_softmax import BalancedSoftmax
from fasttrain.methods.ce import CrossEntropy
from fasttrain.methods.glmc import GLMC
from fasttrain.methods.ldam_drw import LDAMDRW
from fasttrain.methods.logit_adjust import LogitAdjust
from fasttrain.methods.maxnorm import MaxNorm

METHODS: dict[str, type[Method]] = {
    "ce": CrossEntropy,
    "glmc": GLMC,
    "maxnorm": MaxNorm,
    "balanced_softmax": BalancedSoftmax,
    "logit_adjust": LogitAdjust,
    "ldam_drw": LDAMDRW,
}

__all__ = ["METHODS", "Method", "MethodConfig", "MethodContext", "Progress", "StreamSpec"]
