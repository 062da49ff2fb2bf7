"""The torch (reference) backend: images independent of the worker count; warnings scoped.

The batch contract, sampler fidelity, resume, sharding are in test_loader_conformance.py.
"""
import importlib.util
import warnings

import torch
from helpers import jpeg_corpus, lt_arrays, make_sampler

from fasttrain.config import AugmentConfig, LoaderConfig
from fasttrain.loaders import build_loader
from fasttrain.loaders import torch_backend


def make(ds, samplers, workers=0, batch=16, views=2, drop_last=False, train=True, seed=0, augment=None):
    return build_loader("torch", ds, samplers, batch_size=batch, num_views=views, device="cpu",
                        augment=augment or AugmentConfig(train="cifar"),
                        loader=LoaderConfig(num_workers=workers, drop_last=drop_last), train=train, seed=seed)


def test_augmentation_independent_of_workers_and_reproducible():
    ds = lt_arrays()

    def first(workers, seed=0, epoch=0):
        loader = make(ds, [make_sampler(ds, "instance", seed=3)], workers=workers, seed=seed)
        loader.set_epoch(epoch)
        return next(iter(loader)).views[0]

    a = first(0)
    assert torch.equal(a, first(2))  # same images whatever the worker count
    assert not torch.equal(a, first(0, epoch=1))
    assert not torch.equal(a, first(0, seed=1))


def test_importing_the_backend_installs_no_warning_filter():
    # Executes the module's code under a throwaway name, so the real module is left as it is.
    spec = importlib.util.spec_from_file_location("_torch_backend_probe", torch_backend.__file__)
    module = importlib.util.module_from_spec(spec)
    before = list(warnings.filters)
    spec.loader.exec_module(module)
    assert warnings.filters == before


def test_file_decoding_is_quiet_even_when_deprecations_are_errors(tmp_path):
    """torchvision's codec deprecation notice is muted around the decode calls themselves."""
    ds = jpeg_corpus(tmp_path)
    loader = make(ds, None, batch=8, views=1, train=False,
                  augment=AugmentConfig(train="imagenet", crop_size=64, eval_resize=73))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        batches = list(loader)
    assert sum(b.size for b in batches) == len(ds)


def test_policies_are_torchvisions_with_their_keys_last_in_each_view():
    from torchvision.transforms import v2

    ra = torch_backend.build_transform(AugmentConfig(train="imagenet", policy="randaugment", policy_num_ops=3,
                                                     policy_magnitude=5, policy_magnitude_bins=11), True, True)
    op = ra.transforms[-1]
    assert isinstance(op, v2.RandAugment) and (op.num_ops, op.magnitude, op.num_magnitude_bins) == (3, 5, 11)
    assert isinstance(ra.transforms[0], v2.RandomResizedCrop)  # the policy comes after the crop / flip
    ta = torch_backend.build_transform(AugmentConfig(policy="trivialaugment"), True, False).transforms[-1]
    assert isinstance(ta, v2.TrivialAugmentWide) and ta.num_magnitude_bins == 31
    aa = torch_backend.build_transform(AugmentConfig(policy="autoaugment", autoaugment_policy="cifar10"),
                                       True, False).transforms[-1]
    assert isinstance(aa, v2.AutoAugment) and aa.policy == v2.AutoAugmentPolicy.CIFAR10
    assert torch_backend.build_transform(AugmentConfig(train="none", policy="autoaugment"), False, False) is None
    none = torch_backend.build_transform(AugmentConfig(train="cifar"), True, False)
    assert not any(isinstance(t, (v2.RandAugment, v2.TrivialAugmentWide, v2.AutoAugment)) for t in none.transforms)


def test_policy_draws_are_a_pure_function_of_seed_epoch_and_slot():
    """RandAugment's draws run under the per-sample seed: the same images with or without workers,
    and a resumed epoch (state_dict) continues with exactly the uninterrupted run's images."""
    ds = lt_arrays()
    aug = AugmentConfig(train="cifar", policy="randaugment")

    def loader(workers=0):
        ld = make(ds, [make_sampler(ds, "instance", seed=3)], workers=workers, augment=aug, seed=2)
        ld.set_epoch(1)
        return ld

    full = [b.views[0] for b in loader()]
    assert torch.equal(full[0], next(iter(loader(workers=2))).views[0])
    run = loader()
    it = iter(run)
    next(it), next(it)
    state = run.state_dict()
    it.close()
    resumed = loader()
    resumed.load_state_dict(state)
    rest = [b.views[0] for b in resumed]
    assert len(rest) == len(full) - 2 and all(torch.equal(a, b) for a, b in zip(rest, full[2:]))
