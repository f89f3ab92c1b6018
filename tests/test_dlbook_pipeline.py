"""dlbook.pipeline: schedules against their closed forms, and a real gloo pipeline against torch.autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dlbook import distributed
from dlbook import pipeline as P


@settings(max_examples=60, deadline=None)
@given(stages=st.integers(1, 6), micro=st.integers(1, 9))
def test_gpipe_timetable_has_the_closed_form(stages, micro):
    table = P.timetable(P.gpipe_order(stages, micro))
    assert len(table) == 2 * (micro + stages - 1)
    when = {step: t for t, steps in enumerate(table) for step in steps}
    for s in range(stages):
        for m in range(micro):
            assert when[(s, "forward", m)] == s + m
            assert when[(s, "backward", m)] == micro + stages - 1 + (stages - 1 - s) + m
    assert all(steps == sorted(steps) for steps in table)
    assert P.bubble_fraction(table, stages) == pytest.approx((stages - 1) / (micro + stages - 1))


@settings(max_examples=60, deadline=None)
@given(stages=st.integers(1, 6), micro=st.integers(1, 9))
def test_one_f_one_b_is_as_fast_and_keeps_fewer_micro_batches(stages, micro):
    gpipe, ofob = P.gpipe_order(stages, micro), P.one_f_one_b_order(stages, micro)
    assert len(P.timetable(ofob)) == len(P.timetable(gpipe))
    assert P.peak_in_flight(gpipe) == [micro] * stages
    assert P.peak_in_flight(ofob) == [min(stages - s, micro) for s in range(stages)]


def test_two_stages_two_micro_batches_by_hand():
    assert P.timetable(P.gpipe_order(2, 2)) == [
        [(0, "forward", 0)], [(0, "forward", 1), (1, "forward", 0)], [(1, "forward", 1)],
        [(1, "backward", 0)], [(0, "backward", 0), (1, "backward", 1)], [(0, "backward", 1)]]


def test_orders_that_cannot_run_are_refused():
    with pytest.raises(ValueError, match="cannot finish"):
        P.timetable([[("backward", 0), ("forward", 0)]])
    with pytest.raises(ValueError, match="exactly one forward and one backward"):
        P.timetable([[("forward", 0)]])
    with pytest.raises(ValueError, match="all stages need the same"):
        P.timetable([[("forward", 0), ("backward", 0)], [("forward", 1), ("backward", 1)]])
    with pytest.raises(ValueError, match="n_micro must be a positive int, got 0"):
        P.gpipe_order(2, 0)


def _stages(n_stages: int, width: int) -> list[nn.Module]:
    torch.manual_seed(0)
    layers = [nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(n_stages - 1)] + [nn.Linear(width, 3)]
    return layers


def _data(width: int):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(10, width, generator=gen), torch.randint(0, 3, (10,), generator=gen)


def _pipeline_worker(rank, world_size, width, size, schedule):
    stage = _stages(world_size, width)[rank]
    x, y = _data(width)
    xs, ys = torch.split(x, size), torch.split(y, size)
    order = (P.gpipe_order if schedule == "gpipe" else P.one_f_one_b_order)(world_size, len(xs))[rank]
    result = P.run_stage(stage, order, xs if rank == 0 else None, ys if rank == world_size - 1 else None,
                         F.cross_entropy, [(len(xb), width) for xb in xs])
    return result, [p.grad.clone() for p in stage.parameters()]


@pytest.mark.parametrize("world, schedule", [(2, "gpipe"), (3, "1f1b")])
def test_a_real_pipeline_gives_the_full_batch_gradient(world, schedule):
    width, size = 6, 4  # micro-batches of 4, 4, 2
    results = distributed.launch(_pipeline_worker, world, (width, size, schedule), timeout=60)
    stages = _stages(world, width)
    x, y = _data(width)
    loss = F.cross_entropy(nn.Sequential(*stages)(x), y)
    loss.backward()
    assert results[-1][0]["loss"] == pytest.approx(loss.item(), rel=1e-5)
    for rank, (result, grads) in enumerate(results):
        for got, p in zip(grads, stages[rank].parameters(), strict=True):
            torch.testing.assert_close(got, p.grad, atol=1e-6, rtol=1e-5)
        ops = [(kind, m) for kind, m, *_ in result["timeline"]]
        assert ops == (P.gpipe_order if schedule == "gpipe" else P.one_f_one_b_order)(world, 3)[rank]
        assert all(start <= end for *_, start, end in result["timeline"])


def test_run_stage_needs_a_process_group():
    with pytest.raises(RuntimeError, match="process group"):
        P.run_stage(nn.Linear(2, 2), [], None, None, F.mse_loss, [])
