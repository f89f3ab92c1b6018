"""Checking helpers for exercises: exact comparisons with messages that say what is wrong.

Every check names the exercise, converts the learner's result to a plain NumPy array *after*
checking its exact type (so a learner object's ``__eq__`` or ``__array__`` is never trusted), and on
failure says what was expected: the shape, the dtype, or the largest error and where it is.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


class CheckFailure(AssertionError):
    """An exercise check failed; the message says what was expected and what came."""


def _is_numpy_scalar(value: Any) -> bool:
    return isinstance(value, np.generic) and type(value).__module__ == "numpy"


def to_numpy(exercise: str, name: str, value: Any, dtype: Any = np.float64) -> np.ndarray:
    """Return ``value`` as a new NumPy array of ``dtype``, accepting only plain numeric types.

    Accepted: ``numpy.ndarray`` (exactly, not a subclass), ``torch.Tensor``, Python ``int``/``float``
    and NumPy scalars. Anything else (a list, ``None``, a custom object) fails with a message naming
    the type that came, before any of its methods is called.
    """
    kind = type(value)
    if kind is np.ndarray:
        if value.dtype == object:
            raise CheckFailure(f"{exercise}: {name} is an array of Python objects, expected numbers")
        if value.dtype.kind not in "biuf":
            raise CheckFailure(
                f"{exercise}: {name} has dtype {value.dtype}, expected an array of real numbers"
            )
        array = np.array(value, dtype=dtype, copy=True)
    elif kind is torch.Tensor or kind is torch.nn.Parameter:
        if value.is_complex():
            raise CheckFailure(
                f"{exercise}: {name} has dtype {value.dtype}, expected a tensor of real numbers"
            )
        array = np.array(value.detach().cpu().numpy(), dtype=dtype, copy=True)
    elif kind is int or kind is float:
        array = np.array(value, dtype=dtype)
    elif _is_numpy_scalar(value):
        if value.dtype.kind not in "biuf":
            raise CheckFailure(
                f"{exercise}: {name} is a {value.dtype} scalar, expected a real number"
            )
        array = np.array(value, dtype=dtype)
    else:
        raise CheckFailure(
            f"{exercise}: {name} should be a numpy array or a number, got {kind.__name__}"
            + (" (did you forget to return it?)" if value is None else "")
        )
    return array


def check_shape(exercise: str, name: str, got: np.ndarray, expected_shape: Sequence[int]) -> None:
    """Fail unless ``got.shape == expected_shape``, with a message showing both."""
    expected_shape = tuple(expected_shape)
    if tuple(got.shape) != expected_shape:
        raise CheckFailure(
            f"{exercise}: {name} has shape {tuple(got.shape)}, expected {expected_shape}"
        )


def check_tuple(exercise: str, got: Any, names: Sequence[str]) -> tuple:
    """Return ``got`` as a tuple after checking it is a tuple/list of ``len(names)`` items."""
    if type(got) not in (tuple, list):
        raise CheckFailure(
            f"{exercise}: expected a tuple ({', '.join(names)}), got {type(got).__name__}"
        )
    if len(got) != len(names):
        raise CheckFailure(
            f"{exercise}: expected {len(names)} values ({', '.join(names)}), got {len(got)}"
        )
    return tuple(got)


def assert_close(
    exercise: str,
    name: str,
    got: Any,
    expected: Any,
    *,
    atol: float = 1e-6,
    rtol: float = 1e-5,
) -> np.ndarray:
    """Return ``got`` as float64 after checking it matches ``expected`` in shape and value.

    The failure message names the exercise and either the shape mismatch, the non-finite entries,
    or the largest error, its index, and both values there.
    """
    expected_arr = to_numpy(exercise, f"reference {name}", expected)
    got_arr = to_numpy(exercise, name, got)
    check_shape(exercise, name, got_arr, expected_arr.shape)
    bad = ~np.isfinite(got_arr) & np.isfinite(expected_arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise CheckFailure(
            f"{exercise}: {name} has {int(bad.sum())} non-finite value(s), first at index {idx}: "
            f"{got_arr[idx]} (expected {expected_arr[idx]:.6g}); an overflow or a division by zero?"
        )
    err = np.abs(got_arr - expected_arr)
    tol = atol + rtol * np.abs(expected_arr)
    if got_arr.size and (err > tol).any():
        flat = int(np.argmax(err - tol))
        idx = np.unravel_index(flat, err.shape) if err.ndim else ()
        where = f" at index {tuple(int(i) for i in idx)}" if err.ndim else ""
        raise CheckFailure(
            f"{exercise}: {name} differs from the reference: largest error {err[idx]:.3g}{where} "
            f"(got {got_arr[idx]:.6g}, expected {expected_arr[idx]:.6g}; "
            f"tolerance atol={atol:g}, rtol={rtol:g}); {int((err > tol).sum())} of {err.size} "
            f"entries are off"
        )
    return got_arr


def numerical_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Return the central-difference gradient of scalar ``f`` at ``x``, same shape as ``x``.

    ``df/dx_i ~ (f(x + h e_i) - f(x - h e_i)) / (2h)``; ``x`` is left unchanged.
    """
    x = np.array(x, dtype=np.float64, copy=True)
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        plus = float(f(x))
        flat[i] = old - h
        minus = float(f(x))
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * h)
    return grad


def gradcheck(
    exercise: str,
    f: Callable[[np.ndarray], float],
    x: np.ndarray,
    analytic: Any,
    *,
    h: float = 1e-5,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> None:
    """Fail unless ``analytic`` matches the central-difference gradient of ``f`` at ``x``.

    The message shows both numbers where they differ most.
    """
    numeric = numerical_gradient(f, x, h)
    try:
        assert_close(exercise, "gradient", analytic, numeric, atol=atol, rtol=rtol)
    except CheckFailure as err:
        raise CheckFailure(
            str(err).replace("differs from the reference", "differs from the central-difference gradient")
        ) from None


class ForbiddenCall(CheckFailure):
    """The learner's function called an op that the exercise asks them to rebuild."""


@contextmanager
def forbidden(exercise: str, *targets: tuple[Any, str],
              rebuild: str = "rebuild yourself; write it from the simpler operations instead") -> Iterator[None]:
    """Within the block, make each ``(owner, attribute)`` in ``targets`` raise :class:`ForbiddenCall`.

    Used by hidden tests: an exercise is not solved by calling the op it rebuilds. The original
    attributes are always restored. ``rebuild`` ends the message ("... which this exercise asks you
    to <rebuild>"): how the learner should build it instead.
    """
    missing = object()
    saved = []
    try:
        for owner, attr in targets:
            getattr(owner, attr)  # fail early, with AttributeError, on a misspelt target
            # Save what the owner itself holds (a staticmethod stays a staticmethod), or note that
            # the attribute was inherited so restoring means deleting our shadow.
            original = vars(owner).get(attr, missing) if hasattr(owner, "__dict__") else missing
            label = f"{getattr(owner, '__name__', type(owner).__name__)}.{attr}"

            def raiser(*args: Any, _label: str = label, **kwargs: Any) -> Any:
                raise ForbiddenCall(f"{exercise}: your code called {_label}, which this exercise asks you to {rebuild}")

            saved.append((owner, attr, original))
            setattr(owner, attr, raiser)
        yield
    finally:
        for owner, attr, original in reversed(saved):
            if original is missing:
                delattr(owner, attr)
            else:
                setattr(owner, attr, original)


_PARSE_TRIES = 8
_PARSE_LOCK = threading.RLock()  # re-entrant: a finaliser run by a collection mid-parse may parse too


def parse_python(source: str, mode: str = "exec") -> ast.AST:
    """``ast.parse``, safe to call from several threads at once.

    CPython 3.11 keeps the AST builder's recursion counter per interpreter, not per thread: when two
    threads build ASTs at once (a garbage collection running a finaliser lets another thread in), one of
    them fails with ``SystemError: AST constructor recursion depth mismatch``. A Dask grading worker
    meets it for real: its event loop formats a traceback (3.11's traceback module parses the failing
    line) while the grading thread parses a notebook. Parses through this function take turns (a lock);
    against a parse elsewhere (the traceback module's), the error is spurious and parsing has no side
    effects, so it is tried again after a moment.
    """
    for attempt in range(_PARSE_TRIES):
        try:
            with _PARSE_LOCK:
                return ast.parse(source, mode=mode)
        except SystemError as err:
            if "recursion depth mismatch" not in str(err) or attempt == _PARSE_TRIES - 1:
                raise
            time.sleep(0.001 * 2**attempt)
    raise AssertionError("unreachable")


def parse_cell(source: str) -> ast.AST | None:
    """The AST of notebook code, IPython magics (``%...``, ``!...``) blanked; None if it is not Python."""
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    try:
        return parse_python("\n".join(lines))
    except SyntaxError:
        return None


def _spelled(node: ast.AST) -> str:
    """``scipy.special.log_softmax`` for an attribute chain, ``(...).log_softmax`` for one on an expression."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_spelled(node.value)}.{node.attr}"
    return "(...)"


def rebuilt_ops_used(source: str, ops: Sequence[str]) -> list[str]:
    """Where the code ``source`` reaches one of ``ops`` in any spelling; ``[]`` when it does not.

    An answer that rebuilds an op may not call that op. Counted, for an op ``log_softmax``: an
    attribute of anything (``F.log_softmax``, ``z.log_softmax()``, ``scipy.special.log_softmax``), an
    import (``from torch.nn.functional import log_softmax as ls``), a string that is the name
    (``getattr(F, "log_softmax")``), the bare name when the code does not define it itself (a
    function another cell defined, e.g. another exercise's answer), and any ``import *``. Defining a
    function of that name is fine. An op written with a leading dot (``".log_softmax"``) counts only as an attribute,
    an import or a string: the learner's own function of that name may be called. Computed names
    (``getattr(F, "log_" + "softmax")``) are not seen here; the grader flags them as dynamic code,
    and hidden tests still block the op at run time.
    """
    tree = parse_cell(source)
    if tree is None:
        return []
    anywhere = {op.lstrip(".") for op in ops}
    bare = {op for op in ops if not op.startswith(".")}
    defined = _names_defined(tree)
    found = []
    for node in ast.walk(tree):
        found += [(getattr(node, "lineno", 0), what) for what in _op_uses(node, anywhere, bare - defined)]
    return [f"{what} (line {line})" for line, what in sorted(set(found))]


def _names_defined(tree: ast.AST) -> set[str]:
    """Names the code binds itself (its own functions, variables, arguments), not by import."""
    defined = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
    return defined


def _op_uses(node: ast.AST, anywhere: set[str], bare: set[str]) -> list[str]:
    """How ``node`` reaches the ops (see :func:`rebuilt_ops_used`): one entry per use, none when it does not."""
    if isinstance(node, ast.Attribute) and node.attr in anywhere:
        return [_spelled(node)]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        where = f"from {node.module} " if isinstance(node, ast.ImportFrom) else ""
        # a star import brings names the check cannot see, so it counts too
        return [f"{where}import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")
                for alias in node.names
                if alias.name == "*" or alias.name.split(".")[-1] in anywhere or (alias.asname or "") in bare]
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in anywhere:
        return [repr(node.value)]
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in bare:
        return [node.id]
    return []


def rebuilds(exercise: str, function: Any, *ops: str) -> None:
    """Visible check: fail when the learner's ``function`` uses one of ``ops``, the ops the exercise rebuilds.

    The static check of :func:`rebuilt_ops_used` on the function's source. The grader runs the same
    check on the submitted cell itself (where the function is only a stand-in, this returns quietly).
    """
    if not inspect.isfunction(function):
        return
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):
        return
    used = rebuilt_ops_used(source, ops)
    if used:
        names = ", ".join(op.lstrip(".") for op in ops)
        raise CheckFailure(f"{exercise}: your answer uses {used[0]}; this exercise rebuilds {names}, so the answer "
                           f"may not call {'it' if len(ops) == 1 else 'them'} in any spelling")


def random_inputs(seed: int, *shapes: Sequence[int], scale: float = 1.0) -> list[np.ndarray]:
    """Return float64 standard-normal arrays of the given shapes from a seeded generator."""
    rng = np.random.default_rng(seed)
    return [scale * rng.standard_normal(tuple(s)) for s in shapes]


class Variant(dict):
    """An exercise's per-learner values (:func:`variant`): a dict whose keys also read as attributes."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"this variant has no value {key!r}; it has {sorted(self)}") from None


def variant(name: str, **values: Any) -> Variant:
    """Return the values of the exercise ``name`` in this copy of the notebook, e.g. ``V.size`` or ``V["size"]``.

    A notebook declares the values an exercise may take (``metadata.dlbook.variants``); the line
    ``V = check.variant("ch03_conv2d_naive", n=2, ...)`` holds the instructor's values in the source,
    and ``python -m autograder release --per-student`` writes each learner's own values into it (drawn
    from the course secret, the learner's id and ``name``). The grader re-derives the same values, so a
    test reads exactly what the learner's notebook shows. Here it only checks and returns them.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"variant: expected the exercise's name as a non-empty str, got {name!r}")
    for key, value in values.items():
        if not _plain_value(value):
            raise TypeError(f"variant {name}: {key}={value!r} is not a plain value (expected an int, float, "
                            "str, bool, or a list of those)")
    return Variant(values)


def _plain_value(value: Any) -> bool:
    if type(value) in (list, tuple):
        return all(_plain_value(v) for v in value)
    return type(value) in (int, float, str, bool)


def _kolmogorov_sf(x: float) -> float:
    """P(sqrt(n) D > x) for the Kolmogorov-Smirnov statistic D, n large (the Kolmogorov distribution)."""
    if x < 0.2:
        return 1.0
    k = np.arange(1, 101)
    return float(min(1.0, max(0.0, 2 * np.sum((-1.0) ** (k - 1) * np.exp(-2 * k**2 * x**2)))))


def assert_normal_sample(exercise: str, name: str, sample: Any, std: float, mean: float = 0.0, *,
                         false_failure: float = 1e-9) -> np.ndarray:
    """Check that ``sample``'s entries look like independent N(mean, std^2) draws from *any* random stream.

    Three tests, each with a false-failure rate of ``false_failure / 3`` for a correct sampler: the
    sample mean (z test), the sample standard deviation (its standard error is ``std / sqrt(2(n-1))``;
    from 100 entries) and the shape of the distribution (Kolmogorov-Smirnov against the normal CDF;
    from 1,000 entries, so a uniform or a rounded draw with the right variance fails). Tolerances
    come from the sample size, so a correct answer that draws another stream than the reference
    passes (all but once in ``1 / false_failure`` runs) and a wrong scale fails once ``n`` is large.
    """
    arr = to_numpy(exercise, name, sample).ravel()
    n = arr.size
    if not n >= 2:
        raise CheckFailure(f"{exercise}: {name} has {n} entries, expected at least 2 random draws")
    if not np.isfinite(arr).all():
        raise CheckFailure(f"{exercise}: {name} has non-finite entries; expected finite normal draws")
    alpha = false_failure / 3
    z = float(torch.special.ndtri(torch.tensor(1 - alpha / 2, dtype=torch.float64)))
    got_mean, got_std = float(arr.mean()), float(arr.std(ddof=1))
    if abs(got_mean - mean) > z * std / np.sqrt(n):
        raise CheckFailure(f"{exercise}: {name} has mean {got_mean:.4g} over {n} entries, expected {mean:.4g} "
                           f"(within {z * std / np.sqrt(n):.2g})")
    if n >= 100 and abs(got_std / std - 1) > z / np.sqrt(2 * (n - 1)):
        raise CheckFailure(f"{exercise}: {name} has standard deviation {got_std:.4g} over {n} entries, expected "
                           f"{std:.4g} (within {100 * z / np.sqrt(2 * (n - 1)):.2g} %)")
    if n >= 1000:
        x = np.sort((arr - mean) / std)
        cdf = torch.special.ndtr(torch.from_numpy(x)).numpy()
        d = max(float(np.max(np.arange(1, n + 1) / n - cdf)), float(np.max(cdf - np.arange(n) / n)))
        p = _kolmogorov_sf(np.sqrt(n) * d)
        if p < alpha:
            raise CheckFailure(f"{exercise}: {name} does not look normally distributed (Kolmogorov-Smirnov "
                               f"distance {d:.3g} over {n} entries, p = {p:.2g}); expected normal draws, "
                               f"e.g. from torch.randn")
    return arr
