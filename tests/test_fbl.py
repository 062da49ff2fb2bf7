"""FBL (docs: user-guide/methods/fbl.md): stimulus, curriculum, loss and its gradient through ‖f‖,
configs, a short run."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from helpers import method_context

import fasttrain.methods.fbl as FB
from fasttrain.batch import Batch
from fasttrain.config import ConfigError, load_config
from fasttrain.data.cifar import lt_counts
from fasttrain.methods import Progress
from fasttrain.methods.priors import fbl_stimulus

ROOT = Path(__file__).resolve().parent.parent
COUNTS = (500, 100, 20, 5)


def test_curriculum_of_the_code_and_the_switch():
    t = [FB.curriculum(e, 200) for e in (0, 95, 190, 199)]
    assert t[0] == 0.0 and t[1] == 0.25 and t[2] == 1.0
    assert math.isclose(t[3], (199 / 190) ** 2) and t[3] > 1  # > 1 in the last 9 epochs, as the code
    assert FB.curriculum(100, 200, "e_over_E") == 0.25
    assert FB.curriculum(3, 5) == 9.0  # runs of <= 10 epochs: denominator floored at 1


def test_stimulus_for_cifar10_lt_r100_counts():
    counts = torch.tensor(lt_counts(5000, 10, 100))
    assert counts.tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    a = fbl_stimulus(counts)
    assert a.dtype == torch.float32 and a[0] == 0 and math.isclose(a[-1].item(), 1.0, rel_tol=1e-6)
    want = [(math.log(5000) - math.log(n)) / (math.log(5000) - math.log(50)) for n in counts.tolist()]
    torch.testing.assert_close(a, torch.tensor(want, dtype=torch.float32), atol=1e-6, rtol=0)
    raw = fbl_stimulus(counts, normalise=False)  # the paper's unnormalised log ratio
    assert math.isclose(raw[-1].item(), math.log(100), rel_tol=1e-6)


class FeatureModel(nn.Module):
    """A 'model' whose pooled features are a trainable (B, d) tensor (so d loss / d f is f.grad)."""

    def __init__(self, features: torch.Tensor, num_classes: int):
        super().__init__()
        self.f = nn.Parameter(features.clone())
        self.fc = nn.Linear(features.shape[1], num_classes)

    def forward(self, x, with_features: bool = False):
        logits = self.fc(self.f)
        return (logits, self.f) if with_features else logits


def batch_of(labels: torch.Tensor) -> Batch:
    views = [torch.zeros(len(labels), 3, 4, 4, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)]
    return Batch(views=views, labels=labels, stream=torch.zeros_like(labels))


@pytest.mark.parametrize("epoch", [0, 120, 199])
def test_loss_and_feature_gradient_equal_the_float64_formula(epoch):
    torch.manual_seed(0)
    f0 = torch.rand(6, 5) * 2  # post-ReLU: non-negative
    y = torch.tensor([0, 1, 2, 3, 3, 2])
    method = FB.FBL(FB.FBLConfig(stimulus_scale=60.0), method_context(COUNTS))
    model = FeatureModel(f0, len(COUNTS))
    loss, logs = method.loss(model, batch_of(y), Progress(epoch, 200))
    loss.backward()

    f = f0.double().clone().requires_grad_()
    w, b = model.fc.weight.detach().double(), model.fc.bias.detach().double()
    n = torch.tensor(COUNTS, dtype=torch.float64)
    a = (n.log().max() - n.log()) / (n.log().max() - n.log().min())
    t = (epoch / 190) ** 2
    z = f @ w.t() + b - t * 60.0 * a / (f.norm(dim=1, keepdim=True) + 1e-12)
    want = torch.nn.functional.cross_entropy(z, y)
    want.backward()
    torch.testing.assert_close(loss.double(), want.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.f.grad.double(), f.grad, atol=1e-5, rtol=1e-4)
    if epoch:  # the stimulus really reaches the features' gradient through ‖f‖: it is not CE's
        f_ce = f0.double().clone().requires_grad_()
        torch.nn.functional.cross_entropy(f_ce @ w.t() + b - t * 60.0 * a / f.norm(dim=1, keepdim=True).detach(),
                                          y).backward()  # same logits, ‖f‖ treated as a constant
        assert (f_ce.grad - f.grad).abs().max() > 1e-3
    assert math.isclose(logs["feature_norm"].item(), f0.norm(dim=1).mean().item(), rel_tol=1e-6)


def test_stimulus_grows_with_smaller_feature_norm_and_plain_logits_at_test():
    method = FB.FBL(FB.FBLConfig(), method_context(COUNTS))
    y = torch.tensor([3, 3])
    small, large = torch.full((1, 5), 0.1), torch.full((1, 5), 10.0)
    losses = []
    for f in (small, large):
        model = FeatureModel(f, len(COUNTS))
        with torch.no_grad():
            model.fc.weight.zero_()
            model.fc.bias.zero_()
        losses.append(method.loss(model, batch_of(y[:1]), Progress(150, 200))[0].item())
    # all-zero logits: only the stimulus separates classes; it penalises the tail class 3 (a = 1)
    # most, so the tail sample's loss is larger when its feature norm is small
    assert losses[0] > losses[1] > math.log(len(COUNTS))
    model = FeatureModel(small, len(COUNTS))
    torch.testing.assert_close(method.predict(model, None), model.fc(model.f))


def test_mixup_option_mixes_pairs_with_one_lambda():
    torch.manual_seed(0)
    method = FB.FBL(FB.FBLConfig(mixup=True), method_context(COUNTS))
    g = torch.Generator().manual_seed(1)
    views = [torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8, generator=g)
             .contiguous(memory_format=torch.channels_last)]
    batch = Batch(views=views, labels=torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), stream=torch.zeros(8, dtype=torch.long))
    seen = []

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(48, 4)

        def forward(self, x, with_features=False):
            seen.append(x)
            h = torch.relu(x.flatten(1))
            return self.fc(h), h

    state = method.generator.get_state()
    loss, _ = method.loss(Recorder(), batch, Progress(0, 200))
    assert torch.isfinite(loss)
    g2 = torch.Generator().set_state(state)
    perm = torch.randperm(8, generator=g2)
    lam = FB.sample_lambda(1.0, g2)
    norm = method.ctx.augmenter.views(batch)[0]
    torch.testing.assert_close(seen[0], lam * norm + (1 - lam) * norm[perm], atol=1e-5, rtol=0)


def test_config_switches_and_bad_values():
    cfg = load_config(ROOT / "configs" / "fbl" / "cifar10_lt_r100.yaml")
    m = cfg.method
    assert (m.name, m.stimulus_scale, m.curriculum, m.stimulus_norm, m.mixup) == ("fbl", 60.0, "code", "max", False)
    assert (cfg.model.arch, cfg.loader.batch_size, cfg.optim.lr, cfg.optim.weight_decay) == ("resnet32", 64, 0.1, 2e-4)
    assert (cfg.schedule.name, cfg.schedule.milestones, cfg.schedule.gamma, cfg.seed) == ("warmup_multistep", [160, 180], 0.01, 123)
    large = load_config(ROOT / "configs" / "fbl" / "imagenet_lt_r50.yaml")
    assert large.method.stimulus_scale == 150.0 and large.schedule.milestones == [120, 160]
    for bad, key in [("method.curriculum=linear", "curriculum"), ("method.stimulus_scale=-1", "stimulus_scale"),
                     ("method.stimulus_norm=l2", "stimulus_norm")]:
        with pytest.raises(ConfigError, match=key):
            load_config(ROOT / "configs" / "fbl" / "cifar10_lt_r100.yaml", [bad])


def test_short_cpu_run_on_cifar10_lt_lowers_the_loss(cifar10_root, tmp_path):
    from fasttrain.trainer import run_training

    over = [f"data.root={cifar10_root}", f"out_dir={tmp_path}", "device=cpu", "train.stop_after_epochs=3",
            "train.max_steps_per_epoch=12", "train.eval_every=1000", "train.log_every=4"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # subnormals after the first steps slow CPU kernels ~20x
    try:
        run_training(load_config(ROOT / "configs" / "fbl" / "cifar10_lt_r100.yaml", over))
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
    epochs = [json.loads(line) for line in (tmp_path / "fbl_cifar10_lt_r100" / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 3 and all(math.isfinite(e["loss"]) for e in epochs)
    assert epochs[-1]["loss"] < epochs[0]["loss"], [e["loss"] for e in epochs]
