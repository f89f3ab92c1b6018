"""Pipeline parallelism: a model cut into stages on different processes, fed with micro-batches.

A *schedule* is, for each stage, the order of its operations ``("forward", m)`` and
``("backward", m)`` on micro-batches ``m``. :func:`gpipe_order` is GPipe's (all forwards, then all
backwards), :func:`one_f_one_b_order` the 1F1B schedule (PipeDream-Flush) that starts each
backward as early as possible. :func:`timetable` turns any feasible order into clock ticks: with
every operation taking one tick, a stage runs its next operation as soon as what it needs is done
(the forward of micro-batch ``m`` on the previous stage, the backward of ``m`` on the next stage).
The empty slots of the timetable are the pipeline *bubble*.

:func:`run_stage` executes one stage's order in a ``torch.distributed`` process group (one rank per
stage, activations and their gradients sent with ``dist.isend``/``dist.recv``) and records when
each operation ran.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

FORWARD, BACKWARD = "forward", "backward"
Op = tuple[str, int]  # ("forward" | "backward", micro-batch)
Step = tuple[int, str, int]  # (stage, "forward" | "backward", micro-batch)


def _check_sizes(n_stages: int, n_micro: int) -> None:
    for name, value in (("n_stages", n_stages), ("n_micro", n_micro)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def gpipe_order(n_stages: int, n_micro: int) -> list[list[Op]]:
    """Return GPipe's order for each stage: forwards of micro-batches 0..M-1, then their backwards 0..M-1."""
    _check_sizes(n_stages, n_micro)
    ops = [(FORWARD, m) for m in range(n_micro)] + [(BACKWARD, m) for m in range(n_micro)]
    return [list(ops) for _ in range(n_stages)]


def one_f_one_b_order(n_stages: int, n_micro: int) -> list[list[Op]]:
    """Return the 1F1B order for each stage: warm-up forwards, then one forward, one backward, ...

    Stage ``s`` runs ``w = min(S - 1 - s, M)`` forwards, then alternates forward ``w + i`` and
    backward ``i``, then the last ``w`` backwards: at most ``S - s`` micro-batches are in flight.
    """
    _check_sizes(n_stages, n_micro)
    orders = []
    for stage in range(n_stages):
        warmup = min(n_stages - 1 - stage, n_micro)
        ops = [(FORWARD, m) for m in range(warmup)]
        for i in range(n_micro - warmup):
            ops += [(FORWARD, warmup + i), (BACKWARD, i)]
        ops += [(BACKWARD, m) for m in range(n_micro - warmup, n_micro)]
        orders.append(ops)
    return orders


def _validate_orders(orders: Sequence[Sequence[Op]]) -> None:
    if not isinstance(orders, Sequence) or not orders:
        raise ValueError(f"expected one list of operations per stage, got {orders!r}")
    expected = None
    for stage, ops in enumerate(orders):
        for op in ops:
            if not (isinstance(op, tuple) and len(op) == 2 and op[0] in (FORWARD, BACKWARD) and isinstance(op[1], int)):
                raise ValueError(f"stage {stage}: expected operations ('forward' | 'backward', micro-batch), "
                                 f"got {op!r}")
        micro = sorted(m for kind, m in ops if kind == FORWARD)
        if sorted(m for kind, m in ops if kind == BACKWARD) != micro or len(set(micro)) != len(micro):
            raise ValueError(f"stage {stage}: every micro-batch needs exactly one forward and one backward, "
                             f"got {list(ops)}")
        if expected is None:
            expected = micro
        elif micro != expected:
            raise ValueError(f"stage {stage} runs micro-batches {micro}, stage 0 runs {expected}: "
                             "all stages need the same")


def timetable(orders: Sequence[Sequence[Op]]) -> list[list[Step]]:
    """Return, for each clock tick, the ``(stage, op, micro_batch)`` steps that run in it, sorted by stage.

    Every operation takes one tick and a stage runs its operations in the given order, each as
    soon as its inputs exist: ``forward m`` on stage ``s`` needs ``forward m`` done on stage
    ``s - 1``; ``backward m`` needs ``forward m`` done on the same stage and ``backward m`` done on
    stage ``s + 1``. Raises ValueError when an order can never finish (it waits on itself).
    """
    _validate_orders(orders)
    n_stages = len(orders)
    done: dict[Step, int] = {}  # step -> the tick it ran in
    position = [0] * n_stages
    table: list[list[Step]] = []
    total = sum(len(ops) for ops in orders)
    while len(done) < total:
        tick = len(table)
        running = []
        for stage, ops in enumerate(orders):
            if position[stage] == len(ops):
                continue
            kind, m = ops[position[stage]]
            needs = [(stage - 1, FORWARD, m)] if kind == FORWARD and stage > 0 else []
            if kind == BACKWARD:
                needs.append((stage, FORWARD, m))
                if stage < n_stages - 1:
                    needs.append((stage + 1, BACKWARD, m))
            if all(done.get(need, tick) < tick for need in needs):
                running.append((stage, kind, m))
        if not running:
            stuck = {s: ops[position[s]] for s, ops in enumerate(orders) if position[s] < len(ops)}
            raise ValueError(f"the order cannot finish: at tick {tick} every stage waits ({stuck})")
        for step in running:
            done[step] = tick
            position[step[0]] += 1
        table.append(running)
    return table


def bubble_fraction(table: Sequence[Sequence[Step]], n_stages: int) -> float:
    """Return the fraction of (stage, tick) slots in ``table`` in which a stage is idle."""
    if not table:
        raise ValueError("expected a non-empty timetable")
    busy = sum(len(steps) for steps in table)
    return 1.0 - busy / (n_stages * len(table))


def peak_in_flight(orders: Sequence[Sequence[Op]]) -> list[int]:
    """Return, per stage, the most micro-batches whose forward ran and whose backward has not.

    Each of them keeps its activations on that stage: this is the schedule's activation memory.
    """
    _validate_orders(orders)
    peaks = []
    for ops in orders:
        alive = peak = 0
        for kind, _ in ops:
            alive += 1 if kind == FORWARD else -1
            peak = max(peak, alive)
        peaks.append(peak)
    return peaks


def _stage_rank(inputs: Sequence[torch.Tensor] | None, targets: Sequence[torch.Tensor] | None) -> tuple[int, int]:
    """Return ``(rank, world_size)`` after checking that this stage got the data it needs."""
    if not dist.is_initialized():
        raise RuntimeError("run_stage needs a process group: call dist.init_process_group first")
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0 and inputs is None:
        raise ValueError("stage 0 needs the micro-batches' inputs")
    if rank == world - 1 and targets is None:
        raise ValueError("the last stage needs the micro-batches' targets")
    return rank, world


def _received(shape: Sequence[int], src: int) -> torch.Tensor:
    """Return a float32 tensor of ``shape`` filled by the message from rank ``src``."""
    buffer = torch.empty(tuple(shape))
    dist.recv(buffer, src=src)
    return buffer


def run_stage(
    stage: torch.nn.Module,
    order: Sequence[Op],
    inputs: Sequence[torch.Tensor] | None,
    targets: Sequence[torch.Tensor] | None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    boundary_shapes: Sequence[Sequence[int]],
) -> dict[str, Any]:
    """Run this rank's stage of a pipeline through ``order``; return its loss and timeline.

    Rank ``r`` of the default process group is stage ``r``. Stage 0 reads micro-batch ``m`` from
    ``inputs[m]``; every other stage receives it from stage ``r - 1`` into a buffer of shape
    ``boundary_shapes[m]`` (the activations between two stages, float32). The last stage computes
    ``loss_fn(output, targets[m])`` weighted by ``n_m / N`` (micro-batch size over the total), so
    the accumulated ``.grad`` of every stage's parameters is the gradient of the mean loss over all
    ``N`` examples. Backward sends the gradient of the stage's input to stage ``r - 1``.

    Returns ``{"loss": the mean loss over all examples (last stage, else None), "timeline":
    [(op, m, start, end), ...]}`` with ``time.perf_counter()`` times (one clock for all processes
    on a machine), ``start`` taken after the operation's message arrived, ``end`` before its result is sent.
    """
    rank, world = _stage_rank(inputs, targets)
    first, last = rank == 0, rank == world - 1
    sizes = [int(shape[0]) for shape in boundary_shapes]
    total = sum(sizes)
    stage_inputs: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}
    timeline, loss_sum = [], 0.0
    # Sends do not wait for their receiver: under 1F1B two neighbours may send to each other at the
    # same tick (a forward one way, a backward the other), and two blocking sends would deadlock.
    pending: list[Any] = []
    for kind, m in order:
        if kind == FORWARD:
            x = inputs[m] if first else _received(boundary_shapes[m], src=rank - 1).requires_grad_(True)
            start = time.perf_counter()
            out = stage(x)
            if last:
                out = loss_fn(out, targets[m]) * (sizes[m] / total)
                loss_sum += out.item()
            timeline.append((kind, m, start, time.perf_counter()))
            if not last:
                pending.append(dist.isend(out.detach().contiguous(), dst=rank + 1))
            stage_inputs[m], outputs[m] = x, out
        else:
            grad = None if last else _received(boundary_shapes[m], src=rank + 1)  # the last stage starts at its loss
            start = time.perf_counter()
            outputs.pop(m).backward(grad)
            timeline.append((kind, m, start, time.perf_counter()))
            x = stage_inputs.pop(m)
            if not first:
                pending.append(dist.isend(x.grad.contiguous(), dst=rank - 1))
    for request in pending:
        request.wait()
    return {"loss": loss_sum if last else None, "timeline": timeline}
