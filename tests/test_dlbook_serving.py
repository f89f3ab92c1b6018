"""dlbook.serving: percentiles, the micro-batching rule, and the HTTP endpoint against a real server on loopback.

Every server here runs in a ``with serving.BackgroundServer(...)`` block (or a fixture that uses one),
and the tests check that it is gone afterwards: no thread left, the port closed.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from onnx import TensorProto, helper

from dlbook import serving

INPUT_SHAPE = (2, 3)
WEIGHT = np.arange(18, dtype=np.float32).reshape(6, 3) / 10


def _linear_onnx() -> bytes:
    """logits (N, 3) = flatten(x (N, 2, 3)) @ WEIGHT: a model whose answer is easy to compute here."""
    w = helper.make_tensor("w", TensorProto.FLOAT, WEIGHT.shape, WEIGHT.flatten().tolist())
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w"], ["output"])]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2, 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _expected(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).astype(np.float32) @ WEIGHT


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) != 0


def _server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dlbook-server"]


@pytest.fixture(scope="module")
def model() -> bytes:
    return _linear_onnx()


@pytest.fixture(scope="module")
def server(model):
    with serving.BackgroundServer(serving.create_app(model, INPUT_SHAPE, max_body_bytes=4096)) as srv:
        yield srv
    assert not srv.running and not _server_threads()


# --- percentiles and the micro-batching rule ------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_latency_percentiles_match_numpy(seed) -> None:
    rng = np.random.default_rng(seed)
    for n in (1, 2, 5, 100, 1001):
        timings = rng.lognormal(-4, 1, size=n)
        got = serving.latency_percentiles(list(timings))
        assert list(got) == ["p50", "p95", "p99"]
        for q in (50, 95, 99):
            assert got[f"p{q}"] == pytest.approx(np.percentile(timings, q), rel=1e-12)
            assert type(got[f"p{q}"]) is float
    assert serving.latency_percentiles([4, 1, 3, 2, 10]) == pytest.approx({"p50": 3.0, "p95": 8.8, "p99": 9.76})
    assert serving.latency_percentiles([1, 2], percentiles=(0, 100, 12.5)) == {"p0": 1.0, "p100": 2.0, "p12.5": 1.125}


def test_latency_percentiles_bad_input_says_what_was_expected() -> None:
    with pytest.raises(ValueError, match=r"non-empty 1-D sequence of timings, got shape \(0,\)"):
        serving.latency_percentiles([])
    with pytest.raises(ValueError, match=r"got shape \(2, 2\)"):
        serving.latency_percentiles([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match=r"percentiles in \[0, 100\], got \[50, 101\]"):
        serving.latency_percentiles([1.0], percentiles=(50, 101))


def test_micro_batching_by_hand() -> None:
    arrivals = [0.0, 0.004, 0.010, 0.011, 0.012, 0.013, 0.030]
    batches = serving.simulate_micro_batching(arrivals, max_batch_size=3, max_wait_s=0.010)
    assert [b.indices for b in batches] == [(0, 1), (2, 3, 4), (5,), (6,)]
    # (0, 1): deadline 0.010 reached as request 2 arrives (exactly at it: 2 opens the next batch);
    # (2, 3, 4) full at request 4's arrival; (5,) and (6,) at their deadlines.
    assert [b.dispatch_time for b in batches] == pytest.approx([0.010, 0.012, 0.023, 0.040])
    assert [b.indices for b in serving.simulate_micro_batching([0, 0, 1], 5, 0.0)] == [(0,), (1,), (2,)]
    assert [b.indices for b in serving.simulate_micro_batching([0, 0, 0, 0, 0], 2, 1.0)] == [(0, 1), (2, 3), (4,)]
    assert serving.simulate_micro_batching([], 4, 0.1) == []


@pytest.mark.parametrize("seed", range(6))
def test_micro_batching_properties(seed) -> None:
    rng = np.random.default_rng(seed)
    max_size, max_wait = int(rng.integers(1, 9)), float(rng.choice([0.0, 0.001, 0.005]))
    arrivals = np.cumsum(rng.exponential(0.002, size=200) * (rng.random(200) < 0.8))
    batches = serving.simulate_micro_batching(arrivals, max_size, max_wait)
    assert [i for b in batches for i in b.indices] == list(range(200)), "every request once, in order"
    for b, following in zip(batches, [*batches[1:], None], strict=True):
        first, last = arrivals[b.indices[0]], arrivals[b.indices[-1]]
        assert 1 <= len(b.indices) <= max_size
        assert last <= b.dispatch_time <= first + max_wait + 1e-12, "sent no later than the deadline"
        if len(b.indices) < max_size:
            assert b.dispatch_time == pytest.approx(first + max_wait), "a batch that is not full waits to its deadline"
            if following is not None:  # and the next request came too late to join it
                assert arrivals[following.indices[0]] >= first + max_wait
        else:
            assert b.dispatch_time == last, "a full batch is sent at once"


def test_micro_batching_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_batch_size >= 1 and max_wait_s >= 0, got 0, 0.1"):
        serving.simulate_micro_batching([0.0], 0, 0.1)
    with pytest.raises(ValueError, match="non-decreasing arrival times"):
        serving.simulate_micro_batching([0.0, 0.2, 0.1], 2, 0.1)


def test_parse_inputs() -> None:
    x = serving.parse_inputs(json.dumps({"inputs": [[[1, 2, 3], [4, 5, 6.5]]]}).encode(), INPUT_SHAPE)
    assert x.dtype == np.float32 and x.shape == (1, 2, 3)
    with pytest.raises(serving.BadRequest, match=r"between 1 and 2 inputs \(N\) in one request, got 3") as err:
        serving.parse_inputs(json.dumps({"inputs": np.zeros((3, 2, 3)).tolist()}).encode(), INPUT_SHAPE, max_rows=2)
    assert err.value.status == 422
    with pytest.raises(serving.BadRequest, match="finite numbers") as err:
        serving.parse_inputs(b'{"inputs": [[[NaN, 1, 2], [3, 4, 5]]]}', INPUT_SHAPE)
    with pytest.raises(serving.BadRequest, match="not JSON") as err:
        serving.parse_inputs(b"\xff\xfe", INPUT_SHAPE)
    assert err.value.status == 400


# --- the endpoint, on a real server ------------------------------------------------------------------------

def test_good_request_gets_the_model_output(server) -> None:
    x = np.random.default_rng(0).normal(size=(4, *INPUT_SHAPE)).round(3)
    status, reply = serving.post_json(server.url, {"inputs": x.tolist()})
    assert status == 200
    np.testing.assert_allclose(reply["logits"], _expected(x), rtol=1e-5, atol=1e-5)
    assert reply["classes"] == _expected(x).argmax(1).tolist()
    assert serving.get_json(server.url, "/health") == (200, {"status": "ok", "input_shape": [2, 3], "max_batch_size": 1,
                                                              "max_wait_s": 0.002})


@pytest.mark.parametrize("body, status, message", [
    (b"inputs=1,2", 400, r'expected a JSON body \{"inputs": <numbers of shape \(N, 2, 3\)>\}; it is not JSON'),
    (b"", 400, "it is not JSON"),
    (b"[1, 2]", 422, r'expected a JSON object \{"inputs": .*\}, got a JSON list'),
    (b'{"x": 1}', 422, r"got an object with keys \['x'\]"),
    (b'{"inputs": [[1, 2, 3], [4, 5, 6]]}', 422, r"expected 'inputs' of shape \(N, 2, 3\), got \(2, 3\)"),
    (b'{"inputs": [[[1, 2], [3, 4]]]}', 422, r"expected 'inputs' of shape \(N, 2, 3\), got \(1, 2, 2\)"),
    (b'{"inputs": [[[1, 2, 3], [4, 5]]]}', 422, "nested lists differ in length"),
    (b'{"inputs": [[["a", "b", "c"], ["d", "e", "f"]]]}', 422, r"hold numbers \(they become float32\), got strings"),
    (b'{"inputs": [[[true, false, true], [1, 2, 3]]]}', 422, "got booleans"),
    (b'{"inputs": [[[1.5, false, 1], [1, 2, 3]]]}', 422, "got booleans"),
    (b'{"inputs": [[[{"a": 1}, 0, 1], [1, 2, 3]]]}', 422, "got null, nested objects or mixed values"),
    (b'{"inputs": [[[true, false, true], [true, true, true]]]}', 422, "got booleans"),
    (b'{"inputs": [[[null, 1, 2], [3, 4, 5]]]}', 422, "got null"),
    (b'{"inputs": [[[1e400, 1, 2], [3, 4, 5]]]}', 422, "finite numbers"),
    (b'{"inputs": [[[1e39, 1, 2], [3, 4, 5]]]}', 422, "finite numbers"),
    (b'{"inputs": []}', 422, r"got \(0,\)"),
    (b" " * 5000, 413, "expected a body of at most 4096 bytes, got 5000 bytes"),
])
def test_bad_input_gets_a_4xx_that_says_what_was_expected(server, body, status, message) -> None:
    got_status, reply = serving.post_json(server.url, body)
    assert got_status == status, reply
    assert set(reply) == {"detail"} and isinstance(reply["detail"], str)
    assert re.search(message, reply["detail"]), reply["detail"]
    # ... and the server keeps serving
    x = np.ones((1, *INPUT_SHAPE))
    assert serving.post_json(server.url, {"inputs": x.tolist()})[0] == 200


def test_chunked_body_over_the_limit_gets_413_and_wrong_method_405(server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("POST", "/predict", body=iter([b" " * 3000, b" " * 3000]), encode_chunked=True,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 413
        assert "at most 4096 bytes" in json.loads(response.read())["detail"]
    finally:
        conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/predict")
        assert conn.getresponse().status == 405
    finally:
        conn.close()
    assert serving.post_json(server.url, {"inputs": np.zeros((2, *INPUT_SHAPE)).tolist()})[0] == 200


def test_micro_batching_server_answers_each_request_with_its_own_rows(model) -> None:
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(int(rng.integers(1, 4)), *INPUT_SHAPE)).round(3) for _ in range(40)]
    app = serving.create_app(model, INPUT_SHAPE, max_batch_size=4, max_wait_s=0.005)
    with serving.BackgroundServer(app) as srv:
        port = srv.port
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda x: serving.post_json(srv.url, {"inputs": x.tolist()}), xs))
        stats = serving.get_json(srv.url, "/stats")[1]
        # bad input is answered by the endpoint, before the queue, and the batcher keeps going
        assert serving.post_json(srv.url, b"nope")[0] == 400
        assert serving.post_json(srv.url, {"inputs": xs[0].tolist()})[0] == 200
    for x, (status, reply) in zip(xs, replies, strict=True):
        assert status == 200
        np.testing.assert_allclose(reply["logits"], _expected(x), rtol=1e-5, atol=1e-5)
    assert stats["requests"] == 40 and 1 <= stats["max_batch_size_seen"] <= 4
    assert stats["batches"] == pytest.approx(40 / stats["mean_batch_size"])
    assert not srv.running and _port_closed(port)


def test_run_load_measures_every_request(model) -> None:
    bodies = [json.dumps({"inputs": np.full((1, *INPUT_SHAPE), i).tolist()}).encode() for i in range(5)]
    with serving.BackgroundServer(serving.create_app(model, INPUT_SHAPE)) as srv:
        result = serving.run_load(srv.url, bodies, requests=50, clients=3)
        bad = serving.run_load(srv.url, [b"not json"], requests=4, clients=2)
    assert result.errors == 0 and len(result.latencies_s) == 50 and result.throughput_rps > 0
    assert all(t > 0 for t in result.latencies_s)
    p = result.percentiles_ms()
    assert 0 < p["p50"] <= p["p95"] <= p["p99"] <= max(result.latencies_s) * 1e3 + 1e-9
    assert bad.errors == 4 and bad.latencies_s == ()
    with pytest.raises(ValueError, match="expected requests >= 1, clients >= 1 and some bodies"):
        serving.run_load("http://127.0.0.1:1", [], requests=1)


# --- starting and stopping ------------------------------------------------------------------------------------

def test_server_stops_when_the_block_raises_and_leaves_nothing_behind(model) -> None:
    before = set(threading.enumerate())
    app = serving.create_app(model, INPUT_SHAPE, max_batch_size=2)
    with pytest.raises(RuntimeError, match="a cell failed"):
        with serving.BackgroundServer(app) as srv:
            port = srv.port
            assert serving.get_json(srv.url)[0] == 200
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # a keep-alive connection left open
            conn.request("GET", "/health")
            conn.getresponse().read()
            raise RuntimeError("a cell failed")
    conn.close()
    assert not srv.running and _port_closed(port)
    leftover = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not leftover, f"threads left running: {leftover}"
    with pytest.raises(RuntimeError, match="the server is not running"):
        srv.url  # noqa: B018 - the property raises
    srv.stop()  # idempotent


def test_a_server_starts_once_and_on_a_free_port(model) -> None:
    before = set(threading.enumerate())
    app = serving.create_app(model, INPUT_SHAPE)
    with serving.BackgroundServer(app) as a, serving.BackgroundServer(serving.create_app(model, INPUT_SHAPE)) as b:
        assert a.port != b.port and a.url.startswith("http://127.0.0.1:")
        with pytest.raises(RuntimeError, match="started already"):
            a.start()
    assert not a.running and not b.running
    assert not [t for t in set(threading.enumerate()) - before if t.is_alive()]


def test_create_app_checks_its_arguments(model) -> None:
    with pytest.raises(ValueError, match="max_batch_size >= 1 and max_wait_s >= 0, got 0, 0.002"):
        serving.create_app(model, INPUT_SHAPE, max_batch_size=0)
    with pytest.raises(ValueError, match="expected the bytes of an ONNX model"):
        serving.create_app(b"not onnx", INPUT_SHAPE)
    with pytest.raises(ValueError, match="non-empty array of finite numbers"):
        serving.json_body(np.array([np.nan]))
