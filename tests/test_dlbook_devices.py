"""dlbook.devices (dlbook.device()): CUDA, then MPS, then CPU; DLBOOK_DEVICE overrides and never falls back silently.

Availability is monkeypatched, so these tests mean the same on a laptop and on a GPU machine.
"""

from __future__ import annotations

import pytest
import torch

import dlbook
from dlbook import devices as device_mod


@pytest.fixture
def no_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(device_mod, "_mps_available", lambda: False)


def test_default_is_cpu_without_accelerators(monkeypatch, no_accelerators):
    monkeypatch.delenv("DLBOOK_DEVICE", raising=False)
    assert dlbook.device() == torch.device("cpu")


def test_default_prefers_cuda_then_mps(monkeypatch, no_accelerators):
    monkeypatch.delenv("DLBOOK_DEVICE", raising=False)
    monkeypatch.setattr(device_mod, "_mps_available", lambda: True)
    assert device_mod.device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_mod.device() == torch.device("cuda")


@pytest.mark.parametrize("value", ["cpu", " cpu "])
def test_cpu_override(monkeypatch, value):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("DLBOOK_DEVICE", value)
    assert device_mod.device() == torch.device("cpu")


def test_empty_override_is_ignored(monkeypatch, no_accelerators):
    monkeypatch.setenv("DLBOOK_DEVICE", "  ")
    assert device_mod.device() == torch.device("cpu")


@pytest.mark.parametrize(
    ("value", "message"),
    [("cuda", "CUDA is not available"), ("cuda:1", "CUDA is not available"),
     ("mps", "MPS is not available")],
)
def test_unavailable_override_raises(monkeypatch, no_accelerators, value, message):
    monkeypatch.setenv("DLBOOK_DEVICE", value)
    with pytest.raises(RuntimeError, match=f"DLBOOK_DEVICE='{value}'.*{message}"):
        device_mod.device()


def test_cuda_index_beyond_device_count_raises(monkeypatch, no_accelerators):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("DLBOOK_DEVICE", "cuda:0")
    assert device_mod.device() == torch.device("cuda:0")
    monkeypatch.setenv("DLBOOK_DEVICE", "cuda:3")
    with pytest.raises(RuntimeError, match="only 1 CUDA device"):
        device_mod.device()


@pytest.mark.parametrize("value", ["gpu", "CPU", "cuda:x", "cuda:-1"])
def test_bad_name_raises_value_error(monkeypatch, value):
    monkeypatch.setenv("DLBOOK_DEVICE", value)
    with pytest.raises(ValueError, match="expected cpu, cuda, cuda:N or mps"):
        device_mod.device()


@pytest.mark.parametrize("value", ["meta", "xpu"])
def test_override_outside_cpu_cuda_mps_raises(monkeypatch, no_accelerators, value):
    monkeypatch.setenv("DLBOOK_DEVICE", value)
    with pytest.raises((ValueError, RuntimeError)):
        device_mod.device()


def test_describe_cpu(monkeypatch):
    monkeypatch.setenv("DLBOOK_DEVICE", "cpu")
    assert device_mod.describe().startswith("cpu (")
    assert device_mod.describe(torch.device("mps")) == "mps (Apple GPU)"


def test_the_package_function_and_the_module_do_not_shadow_each_other() -> None:
    assert dlbook.device is device_mod.device, "dlbook.device() should be dlbook.devices.device"
    assert dlbook.devices.describe is device_mod.describe
