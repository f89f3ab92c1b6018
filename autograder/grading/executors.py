"""Where submissions are graded: a local process pool, or the workers of a Dask distributed scheduler.

Both run the same function on a :class:`.task.GradeTask` and yield ``(student, GradedSubmission)`` or
``(student, exception)`` as each submission finishes, whatever the order.

Dask (``dask://HOST:PORT``): one task per submission, ``pure=False``, keyed by the batch and the student
(so two batches, even of one chapter, never share a result). When a worker dies, the scheduler runs its
tasks again on another worker; a task whose workers died more than ``distributed.scheduler.allowed-failures``
times ends in ``KilledWorker``, which the batch reports as ``crashed``. The client receives one result per
key, however many times a task ran, and the batch counts results by student: each submission once.

Local pools are kept warm between batches of one process (:class:`_WarmPools`): a worker imports torch, the
grader and dlbook and starts its kernel zygote once, about 8 s of CPU, then grades batch after batch as it
grades submission after submission within one. A worker holds nothing of a submission between tasks (each
task carries its references and submission; each notebook gets a new judge and a new kernel), so a batch
graded by a warm worker is graded as by a new one. A pool is reused only with the same worker count, memory
limit, environment, working directory and ``sys.path`` as when it started (what a spawned worker inherits),
only after a batch that ran to the end, and never after a worker died.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

from .task import GradedSubmission, GradeTask

Outcome = tuple[str, GradedSubmission | BaseException]


def dask_address(executor: str) -> str | None:
    """The scheduler address of ``dask://HOST:PORT`` (as ``tcp://HOST:PORT``); None for ``local``."""
    if executor == "local":
        return None
    if not executor.startswith("dask://") or not executor[len("dask://"):]:
        raise ValueError(f"expected --executor local or dask://HOST:PORT, got {executor!r}")
    return "tcp://" + executor[len("dask://"):]


def _limit_worker(memory_bytes: int) -> None:
    """Cap a grading worker's memory: what a learner's kernel sends it is bounded, and so is the worker."""
    import resource

    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def _grade_local(grade_fn: Callable[[GradeTask], GradedSubmission], task: GradeTask) -> GradedSubmission:
    graded = grade_fn(task)
    graded.report["worker"] = f"local {socket.gethostname()} pid {os.getpid()}"
    return graded


def _grade_on_dask_worker(grade_fn: Callable[[GradeTask], GradedSubmission], task: GradeTask) -> GradedSubmission:
    from distributed import get_worker

    graded = grade_fn(task)
    graded.report["worker"] = get_worker().address
    return graded


class _WarmPools:
    """Local worker pools left idle by finished batches, for the next batch of this process (module docstring)."""

    KEEP = 3  # idle pools kept (a worker and its zygote hold about 0.8 GB); the oldest is shut down beyond that

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: list[tuple[tuple, ProcessPoolExecutor]] = []

    @staticmethod
    def key(workers: int, memory_bytes: int) -> tuple:
        return (workers, memory_bytes, os.getcwd(), tuple(sys.path), tuple(sorted(os.environ.items())))

    def warm(self, workers: int, memory_bytes: int) -> bool:
        """Whether the next batch with these settings would get a warm pool (whose zygote may be running)."""
        key = self.key(workers, memory_bytes)
        with self.lock:
            return any(k == key for k, _ in self.idle)

    def take(self, key: tuple) -> ProcessPoolExecutor:
        """An idle pool started with ``key``, or a new one (two batches at once get two pools)."""
        with self.lock:
            for i, (k, pool) in enumerate(self.idle):
                if k == key:
                    del self.idle[i]
                    return pool
        workers, memory_bytes = key[0], key[1]
        return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_limit_worker,
                                   initargs=(memory_bytes,))

    def give_back(self, key: tuple, pool: ProcessPoolExecutor) -> None:
        with self.lock:
            self.idle.append((key, pool))
            surplus, self.idle = self.idle[:-self.KEEP], self.idle[-self.KEEP:]
        for _, old in surplus:
            old.shutdown(wait=True)

    def close(self) -> None:
        """Shut every idle pool down (its workers, and their zygotes with them)."""
        with self.lock:
            idle, self.idle = self.idle, []
        for _, pool in idle:
            pool.shutdown(wait=True)


WARM_POOLS = _WarmPools()


def run_local(grade_fn: Callable[[GradeTask], GradedSubmission], tasks: dict[str, GradeTask], workers: int,
              memory_bytes: int) -> Iterator[Outcome]:
    """Grade ``tasks`` in ``workers`` spawned processes, each capped at ``memory_bytes`` of address space.

    The processes come from the last batch's pool when it matches (:class:`_WarmPools`) and stay for the next.
    """
    key = WARM_POOLS.key(workers, memory_bytes)
    pool = WARM_POOLS.take(key)
    healthy = False
    futures = {pool.submit(_grade_local, grade_fn, task): student for student, task in tasks.items()}
    try:
        broken = False
        for fut in as_completed(futures):
            try:
                yield futures[fut], fut.result()
            except Exception as err:  # noqa: BLE001 - one failure never aborts the batch
                broken = broken or isinstance(err, BrokenProcessPool)
                yield futures[fut], err
        healthy = not broken
    finally:  # stopped early (an error recording a result, Ctrl-C): start nothing more
        for fut in futures:
            fut.cancel()
        if healthy:
            WARM_POOLS.give_back(key, pool)
        else:  # a worker died, or the batch was stopped: this pool is not reused
            pool.shutdown(wait=True)


def run_dask(grade_fn: Callable[[GradeTask], GradedSubmission], tasks: dict[str, GradeTask],
             address: str) -> Iterator[Outcome]:
    """Grade ``tasks`` on the workers of the Dask scheduler at ``address`` (``tcp://HOST:PORT``)."""
    from distributed import Client, as_completed

    batch = secrets.token_hex(4)
    try:
        client = Client(address, timeout=60, set_as_default=False)
    except OSError as err:  # distributed raises OSError (or TimeoutError, one) when no scheduler answers
        raise ConnectionError(f"expected a Dask scheduler at {address}, got: {err}") from err
    with client:
        futures = {client.submit(_grade_on_dask_worker, grade_fn, task, pure=False,
                                 key=f"grade-{task.assignment}-{student}-{batch}"): student
                   for student, task in tasks.items()}
        try:
            for fut in as_completed(futures, loop=client.loop):
                try:
                    yield futures[fut], fut.result()
                except Exception as err:  # noqa: BLE001 - KilledWorker (crashed) or a failure: never aborts
                    yield futures[fut], err
                fut.release()
        finally:
            client.cancel(list(futures))


def worker_argv(scheduler: str, slots: int | None = None, memory_bytes: int = 4 << 30,
                extra: list[str] = ()) -> list[str]:
    """The ``dask worker`` command line of a grading host: ``slots`` processes (default: one per core),
    one thread each (one submission at a time each), each with a memory limit of ``memory_bytes``."""
    address = scheduler[len("dask://"):] if scheduler.startswith("dask://") else scheduler
    return [sys.executable, "-m", "distributed.cli.dask_worker", address,
            "--nworkers", str(slots or os.cpu_count() or 1), "--nthreads", "1",
            "--memory-limit", str(memory_bytes), "--no-dashboard", *extra]


def exec_worker(scheduler: str, slots: int | None = None, memory_bytes: int = 4 << 30,
                worker_memory_bytes: int = 0, extra: list[str] = ()) -> None:
    """Become a Dask grading worker (never returns): see :func:`worker_argv`.

    ``worker_memory_bytes``: RLIMIT_AS of the worker processes, as the local pool's workers have it
    (the learner's kernels set their own, lower one).
    """
    _limit_worker(worker_memory_bytes)
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **os.environ}  # one core per grading slot
    argv = worker_argv(scheduler, slots, memory_bytes, extra)
    os.execve(argv[0], argv, env)


def scheduler_env(allowed_failures: int) -> dict[str, str]:
    """The environment of a grading ``dask scheduler``: ``allowed_failures``, and one task per worker thread.

    Dask's default ``worker-saturation`` (1.1) lets a one-thread worker hold a second task queued behind
    the one it runs. When a submission kills its worker, the scheduler counts every task that worker held
    against its ``allowed-failures``: an innocent submission queued behind a crashing one twice would end
    ``crashed``. With 1.0 a worker holds only the submission it grades; the rest wait at the scheduler.
    """
    if allowed_failures < 0:
        raise ValueError(f"expected allowed-failures >= 0, got {allowed_failures}")
    return {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "1.0",
            "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": str(allowed_failures)}


def scheduler_argv(host: str = "127.0.0.1", port: int = 8786) -> list[str]:
    """The ``dask scheduler`` command line of a grading scheduler (no dashboard)."""
    return [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", host, "--port", str(port),
            "--no-dashboard"]


def exec_scheduler(host: str = "127.0.0.1", port: int = 8786, allowed_failures: int = 2) -> None:
    """Become the grading ``dask scheduler`` (never returns): see :func:`scheduler_env`."""
    argv = scheduler_argv(host, port)
    os.execve(argv[0], argv, scheduler_env(allowed_failures))
