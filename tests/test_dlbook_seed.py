"""dlbook.seed: the same seed gives the same numbers from Python, NumPy and PyTorch."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from dlbook import seed_everything


@pytest.fixture(autouse=True)
def restore_global_state(monkeypatch):
    """seed_everything changes process-wide state; put it back for the other tests."""
    py_state, np_state = random.getstate(), np.random.get_state()
    torch_state = torch.get_rng_state()
    det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    bench, cudnn_det = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.delenv("TORCHINDUCTOR_DETERMINISTIC", raising=False)
    yield
    random.setstate(py_state)
    np.random.set_state(np_state)
    torch.set_rng_state(torch_state)
    torch.use_deterministic_algorithms(det, warn_only=warn_only)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = bench, cudnn_det


def _draw():
    return random.random(), np.random.rand(3), torch.randn(3)


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**40])
def test_same_seed_same_numbers(seed):
    rng1 = seed_everything(seed)
    first = _draw(), rng1.standard_normal(3)
    rng2 = seed_everything(seed)
    second = _draw(), rng2.standard_normal(3)
    (p1, n1, t1), g1 = first
    (p2, n2, t2), g2 = second
    assert p1 == p2
    np.testing.assert_array_equal(n1, n2)
    assert torch.equal(t1, t2)
    np.testing.assert_array_equal(g1, g2)
    np.testing.assert_array_equal(g1, np.random.default_rng(seed).standard_normal(3))


def test_different_seeds_different_numbers():
    seed_everything(0)
    a = _draw()
    seed_everything(1)
    b = _draw()
    assert a[0] != b[0]
    assert not np.array_equal(a[1], b[1])
    assert not torch.equal(a[2], b[2])


def test_deterministic_flags():
    seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


_FRESH_PROCESS = """
import sys, torch
{before}
from dlbook import seed_everything
seed_everything(0)
loaded_by_seed = "torch._inductor.config" in sys.modules
import torch._inductor.config as inductor_config
print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
      inductor_config.deterministic, loaded_by_seed)
"""


@pytest.mark.parametrize("inductor_first", [False, True], ids=["inductor-later", "inductor-loaded"])
def test_deterministic_flags_match_torchs_own_call_in_a_fresh_process(inductor_first):
    """The flags torch.use_deterministic_algorithms(True, warn_only=True) sets, Inductor's included, whether
    Inductor is imported after seeding or was already loaded; and seeding does not import it (1.6 s)."""
    before = "import torch._inductor.config" if inductor_first else ""
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_DETERMINISTIC"}
    out = subprocess.run([sys.executable, "-c", _FRESH_PROCESS.format(before=before)], capture_output=True,
                         text=True, check=True, env=env).stdout.split()
    assert out == ["True", "True", "True", str(inductor_first)], out


@pytest.mark.parametrize("seed", [-1, 1.5, "0", None, True, np.float64(3.0)])
def test_bad_seed_raises(seed):
    with pytest.raises(ValueError, match="non-negative int"):
        seed_everything(seed)
