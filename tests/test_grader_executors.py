"""The local executor keeps its worker pool warm between batches, and only when that is safe."""

from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import pytest

from autograder.grading import executors


@dataclass
class _Graded:
    report: dict = field(default_factory=dict)


def _pid(task: str) -> _Graded:
    if task == "die":
        os._exit(1)  # the worker dies, as one hit by a hostile submission might
    return _Graded({"pid": os.getpid(), "task": task, "env": os.environ.get("DLBOOK_TEST_MARK", "")})


def _batch(tasks: list[str], workers: int = 1) -> dict[str, object]:
    return {student: (out.report if isinstance(out, _Graded) else out)
            for student, out in executors.run_local(_pid, {t: t for t in tasks}, workers, 0)}


@pytest.fixture
def pools():
    executors.WARM_POOLS.close()
    yield executors.WARM_POOLS
    executors.WARM_POOLS.close()


def test_the_next_batch_is_graded_by_the_same_warm_workers(pools) -> None:
    assert not pools.warm(1, 0)
    first = _batch(["a", "b"])
    assert pools.warm(1, 0) and not pools.warm(2, 0) and not pools.warm(1, 1 << 30)  # grade() then uses the zygote
    second = _batch(["c"])
    assert {r["pid"] for r in first.values()} == {second["c"]["pid"]} != {os.getpid()}
    assert first["a"]["worker"].startswith("local ") and second["c"]["task"] == "c"


def test_another_environment_gets_new_workers_that_see_it(pools, monkeypatch) -> None:
    before = _batch(["a"])["a"]
    monkeypatch.setenv("DLBOOK_TEST_MARK", "changed")
    after = _batch(["b"])["b"]
    assert after["pid"] != before["pid"] and after["env"] == "changed"
    assert _batch(["c"])["c"]["pid"] == after["pid"]
    assert _batch(["d"], workers=2)["d"]["pid"] not in {before["pid"], after["pid"]}  # another worker count


def test_a_pool_whose_worker_died_is_not_used_again(pools) -> None:
    warm = _batch(["a"])["a"]["pid"]
    out = _batch(["die"])
    assert isinstance(out["die"], BrokenProcessPool)
    assert pools.idle == []
    fresh = _batch(["b"])["b"]["pid"]
    assert fresh != warm
    with pytest.raises(ProcessLookupError):
        os.kill(warm, 0)


def test_a_batch_stopped_early_does_not_leave_its_pool_for_the_next(pools) -> None:
    outcomes = executors.run_local(_pid, {"a": "a", "b": "b"}, 1, 0)
    next(outcomes)
    outcomes.close()  # the caller stopped (an error recording a result, Ctrl-C)
    assert pools.idle == []


def test_at_most_keep_idle_pools_stay(pools) -> None:
    sizes = list(range(1, pools.KEEP + 2))
    for workers in sizes:
        _batch(["a"], workers=workers)
    assert [k[0] for k, _ in pools.idle] == sizes[1:]  # the oldest was shut down
