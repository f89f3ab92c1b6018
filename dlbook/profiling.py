"""Where the time of a training step goes: timing each phase (data, forward, backward, optimizer)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F

PHASES = ("data", "forward", "backward", "optimizer")


def synchronize(device: torch.device | str) -> None:
    """Wait until ``device`` has finished its queued work (GPUs run asynchronously; CPU is a no-op)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class PhaseTimer:
    """Accumulates wall time per named phase; ``with timer("forward"): ...`` adds one measurement.

    >>> timer = PhaseTimer()
    >>> with timer("forward"):
    ...     pass
    >>> sorted(timer.mean())
    ['forward']
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.totals: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        synchronize(self.device)
        start = time.perf_counter()
        yield
        synchronize(self.device)
        self.totals[phase] = self.totals.get(phase, 0.0) + time.perf_counter() - start
        self.counts[phase] = self.counts.get(phase, 0) + 1

    def mean(self) -> dict[str, float]:
        """Return the mean seconds per measurement of each phase, in first-seen order."""
        return {k: self.totals[k] / self.counts[k] for k in self.totals}


def time_training_step(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    warmup: int = 2,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Return the mean seconds of each phase of a training step: ``{"data", "forward", "backward", "optimizer"}``.

    Runs ``warmup`` untimed steps then ``steps`` timed ones, drawing ``(x, y)`` batches from
    ``batches`` (cycled when it runs out). "data" is fetching a batch and moving it to ``device``,
    "forward" includes the loss (under ``torch.autocast`` when ``autocast_dtype`` is given),
    "optimizer" is ``step`` plus ``zero_grad``. The device is synchronised around every phase, so
    asynchronous GPU work is charged to the phase that queued it.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"expected steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    device = torch.device(device)
    model.to(device).train()

    def cycle() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            empty = True
            for batch in batches:
                empty = False
                yield batch
            if empty:
                raise ValueError("time_training_step got no batches")

    source = cycle()
    timer = PhaseTimer(device)
    for i in range(warmup + steps):
        if i == warmup:
            timer = PhaseTimer(device)
        with timer("data"):
            x, y = next(source)
            x, y = x.to(device), y.to(device)
        with timer("forward"):
            ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
            with ctx:
                loss = loss_fn(model(x), y)
        with timer("backward"):
            loss.backward()
        with timer("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return {phase: timer.mean()[phase] for phase in PHASES}
