"""`make gpu-check`: skips cleanly without CUDA; its checks run (and can fail) on the CPU as a dry run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from autograder import gpu_check
from autograder.config import REPO_ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: gpu-check runs for real")
def test_gpu_check_skips_with_a_clear_message_without_cuda(tmp_path) -> None:
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "-m", "autograder", "gpu-check", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gpu-check skipped: no CUDA device here" in proc.stdout
    assert "--device cpu" in proc.stdout, "the message says how to run the dry run"
    assert "is_available() is False" in json.loads(out.read_text())["skipped"]


def test_gpu_check_dry_run_on_the_cpu_passes_every_check(tmp_path) -> None:
    result = gpu_check.run_checks(torch.device("cpu"), notebooks=[])
    names = [row["name"] for rows in result["checks"].values() for row in rows]
    failed = [row for rows in result["checks"].values() for row in rows if not row["ok"]]
    assert not failed, failed
    assert "attention.scaled_dot_product_attention" in names and "rnn.lstm_cell" in names
    assert result["checks"]["ddp"][0]["world_size"] == 2
    assert result["checks"]["autocast"][0]["logits_dtype"] == "torch.bfloat16"
    assert "all checks passed" in gpu_check.render(result)


@pytest.mark.slow
def test_gpu_check_executes_a_notebook_on_the_device_and_on_the_cpu() -> None:
    rows = gpu_check.check_training(torch.device("cpu"), ["01_backprop/1_derivatives_and_scalar_autograd.ipynb"])
    assert rows[0]["ok"], rows
    assert rows[0]["device_seconds"] > 0 and rows[0]["cpu_seconds"] > 0


def test_compare_fails_on_a_wrong_value_a_wrong_shape_and_nan() -> None:
    a = torch.ones(3, dtype=torch.float64)
    assert gpu_check.compare("same", a, a.clone(), atol=1e-9)["ok"]
    assert not gpu_check.compare("off", a + 1e-6, a, atol=1e-9)["ok"]
    assert not gpu_check.compare("shape", a, torch.ones(4), atol=1e-9)["ok"]
    assert not gpu_check.compare("nan", torch.full((3,), float("nan")), a, atol=1e9)["ok"]


def test_a_wrong_device_is_refused() -> None:
    proc = subprocess.run([sys.executable, "-m", "autograder", "gpu-check", "--device", "mps"],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 2 and "--device must be cuda" in proc.stderr
