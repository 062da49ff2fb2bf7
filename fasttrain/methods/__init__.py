"""Methods: one file each, registered by `@register("name", ItsConfig)`.

Adding a method = one file in this package + one import line below. `METHODS` (from base.py)
is the one list of names that the config, `fasttrain info` and the stage mechanism read.
"""
from __future__ import annotations

from fasttrain.methods import (balanced_softmax, ce, crt, fbl, glmc, ldam_drw, logit_adjust,  # noqa: F401
                               lws, maxnorm, ssd_distill, ssd_stage1, tau_norm)  # importing a method file registers it
from fasttrain.methods.base import (METHODS, Method, MethodConfig, MethodContext, Progress, Stage, StageMethod,
                                    StageMethodConfig, StreamSpec, register)

__all__ = ["METHODS", "Method", "MethodConfig", "MethodContext", "Progress", "Stage", "StageMethod",
           "StageMethodConfig", "StreamSpec", "register"]
