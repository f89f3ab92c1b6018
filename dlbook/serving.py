"""Serving a model over HTTP: a FastAPI endpoint on ONNX Runtime, micro-batching, and a load runner.

- :func:`create_app`: ``POST /predict`` with a JSON body ``{"inputs": [...]}`` of shape (N, *input_shape)
  answers ``{"logits": ..., "classes": ...}``. Bad input gets a 4xx whose ``detail`` says what was
  expected (400 not JSON, 413 body too large, 422 wrong structure, shape or type); the server keeps
  serving. ``GET /health`` and ``GET /stats`` (requests and batches so far).
- Micro-batching (``max_batch_size > 1``): requests wait in a queue and are run together, up to
  ``max_batch_size`` requests or until ``max_wait_s`` after the first one, whichever comes first
  (:func:`simulate_micro_batching` states the rule on a list of arrival times).
- :class:`BackgroundServer`: uvicorn in a thread on 127.0.0.1 and a free port; a context manager, so
  the server stops when the ``with`` block ends, whatever happens in it.
- :func:`run_load`: a fixed number of requests from a few concurrent clients (``http.client``);
  :func:`latency_percentiles` (``numpy.percentile``) summarises the timings.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

MAX_BODY_BYTES = 1 << 20  # 1 MiB: a request of 256 images of 16x16 as JSON is about 0.5 MB
MAX_ROWS = 256  # inputs in one request


def latency_percentiles(timings: Sequence[float], percentiles: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    """Return ``{"p50": ..., "p95": ..., "p99": ...}``: the percentiles of ``timings`` (same unit).

    ``numpy.percentile``'s default method ("linear"): sort the n timings, the q-th percentile is at
    position ``(n - 1) * q / 100``, interpolated linearly between its two neighbours.
    """
    values = np.asarray(timings, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"expected a non-empty 1-D sequence of timings, got shape {values.shape}")
    if not all(0 <= q <= 100 for q in percentiles):
        raise ValueError(f"expected percentiles in [0, 100], got {list(percentiles)}")
    return {f"p{q:g}": float(np.percentile(values, q)) for q in percentiles}


@dataclass(frozen=True)
class Batch:
    """One micro-batch: the indices of its requests (in arrival order) and when it is dispatched."""

    indices: tuple[int, ...]
    dispatch_time: float


def simulate_micro_batching(arrivals: Sequence[float], max_batch_size: int, max_wait_s: float) -> list[Batch]:
    """Return the micro-batches that requests arriving at ``arrivals`` (non-decreasing times) form.

    A batch opens with the first request that finds no open batch and closes when it holds
    ``max_batch_size`` requests (dispatched at that request's arrival) or at its first arrival plus
    ``max_wait_s``, whichever comes first; a request arriving exactly at that deadline opens the next.
    """
    if max_batch_size < 1 or max_wait_s < 0:
        raise ValueError(f"expected max_batch_size >= 1 and max_wait_s >= 0, got {max_batch_size}, {max_wait_s}")
    times = [float(t) for t in arrivals]
    if any(b < a for a, b in zip(times, times[1:], strict=False)):
        raise ValueError("expected non-decreasing arrival times")
    batches: list[Batch] = []
    members: list[int] = []
    for i, t in enumerate(times):
        if members and t >= times[members[0]] + max_wait_s:
            batches.append(Batch(tuple(members), times[members[0]] + max_wait_s))
            members = []
        members.append(i)
        if len(members) == max_batch_size or max_wait_s == 0:
            batches.append(Batch(tuple(members), t))
            members = []
    if members:
        batches.append(Batch(tuple(members), times[members[0]] + max_wait_s))
    return batches


# --- the endpoint -----------------------------------------------------------------------------------

class BadRequest(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


_KINDS = {"U": "strings", "S": "strings", "b": "booleans (true/false)", "O": "null, nested objects or mixed values"}


def _holds_bool(value) -> bool:
    return type(value) is bool or (type(value) is list and any(_holds_bool(v) for v in value))


def parse_inputs(body: bytes, input_shape: Sequence[int], max_rows: int = MAX_ROWS) -> np.ndarray:
    """Return the float32 array (N, *input_shape) in a JSON body ``{"inputs": [...]}``; raise :class:`BadRequest`."""
    expected = f"(N, {', '.join(str(d) for d in input_shape)})"
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(400, f'expected a JSON body {{"inputs": <numbers of shape {expected}>}}; '
                              f"it is not JSON ({err})") from None
    if type(payload) is not dict or "inputs" not in payload:
        kind = type(payload).__name__
        got = f"an object with keys {sorted(payload)[:5]}" if kind == "dict" else f"a JSON {kind}"
        raise BadRequest(422, f'expected a JSON object {{"inputs": <numbers of shape {expected}>}}, got {got}')
    try:
        array = np.asarray(payload["inputs"])
    except (ValueError, TypeError):  # ragged nesting
        raise BadRequest(422, f"expected 'inputs' of shape {expected}: its nested lists differ in length") from None
    if array.dtype.kind in "iuf" and (b"true" in body or b"false" in body) and _holds_bool(payload["inputs"]):
        array = np.asarray(True)  # numpy turned true/false among numbers into 1/0: refuse them as booleans
    if array.dtype.kind not in "iuf":
        raise BadRequest(422, f"expected 'inputs' to hold numbers (they become float32), got "
                              f"{_KINDS.get(array.dtype.kind, str(array.dtype))}")
    if array.ndim != len(input_shape) + 1 or tuple(array.shape[1:]) != tuple(input_shape):
        raise BadRequest(422, f"expected 'inputs' of shape {expected}, got {tuple(array.shape)}")
    if not 1 <= array.shape[0] <= max_rows:
        raise BadRequest(422, f"expected between 1 and {max_rows} inputs (N) in one request, got {array.shape[0]}")
    with np.errstate(over="ignore"):  # beyond float32's range becomes infinity, refused just below
        array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise BadRequest(422, "expected finite numbers in 'inputs', got NaN or infinity (or a number beyond float32)")
    return array


class ModelRunner:
    """Runs the ONNX session for the endpoint, one request at a time or micro-batched, and counts the calls.

    With ``max_batch_size > 1``, :meth:`start` begins an asyncio task that takes requests from a queue:
    it waits for the first, then for more until the batch holds ``max_batch_size`` requests or
    ``max_wait_s`` have passed since the first, runs them in one call, and hands each its rows.
    """

    def __init__(self, session, max_batch_size: int = 1, max_wait_s: float = 0.002):
        if max_batch_size < 1 or max_wait_s < 0:
            raise ValueError(f"expected max_batch_size >= 1 and max_wait_s >= 0, got {max_batch_size}, {max_wait_s}")
        self.session, self.max_batch_size, self.max_wait_s = session, max_batch_size, max_wait_s
        self.input_name = session.get_inputs()[0].name
        self.batch_sizes: list[int] = []  # requests per model call
        self._lock = threading.Lock()  # calls run in executor threads
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    def run(self, x: np.ndarray, requests: int = 1) -> np.ndarray:
        out = self.session.run(None, {self.input_name: x})[0]
        with self._lock:
            self.batch_sizes.append(requests)
        return out

    def start(self) -> None:
        if self.max_batch_size > 1:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._batch_loop())

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()

    async def predict(self, x: np.ndarray) -> np.ndarray:
        """Return the model's output on ``x`` (N, ...), through the micro-batcher if there is one."""
        if self._queue is None:
            return await asyncio.to_thread(self.run, x)
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((x, future))
        return await future

    async def _collect(self) -> list:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_size and (left := deadline - loop.time()) > 0:
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _batch_loop(self) -> None:
        while True:
            batch = await self._collect()
            try:
                out = await asyncio.to_thread(self.run, np.concatenate([x for x, _ in batch]), len(batch))
            except Exception as err:  # the model failed: every waiting request gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            start = 0
            for x, future in batch:
                if not future.done():  # a client that went away cancelled its future
                    future.set_result(out[start:start + len(x)])
                start += len(x)

    def stats(self) -> dict:
        with self._lock:
            sizes = list(self.batch_sizes)
        return {"requests": int(sum(sizes)), "batches": len(sizes),
                "mean_batch_size": float(np.mean(sizes)) if sizes else 0.0,
                "max_batch_size_seen": max(sizes, default=0)}


async def read_body(request: Request, max_body_bytes: int) -> bytes:
    """Return the request's body; raise :class:`BadRequest` (413) as soon as it exceeds ``max_body_bytes``."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_body_bytes:
        raise BadRequest(413, f"expected a body of at most {max_body_bytes} bytes, got {int(length)} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:
            raise BadRequest(413, f"expected a body of at most {max_body_bytes} bytes, got more")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(model: bytes | str | Path, input_shape: Sequence[int], *, max_batch_size: int = 1,
               max_wait_s: float = 0.002, max_body_bytes: int = MAX_BODY_BYTES, max_rows: int = MAX_ROWS,
               threads: int = 1) -> FastAPI:
    """Return a FastAPI app serving the ONNX model ``model`` (bytes, or a path to a .onnx file).

    Args:
        input_shape: the shape of one input, without the batch axis, e.g. (1, 16, 16).
        max_batch_size: requests run together in one model call; 1 runs each request on its own.
        max_wait_s: with micro-batching, how long the first request of a batch waits for others.
        max_body_bytes: larger request bodies get 413.
        threads: ONNX Runtime's intra-op threads.
    """
    from .export import onnx_session

    if max_batch_size < 1 or max_wait_s < 0:
        raise ValueError(f"expected max_batch_size >= 1 and max_wait_s >= 0, got {max_batch_size}, {max_wait_s}")
    model_bytes = model if isinstance(model, bytes) else Path(model).read_bytes()
    runner = ModelRunner(onnx_session(model_bytes, threads=threads), max_batch_size, max_wait_s)
    input_shape = tuple(int(d) for d in input_shape)

    async def lifespan(app: FastAPI):
        runner.start()
        yield
        runner.stop()

    app = FastAPI(title="dlbook model server", lifespan=lifespan)

    @app.post("/predict")
    async def predict(request: Request):
        try:
            x = parse_inputs(await read_body(request, max_body_bytes), input_shape, max_rows)
        except BadRequest as err:
            return JSONResponse({"detail": err.detail}, status_code=err.status)
        logits = await runner.predict(x)
        return {"logits": logits.tolist(), "classes": logits.argmax(1).tolist()}

    @app.get("/health")
    async def health():
        return {"status": "ok", "input_shape": list(input_shape), "max_batch_size": max_batch_size,
                "max_wait_s": max_wait_s}

    @app.get("/stats")
    async def stats():
        return runner.stats()

    return app


# --- running it -------------------------------------------------------------------------------------

class BackgroundServer:
    """uvicorn serving ``app`` in a background thread on ``host`` and a free port; a context manager.

    >>> with BackgroundServer(app) as server:
    ...     requests go to server.url
    The server stops when the block ends, also when it raises; :meth:`stop` stops it explicitly.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 20.0):
        import uvicorn

        self.host = host
        self.start_timeout_s = start_timeout_s
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server is not running: start it first (or use it in a with block)")
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        if self._thread is not None:
            raise RuntimeError("this server was started already; make a new BackgroundServer")
        self._thread = threading.Thread(target=self._server.run, name="dlbook-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start on {self.host} within {self.start_timeout_s} s")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server and wait for its thread; idempotent."""
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout_s / 2)
        if self._thread.is_alive():  # open connections keep a graceful shutdown waiting
            self._server.force_exit = True
            self._thread.join(timeout_s / 2)
        if self._thread.is_alive():
            raise RuntimeError(f"the server thread did not stop within {timeout_s} s")
        self.port = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def post_json(url: str, payload, path: str = "/predict", timeout_s: float = 10.0) -> tuple[int, dict]:
    """Return ``(status, decoded JSON reply)`` of POSTing ``payload`` (bytes are sent as they are)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def get_json(url: str, path: str = "/health", timeout_s: float = 10.0) -> tuple[int, dict]:
    """Return ``(status, decoded JSON reply)`` of a GET of ``url`` + ``path``."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


@dataclass(frozen=True)
class LoadResult:
    """What a load run measured: each request's latency (seconds) and the wall time of the whole run."""

    latencies_s: tuple[float, ...]
    seconds: float
    errors: int

    @property
    def throughput_rps(self) -> float:
        return len(self.latencies_s) / self.seconds

    def percentiles_ms(self) -> dict[str, float]:
        return {k: v * 1e3 for k, v in latency_percentiles(self.latencies_s).items()}


def run_load(url: str, bodies: Sequence[bytes], requests: int = 400, clients: int = 4,
             timeout_s: float = 10.0) -> LoadResult:
    """Send ``requests`` POSTs to ``url``/predict from ``clients`` concurrent threads; return the :class:`LoadResult`.

    Each client keeps one HTTP connection open (keep-alive) and sends its share of the requests one
    after the other, cycling through ``bodies`` (JSON bytes). A reply other than 200 counts as an
    error and its latency is not kept.
    """
    if requests < 1 or clients < 1 or not bodies:
        raise ValueError(f"expected requests >= 1, clients >= 1 and some bodies, got {requests}, {clients}, "
                         f"{len(bodies)} bodies")
    host, port = url.removeprefix("http://").split(":")
    shares = [requests // clients + (i < requests % clients) for i in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    barrier = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
        try:
            barrier.wait()
            for i in range(shares[k]):
                body = bodies[(k + i * clients) % len(bodies)]
                start = time.perf_counter()
                try:
                    conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
                    response = conn.getresponse()
                    response.read()
                    ok = response.status == 200
                except (OSError, http.client.HTTPException):
                    conn.close()
                    ok = False
                if ok:
                    latencies[k].append(time.perf_counter() - start)
                else:
                    errors[k] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    return LoadResult(tuple(x for lat in latencies for x in lat), seconds, sum(errors))


def batch_latency(session, example: np.ndarray, batch_sizes: Sequence[int], repeats: int = 20) -> dict[int, float]:
    """Return ``{batch size: median seconds of one ONNX Runtime call}`` on batches cut from ``example``.

    ``example`` (M, ...) is repeated along its first axis where a batch size exceeds M.
    """
    name = session.get_inputs()[0].name
    example = np.asarray(example, dtype=np.float32)
    result = {}
    for size in batch_sizes:
        x = np.ascontiguousarray(np.resize(example, (size, *example.shape[1:])))
        session.run(None, {name: x})  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, {name: x})
            times.append(time.perf_counter() - start)
        result[int(size)] = float(np.median(times))
    return result


def json_body(x: np.ndarray) -> bytes:
    """Return the JSON body ``{"inputs": x}`` of a float array ``x`` (N, ...), numbers rounded to 6 digits."""
    rounded = np.round(np.asarray(x, dtype=np.float64), 6)
    if not np.isfinite(rounded).all() or math.prod(rounded.shape) == 0:
        raise ValueError("expected a non-empty array of finite numbers")
    return json.dumps({"inputs": rounded.tolist()}).encode()
