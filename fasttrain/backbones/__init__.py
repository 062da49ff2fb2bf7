"""Backbone implementations, one module per family, and what fasttrain does to a backbone.

- `base`: the `Backbone` interface every backbone implements (feature_dim, trunk, feature map);
- `cifar`: the project's CIFAR ResNets; `torchvision_family` / `timm_family`: library models
  by name, without their classifier, optionally with the library's own pretrained weights;
  `open_clip_family`: CLIP image towers of open_clip (optional extra `clip`);
- `weights`: pretrained weight files (.pth / .pt / .safetensors) with a strict key report;
- `freeze`: freezing the trunk (or a prefix of it) and the frozen part's BatchNorm mode;
- `blocks`: extra trainable blocks on the trunk's feature map (the Places-LT protocol's).

The one list of backbone names and families is `fasttrain.models.BACKBONES`.
"""
