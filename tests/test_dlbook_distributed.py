"""dlbook.distributed: references against torch.distributed run in real gloo process groups.

Launching a group costs a few seconds (each rank imports torch), so each test launches few groups
and checks many cases inside one.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st

from dlbook import distributed as D

SCRIPT = Path(__file__).resolve().parent.parent / "chapters" / "08_scale" / "ddp_train.py"


# ----------------------------------------------------------------------------- shard_indices


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), world=st.integers(1, 6), shuffle=st.booleans(), seed=st.integers(0, 5),
       epoch=st.integers(0, 3))
def test_shards_cover_the_data_evenly(n, world, shuffle, seed, epoch):
    shards = [D.shard_indices(n, r, world, shuffle=shuffle, seed=seed, epoch=epoch) for r in range(world)]
    assert all(len(s) == math.ceil(n / world) for s in shards)
    flat = [i for s in shards for i in s]
    assert set(flat) == set(range(n)), "every index is read by some rank"
    assert len(flat) - len(set(flat)) == math.ceil(n / world) * world - n, "only the padding repeats"


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), world=st.integers(1, 6), seed=st.integers(0, 5))
def test_shards_with_drop_last_are_disjoint(n, world, seed):
    if n < world:
        with pytest.raises(ValueError, match="drop_last"):
            D.shard_indices(n, 0, world, drop_last=True)
        return
    shards = [D.shard_indices(n, r, world, shuffle=True, seed=seed, drop_last=True) for r in range(world)]
    flat = [i for s in shards for i in s]
    assert all(len(s) == n // world for s in shards)
    assert len(set(flat)) == len(flat) == (n // world) * world


def test_shards_interleave_one_permutation():
    perm = D.shard_indices(10, 0, 1, shuffle=True, seed=3, epoch=1)
    assert sorted(perm) == list(range(10)) and perm != list(range(10))
    assert D.shard_indices(10, 1, 2, shuffle=True, seed=3, epoch=1) == perm[1::2]
    assert D.shard_indices(10, 0, 2, shuffle=True, seed=3, epoch=2) != perm[0::2], "set_epoch reshuffles"
    assert D.shard_indices(5, 2, 3) == [2, 0]  # padded by wrapping around


@pytest.mark.parametrize("bad", [dict(n=0, rank=0, world_size=1), dict(n=5, rank=2, world_size=2),
                                 dict(n=5, rank=-1, world_size=2), dict(n=5, rank=0, world_size=0)])
def test_shard_indices_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        D.shard_indices(**bad)


# ----------------------------------------------------------------------------- scale_lr_for_batch


def test_scale_lr_for_batch():
    assert D.scale_lr_for_batch(0.1, 256, 1024) == pytest.approx(0.4)
    assert D.scale_lr_for_batch(0.1, 256, 64) == pytest.approx(0.025)
    assert D.scale_lr_for_batch(1e-3, 32, 128, rule="sqrt") == pytest.approx(2e-3)
    assert D.scale_lr_for_batch(0.3, 7, 7) == pytest.approx(0.3)
    for bad in [dict(base_lr=0.0, base_batch=1, batch=1), dict(base_lr=0.1, base_batch=0, batch=1),
                dict(base_lr=0.1, base_batch=2, batch=2.0), dict(base_lr=0.1, base_batch=2, batch=2, rule="x")]:
        with pytest.raises(ValueError):
            D.scale_lr_for_batch(**bad)


def test_ring_allreduce_seconds_model():
    assert D.ring_allreduce_seconds(1e6, 1, 1e9) == 0.0
    assert D.ring_allreduce_seconds(1e6, 2, 1e9) == pytest.approx(2 * 1e6 / (2 * 1e9))
    # the bandwidth term tends to 2 n / B: the per-rank traffic does not grow with the ring
    assert D.ring_allreduce_seconds(1e6, 1000, 1e9) == pytest.approx(2 * 1e6 / 1e9, rel=1e-2)
    assert D.ring_allreduce_seconds(0, 4, 1e9, latency=1e-5) == pytest.approx(6e-5)
    with pytest.raises(ValueError):
        D.ring_allreduce_seconds(1.0, 2, 0.0)


# ----------------------------------------------------------------------------- launch + collectives


def _collectives(rank, world_size, shapes):
    """Per rank: all_reduce_sum of seeded tensors, and average_gradients of a small model."""
    sums = []
    for i, shape in enumerate(shapes):
        t = torch.randn(shape, generator=torch.Generator().manual_seed(100 * i + rank))
        sums.append(D.all_reduce_sum(t).clone())
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)  # a frozen parameter keeps grad None
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(rank))
    model(x).pow(2).sum().backward()
    D.average_gradients(model)
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    return rank, world_size, dist.get_rank(), sums, grads


def _local_grads(rank):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(rank))
    model(x).pow(2).sum().backward()
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("world_size", [2, 3])
def test_references_in_a_real_gloo_group(world_size, capfd):
    shapes = [(7,), (2, 3), (1,), (4, 1, 2)]
    results = D.launch(_collectives, world_size, (shapes,), timeout=60)
    assert [r[:3] for r in results] == [(r, world_size, r) for r in range(world_size)]
    for i, shape in enumerate(shapes):
        expected = sum(torch.randn(shape, generator=torch.Generator().manual_seed(100 * i + r))
                       for r in range(world_size))
        for r in range(world_size):
            torch.testing.assert_close(results[r][3][i], expected, rtol=1e-5, atol=1e-6)
    local = [_local_grads(r) for r in range(world_size)]
    for j in range(len(results[0][4])):
        if local[0][j] is None:
            assert all(res[4][j] is None for res in results)
            continue
        mean = sum(g[j] for g in local) / world_size
        for res in results:
            torch.testing.assert_close(res[4][j], mean, rtol=1e-5, atol=1e-6)
    captured = capfd.readouterr()
    assert captured.err == "", "worker output must never reach the caller's stderr"


def _misbehave(rank, world_size, mode):
    if mode == "raise" and rank == 1:
        raise ValueError("rank one is unhappy")
    if mode == "forbidden":
        dist.all_reduce(torch.ones(1))
    if mode in ("raise", "hang") and rank == 0:
        dist.recv(torch.zeros(1), src=1)  # nobody sends: hangs until killed or the peer dies
    if mode == "sleep" and rank == 1:
        time.sleep(600)
    if mode == "hang" and rank == 1:
        time.sleep(8)  # alive but silent: rank 0's recv times out inside gloo
    print(f"rank {rank} says hello")
    return rank


def test_launch_reports_errors_hangs_and_forbidden_calls(capfd):
    with pytest.raises(D.WorkerError, match="rank 1 of 2 failed.*ValueError: rank one is unhappy"):
        D.launch(_misbehave, 2, ("raise",), timeout=30)
    with pytest.raises(D.WorkerError, match="Timed out waiting 2000ms for recv"):
        D.launch(_misbehave, 2, ("hang",), timeout=2)
    start = time.monotonic()
    with pytest.raises(D.WorkerError, match=r"did not finish within 12 s; ranks \[(0, )?1\] were still running"):
        D.launch(_misbehave, 2, ("sleep",), timeout=2, grace=10)
    assert time.monotonic() - start < 30
    with pytest.raises(D.WorkerError, match="ForbiddenCall: ex: your code called torch.distributed.all_reduce"):
        D.launch(_misbehave, 2, ("forbidden",), forbid=[("torch.distributed", "all_reduce")], exercise="ex")
    assert D.launch(_misbehave, 1, ("ok",), echo=True) == [0]
    captured = capfd.readouterr()
    assert "[rank 0] rank 0 says hello" in captured.out
    assert captured.err == ""


def _whoami(rank, world_size):
    import os
    import random

    import numpy as np

    print(f"rank {rank} writes to its own log")
    if rank == 1:
        os.kill(os.getpid(), 0)  # a live process of its own
    return {"pid": os.getpid(), "rank_env": os.environ["RANK"], "world_env": os.environ["WORLD_SIZE"],
            "np": float(np.random.random()), "py": random.random(), "torch": float(torch.rand(1)),
            "threads": torch.get_num_threads()}


@pytest.mark.parametrize("fork", [True, False], ids=["forked-from-one-launcher", "fresh-process-each"])
def test_each_rank_is_its_own_process_with_its_own_rank_seeds_and_output(fork, monkeypatch, capfd):
    """Forked ranks (Linux) are what fresh processes were: own pid, RANK, output, torch/NumPy/Python seeds."""
    if fork and not D.FORK_RANKS:
        pytest.skip("ranks are forked on Linux only")
    monkeypatch.setattr(D, "FORK_RANKS", fork)
    got = D.launch(_whoami, 3, echo=True)
    assert [g["rank_env"] for g in got] == ["0", "1", "2"] and {g["world_env"] for g in got} == {"3"}
    assert len({g["pid"] for g in got}) == 3
    assert len({g["np"] for g in got}) == 3 and len({g["py"] for g in got}) == 3, got
    assert len({g["torch"] for g in got}) == 3, got  # a new process's torch seed is its own too
    assert {g["threads"] for g in got} == {1}
    out = capfd.readouterr().out
    for rank in range(3):
        assert f"[rank {rank}] rank {rank} writes to its own log" in out
        assert out.count(f"] rank {rank} writes") == 1


def test_a_launcher_that_cannot_start_is_reported(monkeypatch):
    """The launcher's own failure (here: no torch to import) is the error, not a silent hang."""
    if not D.FORK_RANKS:
        pytest.skip("ranks are forked on Linux only")
    monkeypatch.setattr(D, "WARM_LAUNCHER", False)  # a new Python as the launcher, which cannot start
    monkeypatch.setenv("PYTHONPATH", "/nonexistent")
    monkeypatch.setattr(D.sys, "executable", "/bin/false")
    with pytest.raises(D.WorkerError, match="rank 0 of 2 failed"):
        D.launch(_misbehave, 2, ("ok",), timeout=5, grace=5)


def test_a_launcher_from_the_warm_server_that_fails_is_reported(monkeypatch, tmp_path):
    """A group launcher forked by the warm server that cannot start its ranks: the error shows its log."""
    if not D.WARM_LAUNCHER:
        pytest.skip("no warm launcher here (Linux with pidfds only)")
    # the launcher cannot enter the working directory the caller reports
    monkeypatch.setattr(D.os, "getcwd", lambda: str(tmp_path / "gone"))
    with pytest.raises(D.WorkerError, match=r"(?s)rank 0 of 2 failed.*FileNotFoundError"):
        D.launch(_misbehave, 2, ("ok",), timeout=5, grace=5)


def test_the_warm_server_serves_each_launch_and_is_restarted_when_gone():
    """One warm server per process forks every launch's launcher; a server that died is replaced."""
    if not D.WARM_LAUNCHER:
        pytest.skip("no warm launcher here (Linux with pidfds only)")
    first = D.launch(_whoami, 2)
    server = D._SERVER
    assert server is not None and server.alive()
    second = D.launch(_whoami, 2)
    assert D._SERVER is server, "expected the same warm server for the next launch"
    pids = {g["pid"] for g in first + second}
    assert len(pids) == 4 and server.proc.pid not in pids  # every rank is its own fork, never the server
    assert len({g["torch"] for g in first + second}) == 4, "expected fresh seeds for every rank of every launch"
    server.proc.kill()
    server.proc.wait()
    assert [g["rank_env"] for g in D.launch(_whoami, 2)] == ["0", "1"]
    assert D._SERVER is not server and D._SERVER.alive()


def test_launch_rejects_bad_arguments():
    with pytest.raises(ValueError):
        D.launch(_misbehave, 0)
    with pytest.raises(ValueError):
        D.launch(_misbehave, 2, timeout=0)


def test_references_need_a_process_group():
    with pytest.raises(RuntimeError, match="process group"):
        D.all_reduce_sum(torch.ones(2))
    with pytest.raises(RuntimeError, match="process group"):
        D.average_gradients(torch.nn.Linear(2, 2))


def test_torchrun_command():
    cmd = D.torchrun_command("train.py", 4, ["--steps", 3], port=29501)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=4",
                       "--master-addr=127.0.0.1", "--master-port=29501", "train.py", "--steps", "3"]
    with pytest.raises(ValueError):
        D.torchrun_command("train.py", 0)


# ----------------------------------------------------------------------------- the chapter's script


@pytest.mark.slow
def test_ddp_script_two_workers_equal_one_worker_with_twice_the_batch(tmp_path):
    """The chapter's claim: DDP with 2 processes x batch B == 1 process x batch 2B, step for step."""
    runs = {}
    for nproc, batch in [(1, 16), (2, 8)]:
        out, params = tmp_path / f"run{nproc}.json", tmp_path / f"params{nproc}.pt"
        log = D.run_torchrun(SCRIPT, nproc, ["--batch-size", batch, "--steps", 6, "--hidden", 32,
                                             "--out", out, "--save-params", params], timeout=240)
        assert f"world_size={nproc}" in log
        runs[nproc] = (json.loads(out.read_text()), torch.load(params))
    (s1, p1), (s2, p2) = runs[1], runs[2]
    assert s1["global_batch"] == s2["global_batch"] == 16 and s2["world_size"] == 2
    assert s1["samples_per_second"] > 0 and s2["samples_per_second"] > 0
    assert s1["losses"] == pytest.approx(s2["losses"], rel=1e-5, abs=1e-6)
    for name in p1:
        torch.testing.assert_close(p2[name], p1[name], rtol=1e-5, atol=1e-6)


def test_run_torchrun_reports_a_failing_script(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text("import sys\nprint('about to fail')\nsys.exit(3)\n")
    with pytest.raises(D.WorkerError, match="(?s)failed.*about to fail"):
        D.run_torchrun(script, 1, timeout=120)


def _hold_memory(rank, world_size, mb):
    import numpy as np

    block = np.ones(mb << 20, dtype=np.uint8)  # touched, so resident
    return int(block.sum() >> 20)


def test_ranks_peak_memory_reaches_the_caller():
    """``ranks_peak_rss_mb`` sees a rank's memory (the bench's memory check), forked by the warm launcher or not."""
    assert D.launch(_hold_memory, 2, (300,)) == [300, 300]
    assert D.ranks_peak_rss_mb() >= 300, D.ranks_peak_rss_mb()
