"""Data-parallel training on torch.distributed: launching process groups, sharding, all-reduce.

A notebook (or a test) cannot become several processes, so :func:`launch` starts ``world_size``
processes, each of which joins one gloo process group on 127.0.0.1 and calls the same function
``fn(rank, world_size, *args)``; the return values come back as a list indexed by rank. On Linux one
launcher process with torch imported forks the ranks (importing torch takes about 1.5 s of CPU, more
than most of the chapter's launches run); each rank is still its own process with its own memory,
environment (``RANK``...) and output. The launcher is itself forked from a warm server that the calling
process starts at its first launch and keeps (:class:`_WarmServer`), or is a new Python where that
cannot run. Elsewhere each rank is a fresh Python process.
The function travels by value (cloudpickle), so a function defined in a notebook cell works. Worker
output is captured (never printed to the caller's stderr), a hung collective is killed after
``timeout`` seconds, and a failing rank stops the others at once.

:func:`run_torchrun` launches a *script* the way one does on a cluster, with ``torchrun``.

The references here call torch.distributed's own collectives (``dist.all_reduce``) and samplers
(``DistributedSampler``); the chapter rebuilds them from point-to-point messages.
"""

from __future__ import annotations

import atexit
import importlib
import math
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .check import forbidden

try:  # ships functions defined in a notebook (``__main__``) by value; a gymnasium dependency
    import cloudpickle as _pickler
except ImportError:  # pragma: no cover - then only module-level functions can be launched
    _pickler = pickle

LOCALHOST = "127.0.0.1"

# The collectives a from-scratch all-reduce must not call (hidden tests make them raise).
COLLECTIVES = (
    "all_reduce", "reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "reduce_scatter",
    "reduce_scatter_tensor", "broadcast", "gather", "scatter", "all_to_all", "all_to_all_single",
)


class WorkerError(RuntimeError):
    """A launched rank raised, crashed or hung; the message carries its error and output tail."""


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _loopback_interface() -> str | None:
    if sys.platform.startswith("linux"):
        return "lo"
    if sys.platform == "darwin":
        return "lo0"
    return None


def worker_env(rank: int, world_size: int, port: int, threads: int = 1) -> dict[str, str]:
    """Return the environment for one local rank: torch.distributed's ``env://`` variables and threads.

    ``MASTER_ADDR=127.0.0.1`` and the loopback interface for gloo, so nothing leaves the machine;
    ``OMP_NUM_THREADS=threads`` so that N processes on N cores do not fight over them.
    """
    env = dict(os.environ)
    env.update({
        "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": LOCALHOST, "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
    })
    iface = _loopback_interface()
    if iface and "GLOO_SOCKET_IFNAME" not in os.environ:
        env["GLOO_SOCKET_IFNAME"] = iface
    cwd = os.getcwd()
    env["PYTHONPATH"] = os.pathsep.join([cwd, env["PYTHONPATH"]]) if env.get("PYTHONPATH") else cwd
    env.pop("MPLBACKEND", None)
    env["MPLBACKEND"] = "Agg"
    return env


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, AttributeError):
            proc.kill()
    proc.wait()


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.strip().splitlines()[-lines:])


def launch(
    fn: Callable[..., Any],
    world_size: int = 2,
    args: Sequence[Any] = (),
    *,
    timeout: float = 60.0,
    forbid: Sequence[tuple[str, str]] = (),
    exercise: str = "",
    threads: int = 1,
    echo: bool = False,
    grace: float = 60.0,
) -> list[Any]:
    """Return ``[fn(0, world_size, *args), ..., fn(world_size - 1, world_size, *args)]`` run in a gloo group.

    Each rank is a process of its own (see the module docstring) that has already called
    ``dist.init_process_group("gloo")``; ``fn`` and ``args`` travel by value, so ``fn`` may be defined in a
    notebook. ``forbid`` lists
    ``("module", "attribute")`` pairs (e.g. ``("torch.distributed", "all_reduce")``) that raise
    inside the workers while ``fn`` runs. ``echo=True`` prints each rank's stdout afterwards.

    Raises :class:`WorkerError` naming the rank and its error when a rank fails (a collective or a
    ``recv`` that waits more than ``timeout`` seconds fails inside gloo), and when the group has not
    finished ``timeout + grace`` seconds after the start (``grace`` covers process start-up);
    every process is killed first.
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if timeout <= 0 or grace < 0:
        raise ValueError(f"expected timeout > 0 and grace >= 0, got timeout={timeout}, grace={grace}")
    payload = _pickler.dumps((fn, tuple(args), tuple(forbid), exercise, timeout))
    for attempt in range(3):
        try:
            return _launch_once(payload, world_size, timeout + grace, threads, echo)
        except WorkerError as err:  # another process took the port between free_port() and bind
            if attempt == 2 or "address already in use" not in str(err).lower():
                raise
    raise AssertionError("unreachable")


FORK_RANKS = sys.platform.startswith("linux")  # macOS: forking after importing torch is not safe there


class _ForkedRank:
    """One rank forked by the group launcher: ``poll()``/``returncode`` like a :class:`subprocess.Popen`.

    The launcher writes ``rank<r>.exit`` when the rank ends; a rank without one whose launcher is gone was
    killed with it (code -9).
    """

    def __init__(self, launcher: subprocess.Popen, tmp_path: Path, rank: int) -> None:
        self.launcher, self.exit_file = launcher, tmp_path / f"rank{rank}.exit"
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self.returncode = int(self.exit_file.read_text())
            except (OSError, ValueError):
                if self.launcher.poll() is not None and not self.exit_file.exists():
                    self.returncode = -signal.SIGKILL
        return self.returncode


def _rank_argv(tmp_path: Path, rank: int) -> list[str]:
    """The command line of one rank started as a new Python process (:func:`_worker_main`)."""
    return [sys.executable, "-m", "dlbook.distributed", str(tmp_path / "payload.pkl"),
            str(tmp_path / f"result{rank}.pkl")]


def _start_launcher(world_size: int, tmp_path: Path, env: dict[str, str]):
    """Start the group launcher of one launch: forked from this process's warm server, else a new Python."""
    server = _warm_server()
    if server is not None:
        try:
            return server.start_group(world_size, tmp_path, env)
        except (OSError, ValueError, RuntimeError):
            pass  # the server is gone: this launch starts its launcher the ordinary way
    with (tmp_path / "launcher.log").open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "dlbook.distributed", "--group", str(world_size), str(tmp_path)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


class _GroupProcess:
    """A group launcher forked by the warm server, followed through a pidfd (never a recycled pid).

    What :func:`_kill` and :class:`_ForkedRank` need of a ``Popen``. The server reaps its launchers, so the
    exit status is not passed on: ``returncode`` is 0 once the launcher has ended (each rank's own code is
    in its ``rank<r>.exit`` file).
    """

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid, self.pidfd = pid, pidfd
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.wait(0)

    def wait(self, timeout: float | None = None) -> int | None:
        import select

        if self.returncode is None:
            if not select.select([self.pidfd], [], [], timeout)[0]:
                return None
            self.returncode = 0
            os.close(self.pidfd)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)


class _WarmServer:
    """A Python that imported torch once and forks each launch's group launcher (Linux, pidfds).

    Started on the first :func:`launch` of a process and kept for the next ones: importing torch is about
    1.5 s of CPU, more than most launches run. It never unpickles or runs the caller's function (the ranks
    do, in their own forks), so every launch starts from the same state as a new process would. It ends
    when this process closes its end of the socket (at exit, or when this process dies).
    """

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "dlbook.distributed", "--server", str(theirs.fileno())],
                                     pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        theirs.close()
        self.sock = ours
        ours.settimeout(120.0)
        if self._reply()[0] != b"ready\n":
            self.close()
            raise RuntimeError("the warm launcher did not start")
        ours.settimeout(30.0)

    def _reply(self) -> tuple[bytes, list[int]]:
        data, fds = b"", []
        while not data.endswith(b"\n"):
            chunk, got, _, _ = socket.recv_fds(self.sock, 4096, 1)
            if not chunk:
                break
            data += chunk
            fds.extend(got)
        return data, fds

    def start_group(self, world_size: int, tmp_path: Path, env: dict[str, str]) -> _GroupProcess:
        import json

        request = {"world": world_size, "tmp": str(tmp_path), "env": env, "cwd": os.getcwd()}
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        data, fds = self._reply()
        if not data.startswith(b"{") or not fds:
            for fd in fds:
                os.close(fd)
            raise RuntimeError(f"the warm launcher did not start a group: {data[:200]!r}")
        return _GroupProcess(int(json.loads(data)["pid"]), fds[0])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        self.sock.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


WARM_LAUNCHER = FORK_RANKS and hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")
_SERVER: _WarmServer | None = None
_SERVER_LOCK = threading.Lock()


def _warm_server() -> _WarmServer | None:
    """This process's warm launcher (started on first use); None where there is none to be had."""
    global _SERVER
    if not WARM_LAUNCHER:
        return None
    with _SERVER_LOCK:
        if _SERVER is None or not _SERVER.alive():
            try:
                _SERVER = _WarmServer()
            except (OSError, RuntimeError):
                _SERVER = None
                return None
            atexit.register(_SERVER.close)
        return _SERVER


def _serve_groups(fd: int) -> None:
    """The warm server: fork one group launcher (:func:`_group_main`) per request, until the client is gone."""
    import json

    conn = socket.socket(fileno=fd)
    if not _single_threaded():
        return
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # launchers are reaped by the system
    conn.sendall(b"ready\n")
    for line in conn.makefile("rb"):
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                conn.close()
                code = _become_launcher(req)
            finally:
                os._exit(code)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            conn.sendall(b"the launcher ended at once\n")
            continue
        socket.send_fds(conn, [json.dumps({"pid": pid}).encode() + b"\n"], [pidfd])
        os.close(pidfd)


def _become_launcher(req: dict) -> int:
    """In the server's fork: be what ``python -m dlbook.distributed --group`` started with ``req`` would be."""
    os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the launcher waits for its ranks
    tmp_path = Path(req["tmp"])
    log = os.open(tmp_path / "launcher.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.closerange(3, 65536)
    try:
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        # what PYTHONPATH (the caller's folder first, see worker_env) would have put on a new process's sys.path
        extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
        sys.path[:0] = extra
        return _group_main(int(req["world"]), tmp_path)
    except BaseException:  # noqa: BLE001 - into launcher.log, which the caller shows when a rank has no output
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _launch_once(payload: bytes, world_size: int, limit: float, threads: int, echo: bool) -> list[Any]:
    with tempfile.TemporaryDirectory(prefix="dlbook_dist_") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "payload.pkl").write_bytes(payload)
        port = free_port()
        procs: list = []
        logs = [tmp_path / f"rank{rank}.log" for rank in range(world_size)]
        try:
            if FORK_RANKS:  # one launcher with torch imported forks the ranks (_group_main)
                env = worker_env(0, world_size, port, threads)
                for key in ("RANK", "LOCAL_RANK"):
                    env.pop(key)
                procs.append(_start_launcher(world_size, tmp_path, env))
                ranks = [_ForkedRank(procs[0], tmp_path, rank) for rank in range(world_size)]
            else:
                for rank, log in enumerate(logs):
                    with log.open("wb") as out:
                        procs.append(subprocess.Popen(
                            _rank_argv(tmp_path, rank),
                            env=worker_env(rank, world_size, port, threads), stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                        ))
                ranks = procs
            _wait_for_ranks(ranks, logs, tmp_path, limit)
        finally:
            for proc in procs:  # the launcher's process group holds its ranks
                _kill(proc)
            _note_ranks_memory(tmp_path, world_size)
        results = []
        for rank in range(world_size):
            status, value = pickle.loads((tmp_path / f"result{rank}.pkl").read_bytes())
            results.append(value)
        if echo:
            for rank, log in enumerate(logs):
                for line in log.read_text(errors="replace").splitlines():
                    print(f"[rank {rank}] {line}")
        return results


def _wait_for_ranks(procs: list[subprocess.Popen], logs: list[Path], tmp_path: Path, limit: float) -> None:
    """Return when every rank finished its work; raise WorkerError when one failed or ``limit`` s passed."""
    deadline = time.monotonic() + limit
    while True:
        codes = [p.poll() for p in procs]
        # a rank that wrote an "ok" result and then died in teardown has finished its work
        codes = [0 if c not in (None, 0) and _reported_ok(tmp_path / f"result{r}.pkl") else c
                 for r, c in enumerate(codes)]
        if any(c not in (None, 0) for c in codes):
            raise WorkerError(_failure_message(procs, logs, tmp_path))
        if all(c == 0 for c in codes):
            return
        if time.monotonic() > deadline:
            waiting = [r for r, c in enumerate(codes) if c is None]
            raise WorkerError(
                f"the process group did not finish within {limit:g} s; ranks {waiting} were still "
                "running (a collective that not every rank joined, or a send without a matching "
                "recv?). Last output of rank 0:\n" + _tail(logs[0])
            )
        time.sleep(0.02)


def _reported_ok(result_file: Path) -> bool:
    try:
        return pickle.loads(result_file.read_bytes())[0] == "ok"
    except (OSError, EOFError, pickle.UnpicklingError, IndexError, TypeError):
        return False


def _failure_message(procs: list[subprocess.Popen], logs: list[Path], tmp_path: Path) -> str:
    """Return the error of the rank that failed first-hand (not one that lost its peer)."""
    deadline = time.monotonic() + 2.0  # let the other ranks notice and report
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.02)
    reports = []
    for rank, proc in enumerate(procs):
        if proc.poll() in (None, 0):
            continue
        result_file = tmp_path / f"result{rank}.pkl"
        message = ""
        if result_file.exists():
            status, value = pickle.loads(result_file.read_bytes())
            message = value if status == "error" else ""
        message = message or "no error message; its last output:\n" + (
            _tail(logs[rank]) or _tail(tmp_path / "launcher.log"))  # nothing of the rank's: the launcher failed
        secondary = "connection closed" in message.lower() or "connection reset" in message.lower()
        reports.append((secondary, rank, proc.returncode, message))
    _, rank, code, message = min(reports)
    return f"rank {rank} of {len(procs)} failed (exit code {code}): {message}"


def _worker_main(payload_path: str, result_path: str) -> int:
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    status, value, reported = "error", "", False
    try:
        fn, args, forbid, exercise, timeout = pickle.loads(Path(payload_path).read_bytes())
        dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout))
        try:
            owners = [(importlib.import_module(module_name), attr) for module_name, attr in forbid]
            with forbidden(exercise, *owners, rebuild="rebuild from point-to-point messages (send/recv, isend/irecv)"):
                value = fn(rank, world_size, *args)
            status = "ok"
            # Report first, then leave together: a rank that tears gloo down while its peer is still
            # busy can abort in gloo's destructor (SIGABRT). A peer that never arrives (it hangs, or
            # crashed) is the launcher's to report, not this rank's.
            Path(result_path).write_bytes(_pickler.dumps((status, value)))
            reported = True
            try:
                dist.barrier()
            except Exception:  # noqa: BLE001
                pass
        finally:
            dist.destroy_process_group()
    except BaseException as err:  # noqa: BLE001 - every failure goes back to the parent as text
        if reported:
            return 0  # the work was done and reported; only the teardown failed
        status, value = "error", f"{type(err).__name__}: {err}"
        traceback.print_exc()
    if not reported:
        Path(result_path).write_bytes(_pickler.dumps((status, value)))
    return 0 if status == "ok" else 1


def torchrun_command(script: str | os.PathLike, nproc: int, script_args: Sequence[str] = (),
                     port: int | None = None) -> list[str]:
    """Return the ``torchrun`` command line that runs ``script`` on ``nproc`` local processes.

    On one machine: ``python -m torch.distributed.run --nnodes=1 --nproc-per-node=N
    --master-addr=127.0.0.1 --master-port=PORT script.py ARGS`` (``torchrun`` is the same program).
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    port = free_port() if port is None else port
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={nproc}",
            f"--master-addr={LOCALHOST}", f"--master-port={port}", str(script), *map(str, script_args)]


def run_torchrun(script: str | os.PathLike, nproc: int, script_args: Sequence[str] = (), *,
                 timeout: float = 300.0, threads: int | None = None) -> str:
    """Run ``script`` under torchrun with ``nproc`` local processes; return its combined output.

    Each process gets ``threads`` CPU threads (default: the cores divided among the processes).
    Raises :class:`WorkerError` with the output's tail when the run fails or exceeds ``timeout``
    (the whole process tree is killed).
    """
    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
    env = worker_env(0, nproc, 0, threads)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key)
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(torchrun_command(script, nproc, script_args), env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            timed_out = proc.poll() is None
            _kill(proc)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if timed_out or proc.returncode != 0:
        why = f"did not finish within {timeout:g} s" if timed_out else f"failed (exit code {proc.returncode})"
        raise WorkerError(f"torchrun {Path(script).name} with {nproc} processes {why}; {_torchrun_report(text)}")
    return text


def _torchrun_report(text: str) -> str:
    """Return the workers' last output lines and torchrun's root-cause lines, without its own traceback."""
    lines = text.strip().splitlines()
    cut = len(lines)
    for i, line in enumerate(lines):
        if line.startswith("Traceback") and any("torch/distributed/run.py" in x for x in lines[i:i + 4]):
            cut = i
            break
    cause = [x.strip() for x in lines[cut:] if x.strip().startswith(("rank ", "exitcode"))]
    return "last output:\n" + "\n".join(lines[:cut][-25:] + cause)


# ---------------------------------------------------------------------------------------------
# References (the hidden tests compare the learner's from-scratch versions with these)
# ---------------------------------------------------------------------------------------------


def shard_indices(n: int, rank: int, world_size: int, shuffle: bool = False, seed: int = 0,
                  epoch: int = 0, drop_last: bool = False) -> list[int]:
    """Return the dataset indices rank ``rank`` of ``world_size`` reads in epoch ``epoch``.

    Exactly :class:`torch.utils.data.DistributedSampler`'s order: an optional seeded permutation of
    ``range(n)`` (seed ``seed + epoch``), padded by wrapping around (or truncated with
    ``drop_last``) to a multiple of ``world_size``, then every ``world_size``-th index from
    ``rank``. Each rank gets ``ceil(n / world_size)`` indices (``floor`` with ``drop_last``).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
    if drop_last and n < world_size:
        raise ValueError(f"drop_last with n={n} < world_size={world_size} leaves no index for any rank")
    sampler = torch.utils.data.DistributedSampler(
        range(n), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
    sampler.set_epoch(epoch)
    return [int(i) for i in sampler]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Return ``tensor`` after summing it in place across all ranks of the default group.

    Shape unchanged; every rank ends with the same values. Calls ``dist.all_reduce``.
    """
    if not dist.is_initialized():
        raise RuntimeError("all_reduce_sum needs a process group: call dist.init_process_group first")
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_gradients(model: torch.nn.Module) -> None:
    """Replace every parameter's ``.grad`` by its mean over all ranks (parameters without one are skipped).

    After ``loss.backward()`` on each rank's shard, this makes every replica hold the gradient of
    the mean loss over the union of the shards (equal shard sizes), which is what DDP does.
    """
    if not dist.is_initialized():
        raise RuntimeError("average_gradients needs a process group: call dist.init_process_group first")
    world_size = dist.get_world_size()
    for param in model.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad.div_(world_size)


def scale_lr_for_batch(base_lr: float, base_batch: int, batch: int, rule: str = "linear") -> float:
    """Return the learning rate for batch size ``batch``, given ``base_lr`` tuned at ``base_batch``.

    ``rule="linear"``: ``base_lr * batch / base_batch`` (SGD: Goyal et al., 2017);
    ``rule="sqrt"``: ``base_lr * sqrt(batch / base_batch)`` (often used with Adam).
    """
    if base_lr <= 0 or not math.isfinite(base_lr):
        raise ValueError(f"base_lr must be a positive finite number, got {base_lr!r}")
    for name, value in (("base_batch", base_batch), ("batch", batch)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if rule == "linear":
        return float(base_lr * batch / base_batch)
    if rule == "sqrt":
        return float(base_lr * math.sqrt(batch / base_batch))
    raise ValueError(f"rule must be 'linear' or 'sqrt', got {rule!r}")


def ring_allreduce_seconds(n_bytes: float, world_size: int, bandwidth: float, latency: float = 0.0) -> float:
    """Return the time of a ring all-reduce of ``n_bytes`` over ``world_size`` ranks (alpha-beta model).

    ``2 (N - 1)`` steps, each sending ``n_bytes / N`` at ``bandwidth`` bytes/s after ``latency`` s:
    ``2 (N - 1) (latency + n_bytes / (N * bandwidth))``; 0 for one rank.
    """
    if world_size < 1 or bandwidth <= 0 or n_bytes < 0 or latency < 0:
        raise ValueError("expected world_size >= 1, bandwidth > 0, n_bytes >= 0 and latency >= 0")
    steps = 2 * (world_size - 1)
    return steps * (latency + n_bytes / (world_size * bandwidth))


def _single_threaded() -> bool:
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _group_main(world_size: int, tmp_path: Path) -> int:
    """The launcher: fork ``world_size`` ranks from this process (torch imported once), reap them.

    Each rank gets its own ``RANK``/``LOCAL_RANK``, its own log as stdout and stderr, and fresh seeds for
    torch's, NumPy's and Python's global generators (what a new process has); it runs :func:`_worker_main`
    and leaves with ``os._exit``. Each rank's exit code (negative: the signal that ended it) goes to
    ``rank<r>.exit``. A process with more than one thread is not forked (another thread may hold a lock the
    child would need): then each rank is started the ordinary way.
    """
    pids: dict[int, int] = {}
    for rank in range(world_size):
        if not _single_threaded():
            env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            with (tmp_path / f"rank{rank}.log").open("wb") as out:
                proc = subprocess.Popen(_rank_argv(tmp_path, rank), env=env, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
            pids[proc.pid] = rank
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the rank
            code = 1
            try:
                os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank)})
                log = os.open(tmp_path / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.close(log)
                import random

                random.seed()
                torch.seed()
                if "numpy" in sys.modules:
                    sys.modules["numpy"].random.seed()
                code = _worker_main(str(tmp_path / "payload.pkl"), str(tmp_path / f"result{rank}.pkl"))
            except BaseException:  # noqa: BLE001 - into the rank's log; the launcher reports the exit code
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids[pid] = rank
    while pids:
        pid, status, usage = os.wait4(-1, 0)
        if pid in pids:
            rank = pids.pop(pid)
            # the rank's peak memory first (the caller reads it once the exit file is there): a launcher forked
            # by the warm server is not the caller's child, so the caller's RUSAGE_CHILDREN cannot see it
            (tmp_path / f"rank{rank}.maxrss").write_text(str(usage.ru_maxrss))
            exit_file = tmp_path / f"rank{rank}.exit"
            exit_file.with_suffix(".tmp").write_text(str(os.waitstatus_to_exitcode(status)))
            exit_file.with_suffix(".tmp").replace(exit_file)
    return 0


_PEAK_RANK_MAXRSS = 0  # ru_maxrss units (KiB on Linux)


def ranks_peak_rss_mb() -> float:
    """The largest peak resident memory of a rank that :func:`launch` started from this process, in MiB."""
    return _PEAK_RANK_MAXRSS * (1 if sys.platform == "darwin" else 1024) / 2**20


def _note_ranks_memory(tmp_path: Path, world_size: int) -> None:
    global _PEAK_RANK_MAXRSS
    for rank in range(world_size):
        try:
            _PEAK_RANK_MAXRSS = max(_PEAK_RANK_MAXRSS, int((tmp_path / f"rank{rank}.maxrss").read_text()))
        except (OSError, ValueError):
            pass  # a rank started as this process's own child: its memory is in RUSAGE_CHILDREN


if __name__ == "__main__":
    if sys.argv[1] == "--server":
        _serve_groups(int(sys.argv[2]))
        _code = 0
    elif sys.argv[1] == "--group":
        _code = _group_main(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        _code = _worker_main(sys.argv[1], sys.argv[2])
    # Leave without the interpreter's teardown: gloo's background threads can make it abort there
    # ("terminate called without an active exception") after the result was already written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_code)
