"""dlbook.check: strict conversion, messages that say what is wrong, gradchecks, forbidden ops."""

from __future__ import annotations

import re
import types

import numpy as np
import pytest
import torch

from dlbook import check
from dlbook.check import CheckFailure, ForbiddenCall

# ----------------------------------------------------------------------------- to_numpy


@pytest.mark.parametrize(
    "value",
    [
        np.arange(6.0).reshape(2, 3),
        np.arange(6, dtype=np.int32).reshape(2, 3),
        torch.arange(6.0).reshape(2, 3),
        torch.arange(6).reshape(2, 3),
        torch.nn.Parameter(torch.arange(6.0).reshape(2, 3)),
        torch.arange(6.0, requires_grad=True).reshape(2, 3),
    ],
    ids=["ndarray-f64", "ndarray-i32", "tensor-f32", "tensor-i64", "parameter", "requires-grad"],
)
def test_to_numpy_accepts_arrays_and_tensors(value):
    got = check.to_numpy("ex", "x", value)
    assert type(got) is np.ndarray and got.dtype == np.float64
    np.testing.assert_array_equal(got, np.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize(
    "value", [3, 3.0, np.float32(3.0), np.float64(3.0), np.int64(3), np.int8(3)]
)
def test_to_numpy_accepts_numbers(value):
    got = check.to_numpy("ex", "x", value)
    assert type(got) is np.ndarray and got.shape == () and got.dtype == np.float64
    assert float(got) == 3.0


def test_to_numpy_returns_a_copy_of_the_requested_dtype():
    a = np.zeros(3)
    got = check.to_numpy("ex", "x", a)
    got[0] = 5.0
    assert a[0] == 0.0
    t = torch.zeros(3)
    got = check.to_numpy("ex", "x", t, dtype=np.float32)
    got[0] = 5.0
    assert got.dtype == np.float32 and float(t[0]) == 0.0


@pytest.mark.parametrize(
    ("value", "type_name"),
    [([1.0, 2.0], "list"), ((1.0, 2.0), "tuple"), ("1.0", "str"), ({"a": 1}, "dict"),
     (True, "bool")],
)
def test_to_numpy_rejects_other_types_naming_them(value, type_name):
    with pytest.raises(CheckFailure, match=rf"ch01_thing: out .*got {type_name}"):
        check.to_numpy("ch01_thing", "out", value)


def test_to_numpy_none_hints_at_missing_return():
    with pytest.raises(CheckFailure, match="forget to return"):
        check.to_numpy("ch01_thing", "out", None)


def test_to_numpy_rejects_object_arrays():
    with pytest.raises(CheckFailure, match="Python objects"):
        check.to_numpy("ex", "x", np.array([1.0, None], dtype=object))


class _Tracker:
    calls: list[str] = []


def _lying_methods(prefix):
    def make(name, result):
        def method(self, *args, **kwargs):
            _Tracker.calls.append(f"{prefix}.{name}")
            return result() if callable(result) else result

        return method

    return {
        "__eq__": make("__eq__", True),
        "__ne__": make("__ne__", False),
        "__array__": make("__array__", lambda: np.ones((2, 3))),
        "__float__": make("__float__", 1.0),
        "__int__": make("__int__", 1),
        "__index__": make("__index__", 1),
        "__len__": make("__len__", 6),
        "__iter__": make("__iter__", lambda: iter([1.0] * 6)),
        "__getitem__": make("__getitem__", 1.0),
        "__hash__": object.__hash__,
    }


LyingObject = type("LyingObject", (), _lying_methods("LyingObject"))
LyingArray = type("LyingArray", (np.ndarray,), _lying_methods("LyingArray"))
LyingFloat64 = type("LyingFloat64", (np.float64,), _lying_methods("LyingFloat64"))
LyingFloat = type("LyingFloat", (float,), _lying_methods("LyingFloat"))
LyingTensor = type("LyingTensor", (torch.Tensor,), {})


@pytest.mark.parametrize(
    "make",
    [
        LyingObject,
        lambda: np.zeros((2, 3)).view(LyingArray),
        lambda: np.zeros((2, 3)).view(np.matrix),
        lambda: LyingFloat64(1.0),
        lambda: LyingFloat(1.0),
        lambda: torch.zeros(2, 3).as_subclass(LyingTensor),
    ],
    ids=["object", "ndarray-subclass", "np.matrix", "float64-subclass", "float-subclass",
         "tensor-subclass"],
)
def test_to_numpy_rejects_impostors_without_calling_their_methods(make):
    value = make()
    _Tracker.calls.clear()
    with pytest.raises(CheckFailure, match="should be a numpy array or a number"):
        check.to_numpy("ex", "x", value)
    assert _Tracker.calls == []
    # assert_close goes through the same door, for the learner's value and never trusts ==.
    with pytest.raises(CheckFailure):
        check.assert_close("ex", "x", value, np.zeros((2, 3)))
    assert _Tracker.calls == []


class _LyingMeta(type):
    def __eq__(cls, other):
        _Tracker.calls.append("_LyingMeta.__eq__")
        return True

    __hash__ = type.__hash__


class _MetaImpostor(metaclass=_LyingMeta):
    def __float__(self):
        _Tracker.calls.append("_MetaImpostor.__float__")
        return 1.0

    def __array__(self, *args, **kwargs):
        _Tracker.calls.append("_MetaImpostor.__array__")
        return np.ones(())


def test_to_numpy_never_calls_a_lying_metaclass_eq():
    _Tracker.calls.clear()
    with pytest.raises(CheckFailure):
        check.to_numpy("ex", "x", _MetaImpostor())
    assert _Tracker.calls == []


@pytest.mark.parametrize(
    "value",
    [np.array(["1.5"]), np.array(["a"]), np.str_("2"), np.array([1 + 2j])],
    ids=["str-array-numeric", "str-array", "np.str_", "complex-array"],
)
def test_to_numpy_rejects_non_numeric_dtypes(value):
    with pytest.raises(CheckFailure):
        check.to_numpy("ex", "x", value)


# ----------------------------------------------------------------------------- shapes and tuples


def test_check_shape_message_shows_both_shapes():
    check.check_shape("ex", "out", np.zeros((2, 3)), (2, 3))
    expected_msg = re.escape("ch02_conv: out has shape (2, 3), expected (3, 2)")
    with pytest.raises(CheckFailure, match=expected_msg):
        check.check_shape("ch02_conv", "out", np.zeros((2, 3)), [3, 2])


def test_check_tuple():
    assert check.check_tuple("ex", [1, 2], ("a", "b")) == (1, 2)
    with pytest.raises(CheckFailure, match=r"expected 2 values \(dx, dw\), got 3"):
        check.check_tuple("ex", (1, 2, 3), ("dx", "dw"))
    with pytest.raises(CheckFailure, match="expected a tuple .*got ndarray"):
        check.check_tuple("ex", np.zeros(2), ("dx", "dw"))
    with pytest.raises(CheckFailure, match="got NoneType"):
        check.check_tuple("ex", None, ("dx", "dw"))


# ----------------------------------------------------------------------------- assert_close


def test_assert_close_passes_and_returns_float64():
    expected = np.linspace(-1, 1, 6).reshape(2, 3)
    got = check.assert_close("ex", "out", torch.tensor(expected, dtype=torch.float32), expected)
    assert got.dtype == np.float64 and got.shape == (2, 3)


def test_assert_close_shape_message():
    with pytest.raises(CheckFailure) as info:
        check.assert_close("ch03_pool", "out", np.zeros((2, 3, 5, 5)), np.zeros((2, 3, 4, 4)))
    msg = str(info.value)
    assert "ch03_pool" in msg and "(2, 3, 5, 5)" in msg and "(2, 3, 4, 4)" in msg


def test_assert_close_reports_largest_error_and_its_index():
    expected = np.zeros((3, 4))
    got = expected.copy()
    got[1, 2] = 0.5
    got[2, 3] = -0.25
    with pytest.raises(CheckFailure) as info:
        check.assert_close("ch01_matmul", "dA", got, expected)
    msg = str(info.value)
    assert msg.startswith("ch01_matmul: dA")
    assert "largest error 0.5" in msg
    assert "index (1, 2)" in msg
    assert "got 0.5, expected 0" in msg
    assert "2 of 12 entries are off" in msg


def test_assert_close_scalar_message_has_both_numbers():
    with pytest.raises(CheckFailure, match=r"ex: loss .*largest error 0\.5 \(got 2\.5, expected 2"):
        check.assert_close("ex", "loss", 2.5, 2.0)


def test_assert_close_respects_tolerances():
    check.assert_close("ex", "x", 1.0 + 1e-7, 1.0)
    check.assert_close("ex", "x", 1000.001, 1000.0, atol=0.0, rtol=1e-5)
    with pytest.raises(CheckFailure, match="atol=0, rtol=1e-07"):
        check.assert_close("ex", "x", 1000.001, 1000.0, atol=0.0, rtol=1e-7)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_assert_close_detects_non_finite_values(bad):
    got = np.ones((2, 3))
    got[1, 2] = bad
    with pytest.raises(CheckFailure) as info:
        check.assert_close("ch04_softmax", "probs", got, np.ones((2, 3)))
    msg = str(info.value)
    assert "ch04_softmax" in msg and "non-finite" in msg and "(1, 2)" in msg


def test_assert_close_rejects_wrong_types_with_exercise_name():
    with pytest.raises(CheckFailure, match="ch05: out .*forget to return"):
        check.assert_close("ch05", "out", None, np.zeros(3))


# ----------------------------------------------------------------------------- gradients


def _f_cubic(x):
    return float(np.sum(x**3) + np.sum(np.sin(x)))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(1,), (5,), (2, 3)])
def test_numerical_gradient_matches_torch_and_leaves_x_unchanged(seed, shape):
    x = np.random.default_rng(seed).standard_normal(shape)
    before = x.copy()
    grad = check.numerical_gradient(_f_cubic, x)
    np.testing.assert_array_equal(x, before)
    assert grad.shape == shape

    xt = torch.tensor(x, requires_grad=True)
    (xt**3 + torch.sin(xt)).sum().backward()
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_numerical_gradient_evaluates_f_at_shifted_points():
    seen = []

    def f(x):
        seen.append(x.copy())
        return float(x.sum())

    x = np.array([1.0, 2.0])
    check.numerical_gradient(f, x, h=0.5)
    assert [tuple(s) for s in seen] == [(1.5, 2.0), (0.5, 2.0), (1.0, 2.5), (1.0, 1.5)]


def test_gradcheck_passes_on_the_right_gradient():
    x = np.random.default_rng(0).standard_normal((3, 2))
    check.gradcheck("ch01_grad", _f_cubic, x, 3 * x**2 + np.cos(x))


def test_gradcheck_fails_with_both_numbers_on_a_wrong_gradient():
    x = np.array([0.5, -1.0, 2.0])
    wrong = 3 * x**2 + np.cos(x)
    wrong[2] += 1.0
    with pytest.raises(CheckFailure) as info:
        check.gradcheck("ch01_grad", _f_cubic, x, wrong)
    msg = str(info.value)
    assert "ch01_grad" in msg and "central-difference" in msg and "index (2,)" in msg
    right = 3 * 2.0**2 + np.cos(2.0)
    assert f"got {wrong[2]:.6g}" in msg
    assert f"expected {right:.6g}" in msg


# ----------------------------------------------------------------------------- forbidden


def _fake_module():
    mod = types.ModuleType("fakeops")
    mod.conv = lambda x: x + 1
    mod.pool = lambda x: x * 2
    return mod


def test_forbidden_raises_inside_and_restores_after():
    mod = _fake_module()
    conv, pool = mod.conv, mod.pool
    with check.forbidden("ch03_conv2d", (mod, "conv"), (mod, "pool")):
        with pytest.raises(ForbiddenCall, match=r"ch03_conv2d: your code called fakeops\.conv"):
            mod.conv(1)
        with pytest.raises(ForbiddenCall, match=r"fakeops\.pool"):
            mod.pool(x=1)
    assert mod.conv is conv and mod.pool is pool
    assert mod.conv(1) == 2


def test_forbidden_says_how_to_rebuild():
    mod = _fake_module()
    with check.forbidden("ex", (mod, "conv")):
        with pytest.raises(ForbiddenCall, match=r"asks you to rebuild yourself; write it from the simpler operations"):
            mod.conv(1)
    wanted = r"ch08_all_reduce: your code called fakeops\.conv, which this exercise asks you to rebuild from send/recv$"
    with check.forbidden("ch08_all_reduce", (mod, "conv"), rebuild="rebuild from send/recv"):
        with pytest.raises(ForbiddenCall, match=wanted):
            mod.conv(1)


def test_forbidden_restores_when_the_block_raises():
    mod = _fake_module()
    conv = mod.conv
    with pytest.raises(RuntimeError, match="boom"):
        with check.forbidden("ex", (mod, "conv")):
            raise RuntimeError("boom")
    assert mod.conv is conv


def test_forbidden_restores_earlier_targets_when_a_later_one_is_missing():
    mod = _fake_module()
    conv = mod.conv
    with pytest.raises(AttributeError):
        with check.forbidden("ex", (mod, "conv"), (mod, "no_such_op")):
            pass
    assert mod.conv is conv


def test_forbidden_catches_a_call_buried_in_learner_code_with_torch():
    softmax = torch.nn.functional.softmax

    def learner_softmax(z):
        return torch.nn.functional.softmax(z, dim=-1)

    with check.forbidden("ch04_softmax", (torch.nn.functional, "softmax")):
        with pytest.raises(ForbiddenCall, match=r"torch\.nn\.functional\.softmax"):
            learner_softmax(torch.zeros(3))
    assert torch.nn.functional.softmax is softmax
    assert torch.allclose(learner_softmax(torch.zeros(2)), torch.full((2,), 0.5))


def test_forbidden_call_is_a_check_failure():
    assert issubclass(ForbiddenCall, CheckFailure) and issubclass(CheckFailure, AssertionError)


class _Ops:
    @staticmethod
    def double(x):
        return 2 * x


class _SubOps(_Ops):
    pass


def test_forbidden_restores_class_attributes_exactly():
    static = _Ops.__dict__["double"]
    with check.forbidden("ex", (_Ops, "double"), (_SubOps, "double")):
        pass
    assert _Ops.__dict__["double"] is static
    assert "double" not in _SubOps.__dict__
    assert _Ops().double(3) == 6


def test_random_inputs_are_seeded():
    a1, b1 = check.random_inputs(7, (2, 3), (4,), scale=2.0)
    a2, b2 = check.random_inputs(7, (2, 3), (4,), scale=2.0)
    assert a1.shape == (2, 3) and b1.shape == (4,) and a1.dtype == np.float64
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)
    rng = np.random.default_rng(7)
    np.testing.assert_allclose(a1, 2.0 * rng.standard_normal((2, 3)))
    (c,) = check.random_inputs(8, (2, 3))
    assert not np.allclose(c, a1 / 2)


def test_assert_normal_sample_passes_any_correct_stream_and_fails_as_often_as_it_says() -> None:
    # At false_failure=0.05, correct samples fail about 5 % of the time: the tolerances are calibrated.
    fails = 0
    for seed in range(600):
        sample = np.random.default_rng(seed).normal(0.0, 0.3, 2000)
        try:
            check.assert_normal_sample("ex", "w", sample, 0.3, false_failure=0.05)
        except check.CheckFailure:
            fails += 1
    assert 0.02 < fails / 600 < 0.09, fails
    # At the default 1e-9, 300 correct samplers of every size and stream all pass.
    for seed in range(100):
        g = torch.Generator().manual_seed(seed)
        for sample in (torch.randn(1000, 1, generator=g) * 0.05, torch.empty(300, 800).normal_(0, 0.05, generator=g),
                       torch.normal(0.0, 0.05, size=(7, 9), generator=g)):
            check.assert_normal_sample("ex", "w", sample, 0.05)


def test_assert_normal_sample_fails_a_wrong_scale_a_shift_and_a_non_normal_draw() -> None:
    g = np.random.default_rng(0)
    with pytest.raises(check.CheckFailure, match="standard deviation"):
        check.assert_normal_sample("ex", "w", g.normal(0, 1.05, 240_000), 1.0)
    with pytest.raises(check.CheckFailure, match="mean"):
        check.assert_normal_sample("ex", "w", g.normal(0.1, 1.0, 10_000), 1.0)
    uniform = g.uniform(-np.sqrt(3), np.sqrt(3), 60_000)  # the right mean and variance, the wrong shape
    with pytest.raises(check.CheckFailure, match="does not look normally distributed"):
        check.assert_normal_sample("ex", "w", uniform, 1.0)
    with pytest.raises(check.CheckFailure, match="non-finite"):
        check.assert_normal_sample("ex", "w", np.array([0.0, np.nan, 1.0]), 1.0)


def test_parse_python_tries_again_after_the_spurious_ast_race(monkeypatch):
    """CPython 3.11's spurious SystemError (two threads building ASTs) is retried; other errors are not."""
    import ast

    real, calls = ast.parse, []

    def flaky(source, *args, **kwargs):
        calls.append(source)
        if len(calls) < 3:
            raise SystemError("AST constructor recursion depth mismatch (before=63, after=69)")
        return real(source, *args, **kwargs)

    monkeypatch.setattr(ast, "parse", flaky)
    tree = check.parse_cell("x = 1\n%matplotlib inline")
    assert isinstance(tree.body[0], ast.Assign) and len(calls) == 3
    assert ast.literal_eval(check.parse_python("{'a': [1, 2]}", mode="eval")) == {"a": [1, 2]}

    def broken(source, *args, **kwargs):
        raise SystemError("something else")

    monkeypatch.setattr(ast, "parse", broken)
    with pytest.raises(SystemError, match="something else"):
        check.parse_cell("x = 1")
    monkeypatch.setattr(ast, "parse", real)
    assert check.parse_cell("def (:") is None


def test_parse_python_in_two_threads_with_finalisers_never_fails():
    """The race for real: two threads parse at different stack depths while garbage collections run Python
    finalisers (which hand the GIL over mid-parse). ast.parse alone fails here on CPython 3.11."""
    import sys
    import threading

    source = "\n".join(f"def f{i}(x):\n    return [y * {i} for y in range(x) if y % 3]" for i in range(200))
    errors: list[BaseException] = []

    class Finaliser:
        def __del__(self):
            sum(range(50))

    def parse_at_depth(depth: int) -> None:
        if depth:
            return parse_at_depth(depth - 1)
        for _ in range(150):
            junk = [Finaliser() for _ in range(50)]
            junk.append(junk)  # a cycle: only the garbage collector frees it
            try:
                check.parse_python(source)
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=parse_at_depth, args=(d,)) for d in (3, 9)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[0]
