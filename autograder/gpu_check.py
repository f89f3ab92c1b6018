"""``make gpu-check``: dlbook on a CUDA GPU, against the CPU, with the time each takes.

Four checks, each on the GPU and on the CPU:

- ``references``: the dlbook references that take tensors (attention, recurrent cells, the tiny
  Transformer, augmentation) computed on the device, compared with PyTorch's own op (or the CPU
  result) in float64, so TF32 and kernel choice cannot hide a wrong device placement.
- ``training``: each chapter's main notebook executed top to bottom in fast mode with
  ``DLBOOK_DEVICE`` set to the device, then to ``cpu``; seconds for both.
- ``autocast``: a forward and backward pass under ``torch.autocast`` with the dtype dlbook picks
  for the device (bfloat16 on Ampere and newer), compared with float32.
- ``ddp``: one DistributedDataParallel step over every GPU present (NCCL), compared with the
  full-batch gradient on one process.

Where torch sees no CUDA device, the check says so and exits 0 without running anything.
``--device cpu`` runs the same checks on the CPU (gloo for DDP): a dry run, which the test suite
uses so that this code runs on every machine, GPU or not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .config import CHAPTERS_DIR, REPO_ROOT

# The notebook of each chapter that trains its main model.
TRAINING_NOTEBOOKS = [
    "01_backprop/2_vectorised_autograd_mlp.ipynb",
    "02_training/3_fashion_mnist_toolbox.ipynb",
    "03_cnn/3_modern_cnn_fashion_mnist.ipynb",
    "04_rnn/2_lstm_gru_language_model.ipynb",
    "05_generative/1_autoencoders_and_vae.ipynb",
    "06_rl/4_dqn.ipynb",
    "07_deploy/1_transfer_and_distillation.ipynb",
    "08_scale/1_where_time_goes.ipynb",
]


def compare(name: str, got: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float = 0.0) -> dict:
    """Return ``{"name", "ok", "max_abs_error", ...}`` comparing ``got`` (any device) with ``expected``."""
    got_cpu, expected_cpu = got.detach().to("cpu", torch.float64), expected.detach().to("cpu", torch.float64)
    if got_cpu.shape != expected_cpu.shape:
        return {"name": name, "ok": False, "error": f"shape {tuple(got_cpu.shape)}, expected "
                                                     f"{tuple(expected_cpu.shape)}"}
    err = float((got_cpu - expected_cpu).abs().max()) if got_cpu.numel() else 0.0
    ok = bool(torch.allclose(got_cpu, expected_cpu, atol=atol, rtol=rtol)) and bool(torch.isfinite(got_cpu).all())
    return {"name": name, "ok": ok, "max_abs_error": err, "atol": atol}


def _timed(fn: Callable[[], object], repeat: int = 5) -> float:
    """Median seconds of ``fn()`` after one warm-up call, synchronising CUDA around each."""
    fn()
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


Case = tuple[str, Callable[[], torch.Tensor], Callable[[], torch.Tensor], float]


def _reference_cases(dev: torch.device) -> list[Case]:
    """``(name, on_device, expected_on_cpu, atol)`` for each tensor-taking dlbook reference."""
    import torch.nn as nn

    from dlbook import attention, augment, rnn

    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    q, k, v = r(4, 2, 16, 32), r(4, 2, 16, 32), r(4, 2, 16, 24)
    mask = torch.ones(16, 16, dtype=torch.bool).tril()

    def sdpa_expected() -> torch.Tensor:
        scores = (q @ k.transpose(-2, -1)) / 32 ** 0.5
        return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v

    x = r(3, 10, 16)
    mha = nn.MultiheadAttention(16, 4, batch_first=True, dtype=torch.float64)
    W_in, b_in = mha.in_proj_weight.detach(), mha.in_proj_bias.detach()
    W_out, b_out = mha.out_proj.weight.detach(), mha.out_proj.bias.detach()
    blocked = ~torch.ones(10, 10, dtype=torch.bool).tril()

    xs, h, c = r(64, 20), r(64, 32), r(64, 32)
    lstm = nn.LSTMCell(20, 32, dtype=torch.float64)
    gru = nn.GRUCell(20, 32, dtype=torch.float64)
    lstm_w = [p.detach() for p in (lstm.weight_ih, lstm.weight_hh, lstm.bias_ih, lstm.bias_hh)]
    gru_w = [p.detach() for p in (gru.weight_ih, gru.weight_hh, gru.bias_ih, gru.bias_hh)]

    torch.manual_seed(0)
    lm = attention.TinyTransformerLM(30, max_len=16, d_model=32, heads=4, layers=2).double().eval()
    lm_device = attention.TinyTransformerLM(30, max_len=16, d_model=32, heads=4, layers=2).double().eval()
    lm_device.load_state_dict(lm.state_dict())
    lm_device.to(dev)
    ids = torch.randint(0, 30, (8, 16), generator=g)

    images = torch.rand(16, 1, 28, 28, generator=g, dtype=torch.float64)

    def to(*ts: torch.Tensor) -> list[torch.Tensor]:
        return [t.to(dev) for t in ts]

    def rotate(on: torch.device) -> torch.Tensor:
        return augment.random_rotation(images.to(on), 15.0, torch.Generator().manual_seed(3))

    return [
        ("attention.scaled_dot_product_attention",
         lambda: attention.scaled_dot_product_attention(*to(q, k, v, mask))[0], sdpa_expected, 1e-9),
        ("attention.multi_head_attention (causal)",
         lambda: attention.multi_head_attention(*to(x, W_in, b_in, W_out, b_out), 4, causal=True),
         lambda: mha(x, x, x, attn_mask=blocked, need_weights=False)[0].detach(), 1e-9),
        ("rnn.lstm_cell", lambda: rnn.lstm_cell(*to(xs, h, c, *lstm_w))[0],
         lambda: lstm(xs, (h, c))[0].detach(), 1e-9),
        ("rnn.gru_cell", lambda: rnn.gru_cell(*to(xs, h, *gru_w)), lambda: gru(xs, h).detach(), 1e-9),
        ("attention.TinyTransformerLM", lambda: lm_device(ids.to(dev)), lambda: lm(ids).detach(), 1e-9),
        ("augment.random_rotation", lambda: rotate(dev), lambda: rotate(torch.device("cpu")), 1e-9),
    ]


def check_references(dev: torch.device) -> list[dict]:
    results = []
    for name, on_device, expected, atol in _reference_cases(dev):
        try:
            with torch.no_grad():
                got, want = on_device(), expected()
            row = compare(name, got, want, atol)
            if got.device.type != dev.type:
                row.update(ok=False, error=f"computed on {got.device}, expected {dev}")
            with torch.no_grad():
                row["device_seconds"] = _timed(on_device)
                row["cpu_seconds"] = _timed(expected)
        except Exception as err:  # noqa: BLE001 - one failing reference is reported, the others still run
            row = {"name": name, "ok": False, "error": f"{type(err).__name__}: {err}"}
        results.append(row)
    return results


def check_autocast(dev: torch.device) -> dict:
    """Forward and backward of a small MLP in float32 and under autocast; the losses must agree to 2 %."""
    import torch.nn as nn

    from dlbook.mixed_precision import autocast_dtype

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.LayerNorm(512), nn.Linear(512, 10)).to(dev)
    x = torch.randn(512, 256, device=dev)
    y = torch.randint(0, 10, (512,), device=dev)
    dtype = autocast_dtype(dev)

    def step(low: bool) -> tuple[float, torch.dtype, float]:
        model.zero_grad()
        with torch.autocast(dev.type, dtype=dtype, enabled=low):
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        norm = float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm())
        return float(loss.detach()), logits.dtype, norm

    full, full_dtype, full_norm = step(False)
    low, low_dtype, low_norm = step(True)
    rel = abs(low - full) / abs(full)
    grad_rel = abs(low_norm - full_norm) / full_norm
    ok = low_dtype == dtype and full_dtype == torch.float32 and rel < 0.02 and grad_rel < 0.05
    return {"name": f"autocast {str(dtype).replace('torch.', '')}", "ok": ok, "loss_fp32": full, "loss_autocast": low,
            "relative_difference": rel, "logits_dtype": str(low_dtype),
            "device_seconds": _timed(lambda: step(True)), "fp32_seconds": _timed(lambda: step(False))}


def _ddp_rank(rank: int, world: int, port: int, device_type: str, out: str) -> None:
    """One rank of the DDP check: a shard of a fixed batch, one backward, the averaged gradient saved."""
    import torch.distributed as dist
    import torch.nn as nn
    from torch.nn.parallel import DistributedDataParallel

    backend = "nccl" if device_type == "cuda" else "gloo"
    dev = torch.device(f"cuda:{rank}") if device_type == "cuda" else torch.device("cpu")
    if device_type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        x, y, state = torch.load(Path(out) / "batch.pt")
        model = nn.Linear(x.shape[1], 1).double()
        model.load_state_dict(state)
        model.to(dev)
        ddp = DistributedDataParallel(model, device_ids=[rank] if device_type == "cuda" else None)
        shard = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
        loss = nn.functional.mse_loss(ddp(x[shard].to(dev)), y[shard].to(dev))
        start = time.perf_counter()
        loss.backward()
        if device_type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        grads = [p.grad.detach().cpu() for p in model.parameters()]
        torch.save({"grads": grads, "seconds": seconds}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def check_ddp(dev: torch.device) -> dict:
    """One DDP step over every GPU (NCCL), or 2 CPU processes (gloo); gradients equal the full batch's."""
    import torch.multiprocessing as mp
    import torch.nn as nn

    from dlbook.distributed import free_port

    world = torch.cuda.device_count() if dev.type == "cuda" else 2
    backend = "nccl" if dev.type == "cuda" else "gloo"
    torch.manual_seed(0)
    x, y = torch.randn(64 * world, 32, dtype=torch.float64), torch.randn(64 * world, 1, dtype=torch.float64)
    model = nn.Linear(32, 1).double()
    nn.functional.mse_loss(model(x), y).backward()
    expected = [p.grad.detach().clone() for p in model.parameters()]
    with tempfile.TemporaryDirectory(prefix="dlbook-gpu-check-") as tmp:
        torch.save((x, y, model.state_dict()), Path(tmp) / "batch.pt")
        for attempt in range(3):  # another process may take the free port before rank 0 binds it
            try:
                mp.start_processes(_ddp_rank, args=(world, free_port(), dev.type, tmp), nprocs=world, join=True,
                                   start_method="spawn")
                break
            except Exception as err:  # noqa: BLE001 - reported as a failed check
                if attempt == 2:
                    return {"name": f"ddp {backend} x{world}", "ok": False, "error": f"{type(err).__name__}: {err}"}
        ranks = [torch.load(Path(tmp) / f"rank{r}.pt") for r in range(world)]
    errors = [float((g - e).abs().max()) for rank in ranks for g, e in zip(rank["grads"], expected, strict=True)]
    return {"name": f"ddp {backend} x{world}", "ok": max(errors) < 1e-9, "max_abs_error": max(errors),
            "world_size": world, "backward_seconds": max(r["seconds"] for r in ranks)}


def check_training(dev: torch.device, notebooks: list[str]) -> list[dict]:
    """Execute each notebook in fast mode on ``dev`` and on the CPU; seconds for both."""
    from .bench import execute_notebook

    rows = []
    saved = os.environ.get("DLBOOK_DEVICE")
    try:
        for rel in notebooks:
            row: dict = {"name": rel, "ok": True}
            for label, name in (("device_seconds", str(dev)), ("cpu_seconds", "cpu")):
                os.environ["DLBOOK_DEVICE"] = name
                try:
                    seconds = execute_notebook(CHAPTERS_DIR / rel, fast=True).seconds
                    row[label] = seconds
                except Exception as err:  # noqa: BLE001 - one failing notebook is reported, the others still run
                    row.update(ok=False, error=f"on {name}: {type(err).__name__}: {str(err)[-500:]}")
                    break
            rows.append(row)
    finally:
        if saved is None:
            os.environ.pop("DLBOOK_DEVICE", None)
        else:
            os.environ["DLBOOK_DEVICE"] = saved
    return rows


def run_checks(dev: torch.device, notebooks: list[str] | None = None) -> dict:
    """Run every check on ``dev``; return ``{"device", "ok", "checks": {section: rows}}``."""
    from dlbook.devices import describe

    notebooks = TRAINING_NOTEBOOKS if notebooks is None else notebooks
    checks = {"references": check_references(dev), "autocast": [check_autocast(dev)], "ddp": [check_ddp(dev)],
              "training": check_training(dev, notebooks)}
    ok = all(row["ok"] for rows in checks.values() for row in rows)
    return {"device": describe(dev), "torch": torch.__version__, "ok": ok, "checks": checks}


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-"


def render(result: dict) -> str:
    lines = [f"gpu-check on {result['device']} (torch {result['torch']})",
             f"{'check':<54} {'ok':<4} {'device s':>10} {'cpu s':>10}  detail"]
    for section, rows in result["checks"].items():
        for row in rows:
            dev_s = row.get("device_seconds", row.get("backward_seconds"))
            cpu_s = row.get("cpu_seconds", row.get("fp32_seconds"))
            detail = row.get("error") or (f"max error {row['max_abs_error']:.2e}" if "max_abs_error" in row else
                                          f"loss differs by {row['relative_difference']:.1e} (relative)"
                                          if "relative_difference" in row else "")
            lines.append(f"{section + ': ' + row['name']:<54} {'yes' if row['ok'] else 'NO':<4} "
                         f"{_fmt(dev_s):>10} {_fmt(cpu_s):>10}  {detail}")
    lines.append("all checks passed" if result["ok"] else "SOME CHECKS FAILED")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a dry run")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "gpu_check.json")
    parser.add_argument("--no-training", action="store_true", help="skip executing the chapters' notebooks")
    args = parser.parse_args(argv)
    dev = torch.device(args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if dev.type == "cuda" and not torch.cuda.is_available():
        reason = (f"no CUDA device here (torch {torch.__version__}, built with CUDA {torch.version.cuda}, "
                  f"torch.cuda.is_available() is False)")
        print(f"gpu-check skipped: {reason}. Run `make gpu-check` on a machine with an NVIDIA GPU, "
              f"or `python -m autograder gpu-check --device cpu` for a dry run of the same checks.")
        args.out.write_text(json.dumps({"skipped": reason}, indent=2))
        return 0
    if dev.type not in ("cuda", "cpu"):
        print(f"error: --device must be cuda, cuda:N or cpu, got {args.device!r}", file=sys.stderr)
        return 2
    result = run_checks(dev, [] if args.no_training else None)
    print(render(result))
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written to {args.out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
