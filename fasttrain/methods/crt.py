"""cRT — classifier re-training (Kang et al., "Decoupling Representation and Classifier for
Long-Tailed Recognition", ICLR 2020).

Second stage on a trained model: the classifier `head` is re-initialised (PyTorch's Linear init,
`reinit: true`) and trained alone with class-balanced sampling (class-aware, 4 samples per drawn
class, as the decoupling code's ClassAwareSampler) and plain CE, on the frozen backbone. The
optimiser recipe (decoupling ImageNet-LT: SGD lr 0.2 for B 512, cosine, 10 epochs) lives in the
config. Runs after CE / FBL / GLMC first stages (`stages:` or `model.init_from`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from fasttrain.methods.base import register
from fasttrain.methods.retrain import HeadRetrainConfig, HeadRetraining


@dataclass
class CRTConfig(HeadRetrainConfig):
    sampler: str = "class_aware"
    class_aware_k: int = 4
    reinit: bool = True  # re-initialise the head before re-training (false: fine-tune it)


@register("crt", CRTConfig)
class CRT(HeadRetraining):
    applies_label_smoothing = True

    def prepare(self, model: nn.Module) -> None:
        head = self.head_of(model)
        if self.cfg.reinit:
            head.reset_parameters()
        self.freeze_all_but(model, [p for p in (head.weight, head.bias) if p is not None])
