"""The one kernel dispatch rule (fasttrain.kernels.dispatch), case by case: the CPU, CUDA with and
without Triton (a device object is all the rule reads, so no GPU is needed), the interpreter."""
from __future__ import annotations

import warnings

import pytest
import torch

from fasttrain.kernels import dispatch
from fasttrain.kernels.mix import function as mix_function
from fasttrain.kernels.soft_ce import function as soft_ce_function

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.fixture
def triton_installed(monkeypatch):
    """Set whether Triton counts as importable; the once-per-kernel warning memory starts empty."""
    dispatch._warn_reference_on_cuda.cache_clear()

    def set_installed(flag: bool) -> None:
        monkeypatch.setattr(dispatch, "triton_available", lambda: flag)
    yield set_installed
    dispatch._warn_reference_on_cuda.cache_clear()


def test_both_kernels_dispatch_through_the_one_helper():
    assert mix_function.use_triton is dispatch.use_triton
    assert soft_ce_function.use_triton is dispatch.use_triton
    assert mix_function.IMPLS == soft_ce_function.IMPLS == dispatch.IMPLS


@pytest.mark.parametrize("installed", [True, False])
def test_cpu_tensors_run_the_reference_unless_triton_is_forced(triton_installed, monkeypatch, installed):
    triton_installed(installed)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning on the CPU
        assert dispatch.use_triton("auto", CPU, "k") is False
        assert dispatch.use_triton("torch", CPU, "k") is False


def test_cuda_with_triton_runs_the_kernel(triton_installed):
    triton_installed(True)
    assert dispatch.use_triton("auto", CUDA, "k") is True
    assert dispatch.use_triton("triton", CUDA, "k") is True
    assert dispatch.use_triton("torch", CUDA, "k") is False


def test_cuda_without_triton_falls_back_to_the_reference_with_one_warning(triton_installed):
    triton_installed(False)
    with pytest.warns(RuntimeWarning, match="Triton is not installed") as caught:
        assert dispatch.use_triton("auto", CUDA, "soft_target_cross_entropy") is False
        assert dispatch.use_triton("auto", CUDA, "soft_target_cross_entropy") is False
    assert len(caught) == 1 and "soft_target_cross_entropy" in str(caught[0].message)
    with pytest.raises(ImportError, match="pip install triton"):  # asked for explicitly: an error
        dispatch.use_triton("triton", CUDA, "k")


@pytest.mark.parametrize("value, on", [("1", True), ("true", True), ("0", False), ("", False)])
def test_the_interpreter_runs_forced_kernels_on_cpu_only(triton_installed, monkeypatch, value, on):
    triton_installed(True)
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert dispatch.interpreting() is on
    assert dispatch.use_triton("auto", CPU, "k") is False  # never chosen by auto: a test tool
    if on:
        assert dispatch.use_triton("triton", CPU, "k") is True
    else:
        with pytest.raises(RuntimeError, match="CUDA"):
            dispatch.use_triton("triton", CPU, "k")


def test_an_unknown_impl_names_the_kernel_and_the_choices():
    with pytest.raises(ValueError, match=r"mix kernel: impl must be one of \('auto', 'triton', 'torch'\)"):
        dispatch.use_triton("cuda", CPU, "mix kernel")
