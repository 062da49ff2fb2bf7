import pytest
import torch

from fasttrain.models import Classifier, count_parameters, create_backbone, to_channels_last
from fasttrain.schema import ConfigError


def test_resnet32_parameter_counts():
    std = Classifier(create_backbone("resnet32"), 10)
    wide = create_backbone("resnet32_w4")
    assert 0.45e6 < count_parameters(std) < 0.48e6  # ≈0.46 M
    assert 7.3e6 < count_parameters(wide) < 7.45e6  # backbone ≈7.38 M (hand-computed, GLMC's ResNet_cifar)
    assert wide.feature_dim == 256 and std.backbone.feature_dim == 64


def test_cifar_forward_channels_last():
    m = to_channels_last(Classifier(create_backbone("resnet32"), 100))
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    assert m(x).shape == (2, 100)
    assert m.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("arch,params", [("resnet50", 23.5e6), ("resnext50_32x4d", 22.98e6)])
def test_imagenet_backbones(arch, params):
    b = create_backbone(arch)
    assert b.feature_dim == 2048
    assert abs(count_parameters(b) - params) / params < 0.01


def test_resnet10_is_the_oltr_layout():
    """OLTR / decoupling ResNet-10: 7x7 stem + one BasicBlock per stage, 512-d, ≈4.9 M parameters."""
    b = create_backbone("resnet10")
    assert b.feature_dim == 512 and count_parameters(b) == 4_905_792
    assert [len(getattr(b.net, f"layer{i}")) for i in range(1, 5)] == [1, 1, 1, 1]


def test_unknown_arch():
    with pytest.raises(ConfigError, match=r"model.arch: unknown architecture 'resnet33'; did you mean 'resnet32'"):
        create_backbone("resnet33")
