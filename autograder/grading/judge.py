"""The judge: runs a chapter's test cells in the grader's own process and decides the points.

A test cell (visible checks and hidden tests alike) is never sent to the learner's kernel. The
judge executes it here, in a namespace built from the reference notebook's own setup statements
(the imports and helpers the tests need, found by a static slice of the setup cells), where every
name a solution cell defines (``conv2d_naive``, ``Value``, ``Adam``...) is a :class:`LearnerObject`:
using it asks the learner's kernel (through :mod:`.agent`) to call the learner's function, read an
attribute, apply an operator. What comes back is plain data, decoded without pickle (JSON, and
``numpy.load(allow_pickle=False)`` for arrays and tensors) within size limits; objects that are not
plain data stay in the kernel and are used through further requests.

So the verdict is the judge's: the tests, expected values and tolerances live only in this process;
``check``, ``np``, ``torch`` and dlbook's references are the judge's own; a learner object's ``==``
is never called (a learner object equals only itself); and nothing the learner's process does to
its own interpreter (patched functions, transformers, trace hooks, signal handlers) reaches here.
Arrays and tensors the tests pass to learner code are *mirrored*: the kernel's copy and the judge's
are synchronised before and after every request, so in-place updates (an optimizer's ``step``)
work as in a notebook. The judge's own functions cross as callbacks that the kernel can only call.

Hidden tests that draw inputs with ``check.random_inputs`` draw them from a seed salted per grading
run (``Settings.judge_seed``, recorded in the report), so a learner cannot tune answers to fixed
hidden inputs.
"""

from __future__ import annotations

import ast
import base64
import builtins
import collections.abc
import contextlib
import functools
import importlib
import io
import operator
import os
import pickle
import secrets
import select
import socket
import time
import types
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from .agent import (
    CONTAINERS,
    MAX_FRAME,
    ProtocolError,
    array_to_b64,
    b64_to_array,
    encode_plain,
    finite_float,
    recv_frame,
    resolve,
    send_frame,
    tensor_fields,
)
from .agent import tensor_from_fields as _tensor_from_fields
from .notebook import _parse

HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
MAX_DEPTH = 64


class JudgeAbort(BaseException):  # noqa: N818 - a BaseException, so a test's ``except Exception`` cannot swallow it
    """The learner's kernel stopped answering (timeout, death, broken protocol): the test did not pass."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class LearnerError(Exception):
    """An exception raised by the learner's code that is not a builtin exception type."""


# --- namespace: the reference's setup, sliced ----------------------------------------------------

def _bound_and_free(node: ast.AST) -> tuple[set[str], set[str]]:
    """Return (names a top-level statement binds, names it reads that it does not bind itself)."""
    bound, used = set(), set()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        bound.add(node.name)
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            (bound if isinstance(sub.ctx, (ast.Store, ast.Del)) and sub in _top_targets(node) else used).add(sub.id)
        elif isinstance(sub, (ast.Import, ast.ImportFrom)):
            for alias in sub.names:
                bound.add((alias.asname or alias.name).split(".")[0])
    inner = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.arg):
            inner.add(sub.arg)
        elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
            inner.add(sub.id)
        elif isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and sub is not node:
            inner.add(sub.name)
    return bound, used - bound - inner - set(dir(builtins))


def _top_targets(node: ast.AST) -> set[ast.AST]:
    """Return the Name nodes a statement binds at module level (not inside functions or comprehensions)."""
    found: set[ast.AST] = set()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return found

    def visit(n: ast.AST) -> None:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.ListComp, ast.SetComp,
                          ast.DictComp, ast.GeneratorExp)) and n is not node:
            return
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            found.add(n)
        for child in ast.iter_child_nodes(n):
            visit(child)

    visit(node)
    return found


def learner_names(ref: list[dict]) -> list[str]:
    """Return the names the reference's solution cells define at top level (what the tests ask the kernel for)."""
    names: list[str] = []
    for cell in ref:
        tree = _parse(cell["source"]) if cell["kind"] == "solution" else None
        for node in tree.body if tree else []:
            for name in _bound_and_free(node)[0]:
                if name not in names:
                    names.append(name)
    return names


def setup_slice(ref: list[dict]) -> str:
    """Return the setup statements the test cells need (imports, helpers, data), in notebook order."""
    learner = set(learner_names(ref))
    needed: set[str] = set()
    for cell in ref:
        tree = _parse(cell["source"]) if cell["kind"] == "test" else None
        bound, free = set(), set()
        for node in tree.body if tree else []:
            b, f = _bound_and_free(node)
            bound, free = bound | b, free | f
        needed |= free - bound  # a name the cell binds anywhere is its own (tests bind before they read)
    needed -= learner
    statements = [node for cell in ref if cell["kind"] == "code" for node in (getattr(_parse(cell["source"]),
                                                                                  "body", None) or [])]
    keep = []
    for node in reversed(statements):
        bound, free = _bound_and_free(node)
        if bound & needed:
            keep.append(node)
            needed |= free - learner
    return "\n".join(ast.unparse(node) for node in reversed(keep))


# --- values: judge -> kernel ----------------------------------------------------------------------

def _importable(obj) -> tuple[str, str] | None:
    """Return (module, qualname) when ``obj`` is what importing that name gives (the kernel can import it)."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname or module == "__main__":
        return None
    try:
        found = resolve(module, qualname)
    except (ImportError, AttributeError):
        return None
    return (module, qualname) if found is obj else None


def _owner_name(owner) -> str:
    if isinstance(owner, types.ModuleType):
        return owner.__name__
    return f"{owner.__module__}:{owner.__qualname__}"


class LearnerObject:
    """A value that lives in the learner's kernel: a name a solution cell defined, or an object it returned.

    Every use is a request to the kernel; what comes back is plain data (or another LearnerObject).
    Equality and hashing are by identity, here, without asking the learner's code.
    """

    __slots__ = ("_judge_conn", "_judge_spec", "_judge_type", "__weakref__")

    def __init__(self, conn: Connection, spec: dict, type_name: str):
        object.__setattr__(self, "_judge_conn", conn)
        object.__setattr__(self, "_judge_spec", spec)
        object.__setattr__(self, "_judge_type", type_name)

    def __repr__(self) -> str:
        spec = object.__getattribute__(self, "_judge_spec")
        what = spec.get("name") or f"{object.__getattribute__(self, '_judge_type')} object"
        return f"<learner's {what}>"

    def __getattr__(self, attr: str):
        if attr.startswith("_judge_"):
            raise AttributeError(attr)
        return self._judge_conn.request({"op": "getattr", "target": self._judge_spec, "attr": attr})

    def __setattr__(self, attr: str, value) -> None:
        self._judge_conn.request({"op": "setattr", "target": self._judge_spec, "attr": attr,
                                  "value": self._judge_conn.encode(value)})

    def __call__(self, *args, **kwargs):
        conn = self._judge_conn
        return conn.request({"op": "call", "target": self._judge_spec, "args": conn.encode(list(args)),
                             "kwargs": conn.encode(kwargs), "forbid": conn.forbid_list()})

    def __reduce__(self):
        """Pickled (a test function sent to run in the kernel, see ``launch``): the kernel's own name."""
        spec = object.__getattribute__(self, "_judge_spec")
        if "name" not in spec:
            raise TypeError("a learner object returned by a call cannot be sent back inside a function")
        return (operator.methodcaller("learner_name", spec["name"]), (_AgentModule(),))

    def __eq__(self, other) -> bool:
        return self is other

    def __ne__(self, other) -> bool:
        return self is not other

    def __hash__(self) -> int:
        return id(self)

    def __iter__(self):
        items = self._judge_conn.request({"op": "iter", "target": self._judge_spec})
        return iter(items)

    def _judge_apply(self, fn: str, *args, want: type | None = None):
        value = self._judge_conn.request({"op": "apply", "fn": fn, "args": self._judge_conn.encode(list(args))})
        if want is not None and type(value) is not want:
            raise TypeError(f"{fn.split('.')[-1]}() of the learner's object gave {type(value).__name__}, "
                            f"expected {want.__name__}")
        return value

    def __len__(self) -> int:
        return self._judge_apply("builtins.len", self, want=int)

    def __float__(self) -> float:
        return self._judge_apply("builtins.float", self, want=float)

    def __int__(self) -> int:
        return self._judge_apply("builtins.int", self, want=int)

    def __index__(self) -> int:
        return self._judge_apply("operator.index", self, want=int)

    def __bool__(self) -> bool:
        return self._judge_apply("builtins.bool", self, want=bool)

    def __instancecheck__(self, obj) -> bool:
        return self._judge_apply("builtins.isinstance", obj, self, want=bool)

    def __getitem__(self, key):
        return self._judge_apply("operator.getitem", self, key)

    def __setitem__(self, key, value) -> None:
        self._judge_apply("operator.setitem", self, key, value)

    def __contains__(self, item) -> bool:
        return self._judge_apply("operator.contains", self, item, want=bool)


def _binary(name: str):
    def forward(self, other):
        return self._judge_apply(f"operator.{name}", self, other)

    def reverse(self, other):
        return self._judge_apply(f"operator.{name}", other, self)

    return forward, reverse


for _op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift",
            "rshift"):
    _fwd, _rev = _binary(_op + "_" if _op in ("and", "or") else _op)
    setattr(LearnerObject, f"__{_op}__", _fwd)
    setattr(LearnerObject, f"__r{_op}__", _rev)
for _op in ("lt", "le", "gt", "ge"):
    setattr(LearnerObject, f"__{_op}__", _binary(_op)[0])
for _op in ("neg", "pos", "abs", "invert"):
    setattr(LearnerObject, f"__{_op}__", lambda self, _n=_op: self._judge_apply(f"operator.{_n}", self))


class _AgentModule:
    """Pickles as the kernel's own ``_dlbook_agent`` module (imported there by name)."""

    def __reduce__(self):
        return (importlib.import_module, ("_dlbook_agent",))


@dataclass
class _Mirror:
    key: int
    ref: weakref.ref
    state: object = None  # as last seen by both sides


@dataclass
class Connection:
    """The judge's end of one ``serve`` session with the learner's kernel."""

    sock: socket.socket
    alive: object  # () -> bool: the kernel process still runs
    deadline: float
    objects: dict = field(default_factory=dict)  # kernel handle -> LearnerObject (so id() is stable)
    callbacks: dict = field(default_factory=dict)  # key -> judge callable the kernel may call
    mirrors: dict = field(default_factory=dict)  # id(judge array/tensor) -> _Mirror
    shared: dict = field(default_factory=dict)  # id(judge module/object) -> (key, object)
    forbid: list = field(default_factory=list)  # stack of (owner name, attr, exercise) while check.forbidden runs
    requests: int = 0
    next_key: int = 0
    dropped: list = field(default_factory=list)  # mirror keys whose judge object is gone (the kernel forgets them)

    def _key(self) -> int:
        self.next_key += 1
        return self.next_key

    def forbid_list(self) -> list:
        return [list(t) for t in self.forbid]

    # encoding the judge's values for the kernel
    def encode(self, value, depth: int = 0):
        if depth > MAX_DEPTH:
            raise TypeError("a value nested too deeply to pass to the learner's code")
        if value is None or type(value) in (bool, int, str) or finite_float(value):
            return value
        if isinstance(value, LearnerObject):
            if object.__getattribute__(value, "_judge_conn") is not self:
                raise TypeError("a learner object from another test cannot be used here")
            spec = object.__getattribute__(value, "_judge_spec")
            return {"$t": "lname", "name": spec["name"]} if "name" in spec else {"$t": "ref", "h": spec["h"]}
        data = encode_plain(value, lambda v: self.encode(v, depth + 1))
        if data is None:
            data = self._encode_array_like(value)
        if data is None:
            data = self._encode_object(value, depth)
        return data

    def _encode_array_like(self, value) -> dict | None:
        """numpy and torch values: arrays and tensors mirrored, their scalars, dtypes, sizes and devices."""
        import numpy as np
        import torch

        kind = type(value)
        if kind is np.ndarray or isinstance(value, torch.Tensor):
            return self._mirror(value)
        if isinstance(value, np.generic):
            return {"$t": "npscalar", "npy": array_to_b64(np.asarray(value))}
        if kind is np.dtype:
            return {"$t": "npdtype", "v": value.str}
        if kind is torch.Size:
            return {"$t": "size", "v": list(value)}
        if kind is torch.dtype:
            return {"$t": "dtype", "v": str(value).removeprefix("torch.")}
        if kind is torch.device:
            return {"$t": "device", "v": str(value)}
        return None

    def _encode_object(self, value, depth: int) -> dict:
        """Modules, optimizers, iterators, importable functions, callbacks, and anything picklable."""
        import torch

        if isinstance(value, torch.nn.Module):
            return self._shared(value, module=True)
        if isinstance(value, torch.optim.Optimizer):
            return self._optimizer(value)
        if isinstance(value, collections.abc.Iterator):  # e.g. a generator of parameters: its items, as an iterator
            return {"$t": "iter", "v": [self.encode(v, depth + 1) for v in value]}
        named = _importable(value)
        if named is not None:
            return {"$t": "fn", "module": named[0], "qualname": named[1]}
        if callable(value):
            key = self._key()
            self.callbacks[key] = value
            return {"$t": "cb", "k": key}  # no name: nothing of the test code crosses
        return self._shared(value, module=False)

    def _tensor_state(self, value):
        import torch

        if isinstance(value, torch.Tensor):
            grad = value.grad if value.is_leaf else None
            return (value.detach().clone(), None if grad is None else grad.detach().clone(), bool(value.requires_grad))
        return value.copy()

    def _encode_state(self, state) -> dict:
        if isinstance(state, tuple):
            data, grad, requires_grad = state
            return {"$t": "tuple", "v": [{"$t": "tensor", **tensor_fields(data)},
                                         None if grad is None else {"$t": "tensor", **tensor_fields(grad)},
                                         requires_grad]}
        return {"$t": "ndarray", "npy": array_to_b64(state)}

    def _register(self, value) -> _Mirror:
        old = self.mirrors.get(id(value))
        if old is not None:  # a dead object's id, reused: the kernel can forget the old mirror
            self.dropped.append(old.key)
        mirror = _Mirror(self._key(), weakref.ref(value), self._tensor_state(value))
        self.mirrors[id(value)] = mirror
        return mirror

    def _mirror(self, value) -> dict:
        import torch

        mirror = self.mirrors.get(id(value))
        if mirror is not None and mirror.ref() is value:
            return {"$t": "mirror", "m": mirror.key}
        mirror = self._register(value)
        init = self._encode_state(mirror.state)
        if isinstance(value, torch.Tensor):
            data, grad, requires_grad = mirror.state
            init = {"$t": "tensor", **tensor_fields(data), "param": type(value) is torch.nn.Parameter,
                    "requires_grad": requires_grad, "grad": None if grad is None else tensor_fields(grad),
                    # a tensor computed by the test (a loss): back-propagating through it in the kernel asks
                    # the judge to go on through the judge's graph (op "jgrad")
                    "judge_graph": not value.is_leaf and requires_grad}
        return {"$t": "mirror", "m": mirror.key, "init": init}

    def _shared(self, value, module: bool) -> dict:
        known = self.shared.get(id(value))
        if known is not None and known[1] is value:
            return {"$t": "shared", "k": known[0]}
        try:
            blob = base64.b64encode(pickle.dumps(value)).decode()
        except Exception as err:  # noqa: BLE001 - say what could not be sent
            raise TypeError(f"cannot pass a {type(value).__name__} to the learner's code ({err})") from None
        key = self._key()
        self.shared[id(value)] = (key, value)
        if not module:
            return {"$t": "pickle", "k": key, "pickle": blob}
        tensors = [*value.parameters(), *value.buffers()]
        return {"$t": "module", "k": key, "pickle": blob, "mirrors": [self._register(t).key for t in tensors]}

    def _optimizer(self, opt) -> dict:
        """An optimizer over mirrored parameters: rebuilt in the kernel from its class, groups and state."""
        known = self.shared.get(id(opt))
        if known is not None and known[1] is opt:
            return {"$t": "shared", "k": known[0]}
        named = _importable(type(opt))
        if named is None:
            raise TypeError(f"cannot pass a {type(opt).__name__} to the learner's code")
        key = self._key()
        self.shared[id(opt)] = (key, opt)
        groups = [self.encode({k: (list(v) if k == "params" else v) for k, v in g.items()}) for g in opt.param_groups]
        state = opt.state_dict()["state"]
        return {"$t": "optimizer", "k": key, "module": named[0], "qualname": named[1], "groups": groups,
                "state": self.encode({int(i): dict(s) for i, s in state.items()})}

    def sync_out(self) -> dict:
        """Return the state of every live mirrored array/tensor the judge changed since the kernel saw it."""
        out = {}
        for ident, mirror in list(self.mirrors.items()):
            value = mirror.ref()
            if value is None:
                del self.mirrors[ident]
                self.dropped.append(mirror.key)
                continue
            state = self._tensor_state(value)
            if not _same_state(mirror.state, state):
                mirror.state = state
                out[str(mirror.key)] = self._encode_state(state)
        return out

    def sync_in(self, states) -> None:
        """Apply the kernel's changes to mirrored arrays/tensors (checked: same kind, shape and dtype)."""
        if not isinstance(states, dict):
            raise ProtocolError("a sync that is not an object")
        by_key = {m.key: m for m in self.mirrors.values()}
        for key, data in states.items():
            mirror = by_key.get(int(key)) if str(key).isdigit() else None
            value = mirror.ref() if mirror else None
            if value is None:
                continue
            state = self.decode(data)
            _write_state(value, state)
            mirror.state = self._tensor_state(value)

    # decoding the kernel's data: plain values only, nothing of the learner's runs here
    def decode(self, data, depth: int = 0):
        if depth > MAX_DEPTH:
            raise ProtocolError("a value nested too deeply")
        if data is None or type(data) in (bool, int, float, str):
            return data
        if type(data) is list:
            raise ProtocolError("an untagged list")
        if type(data) is not dict:
            raise ProtocolError(f"a value of JSON type {type(data).__name__}")
        tag = data.get("$t")
        decoder = _DECODERS.get(tag) if type(tag) is str else None
        if decoder is None:
            raise ProtocolError(f"an unknown value tag {str(tag)[:50]!r}")
        return decoder(self, data, depth)

    def _decode_container(self, data: dict, depth: int):
        items = [self.decode(v, depth + 1) for v in _items(data, "v")]
        try:
            return CONTAINERS[data["$t"]](items)
        except TypeError as err:
            raise ProtocolError(f"a {data['$t']} that cannot be built ({err})") from None

    def _decode_dict(self, data: dict, depth: int) -> dict:
        keys, values = _items(data, "k"), _items(data, "v")
        if len(keys) != len(values):
            raise ProtocolError("a dict with unequal keys and values")
        try:
            return {self.decode(k, depth + 1): self.decode(v, depth + 1) for k, v in zip(keys, values, strict=True)}
        except TypeError as err:
            raise ProtocolError(f"a dict that cannot be built ({err})") from None

    def _decode_slice(self, data: dict, depth: int) -> slice:
        parts = [self.decode(v, depth + 1) for v in _items(data, "v")]
        if len(parts) != 3 or any(p is not None and type(p) is not int for p in parts):
            raise ProtocolError("a slice that is not three ints or None")
        return slice(*parts)

    def _decode_tensor(self, data: dict, depth: int):
        tensor = self._tensor(data)
        return self._remote_graph(tensor, data["graph"]) if type(data.get("graph")) is int else tensor

    def _decode_size(self, data: dict, depth: int):
        import torch

        sizes = [self.decode(v, depth + 1) for v in _items(data, "v")]
        if any(type(v) is not int for v in sizes):
            raise ProtocolError("a torch.Size of non-ints")
        return torch.Size(sizes)

    def _decode_ref(self, data: dict, depth: int):
        handle = data.get("h")
        if type(handle) is not int:
            raise ProtocolError("a handle that is not an int")
        obj = self.objects.get(handle)
        if obj is None:
            obj = LearnerObject(self, {"h": handle}, str(data.get("type", "?"))[:200])
            self.objects[handle] = obj
        return obj

    def _tensor(self, data: dict):
        import torch

        try:
            t = _tensor_from_fields(data)
            if data.get("param") is True:
                t = torch.nn.Parameter(t, requires_grad=data.get("requires_grad") is True)
            elif data.get("requires_grad") is True and (t.is_floating_point() or t.is_complex()):
                t.requires_grad_(True)
            grad = data.get("grad")
            if grad is not None:
                if type(grad) is not dict:
                    raise ProtocolError("a tensor gradient that is not an object")
                g = _tensor_from_fields(grad)
                if g.shape == t.shape and g.dtype == t.dtype and t.is_leaf:
                    t.grad = g
        except (RuntimeError, TypeError, ValueError) as err:
            raise ProtocolError(f"a tensor that cannot be built ({err})") from None
        return t

    def _remote_graph(self, tensor, handle: int):
        """Return ``tensor`` as the output of the kernel's graph: backward asks the kernel for the gradients.

        The inputs are the mirrored tensors that require grad: the learner's computation may have used them.
        """
        inputs, keys = [], []
        for mirror in self.mirrors.values():
            value = mirror.ref()
            if value is not None and getattr(value, "requires_grad", False):
                inputs.append(value)
                keys.append(mirror.key)
        if not inputs or not (tensor.is_floating_point() or tensor.is_complex()):
            return tensor.detach()
        return _remote_graph_class().apply(tensor.detach(), self, handle, keys, *inputs)

    # the conversation
    def recv(self) -> dict:
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise JudgeAbort("timeout", "the test timed out waiting for the learner's code")
            ready, _, _ = select.select([self.sock], [], [], min(0.5, remaining))
            if ready:
                break
            if not self.alive():
                raise JudgeAbort("crashed", "the learner's kernel died")
        self.sock.settimeout(max(self.deadline - time.monotonic(), 1.0))
        try:
            return recv_frame(self.sock, MAX_FRAME)
        except (EOFError, OSError) as err:
            status = "timeout" if isinstance(err, TimeoutError) else "crashed"
            raise JudgeAbort(status, "the learner's kernel stopped answering" if status == "crashed" else
                             "the test timed out waiting for the learner's code") from None
        except ProtocolError as err:
            raise JudgeAbort("error", f"the learner's kernel sent {err}") from None

    def request(self, message: dict):
        self.requests += 1
        message["sync"] = self.sync_out()
        message["drop"], self.dropped = self.dropped, []
        self._send(message)
        while True:
            reply = self.recv()
            op = reply.get("op")
            try:
                self.sync_in(reply.get("sync", {}))
                if op == "result":
                    return self.decode(reply.get("value"))
                if op == "callback":
                    self._callback(reply)
                    continue
                if op == "jgrad":
                    self._judge_backward(reply)
                    continue
                if op != "error":
                    raise ProtocolError(f"an unexpected message {str(op)[:50]!r}")
                error = _learner_exception(reply)
            except JudgeAbort:
                raise
            except (ProtocolError, ValueError, TypeError, KeyError, OverflowError, EOFError, RecursionError,
                    MemoryError, pickle.UnpicklingError) as err:  # whatever malformed data makes the decoders raise
                raise JudgeAbort("error", f"the learner's kernel sent {type(err).__name__}: {str(err)[:200]}") from None
            raise error

    def launch(self, fn, world_size: int, args: tuple = (), kwargs: dict | None = None):
        """``dlbook.distributed.launch`` run by the kernel: ``fn`` is the probe half of a distributed test.

        Worker processes of the learner's code must run in the learner's sandbox, so the function the
        test hands to ``launch`` (it calls the learner's function on the test's inputs and returns what
        came out) runs there; its results come back as data and the judge compares them.
        """
        import cloudpickle

        blob = base64.b64encode(cloudpickle.dumps(fn)).decode()
        return self.request({"op": "launch", "fn": blob, "world": int(world_size), "args": self.encode(list(args)),
                             "kwargs": self.encode(dict(kwargs or {}))})

    def _send(self, message: dict) -> None:
        try:
            send_frame(self.sock, message)
        except OSError:
            raise JudgeAbort("crashed", "the learner's kernel stopped answering") from None

    def _judge_backward(self, msg: dict) -> None:
        """The learner back-propagated into a tensor the test computed: go on through the judge's graph."""
        import torch

        mirror = next((m for m in self.mirrors.values() if m.key == msg.get("m")), None)
        value = mirror.ref() if mirror else None
        grad = self.decode(msg.get("grad"))
        if value is None or not isinstance(grad, torch.Tensor) or grad.shape != value.shape:
            raise ProtocolError("a backward into a tensor the judge does not hold")
        try:
            torch.autograd.backward(value, grad.to(value.dtype), retain_graph=True)
            reply = {"op": "cbresult", "value": None}
        except RuntimeError as err:
            reply = {"op": "cberror", "type": type(err).__name__}
        self._send({**reply, "sync": self.sync_out()})

    def _callback(self, msg: dict) -> None:
        fn = self.callbacks.get(msg.get("k"))
        if fn is None:
            raise ProtocolError("a callback that was never handed out")
        args, kwargs = self.decode(msg.get("args")), self.decode(msg.get("kwargs"))
        if type(args) is not list or type(kwargs) is not dict or any(type(k) is not str for k in kwargs):
            raise ProtocolError("callback arguments that are not a list and a dict")
        try:
            value = fn(*args, **kwargs)
            reply = {"op": "cbresult", "value": self.encode(value)}
        except Exception as err:  # noqa: BLE001 - only the type goes back: no test detail reaches the kernel
            reply = {"op": "cberror", "type": type(err).__name__}
        self._send({**reply, "sync": self.sync_out()})


@functools.cache  # built once, when first needed: torch is imported lazily
def _remote_graph_class():
    import torch

    class RemoteGraph(torch.autograd.Function):
        """The learner's computation, seen from the judge: its backward is computed by the kernel's autograd."""

        @staticmethod
        def forward(ctx, value, conn, handle, keys, *inputs):
            ctx.conn, ctx.handle, ctx.keys = conn, handle, keys
            ctx.shapes = [i.shape for i in inputs]
            return value.clone()

        @staticmethod
        def backward(ctx, grad_output):
            conn = ctx.conn
            grads = conn.request({"op": "grad", "h": ctx.handle, "inputs": ctx.keys, "forbid": conn.forbid_list(),
                                  "grad": {"$t": "tensor", **tensor_fields(grad_output)}})
            if type(grads) is not list or len(grads) != len(ctx.shapes):
                raise JudgeAbort("error", "the learner's kernel sent gradients that do not fit")
            for g, shape in zip(grads, ctx.shapes, strict=True):
                if g is not None and (not isinstance(g, torch.Tensor) or g.shape != shape):
                    raise JudgeAbort("error", "the learner's kernel sent a gradient of the wrong shape")
            return (None, None, None, None, *[None if g is None else g.detach() for g in grads])

    return RemoteGraph


def _items(data: dict, key: str) -> list:
    items = data.get(key)
    if type(items) is not list:
        raise ProtocolError(f"a container whose {key!r} is not a list")
    return items


def _str(data: dict, key: str) -> str:
    value = data.get(key)
    if type(value) is not str:
        raise ProtocolError(f"a field {key!r} that is not a string")
    return value


def _float(text) -> float:
    if type(text) is not str or len(text) > 64:
        raise ProtocolError("a float that is not a short string")
    try:
        return float(text)
    except ValueError:
        raise ProtocolError("a float that does not parse") from None


def _npscalar(data: dict):
    array = b64_to_array(_str(data, "npy"))
    if array.shape != ():
        raise ProtocolError("a numpy scalar that is not 0-d")
    return array[()]


def _npdtype(data: dict):
    import numpy as np

    try:
        dtype = np.dtype(_str(data, "v"))
    except TypeError as err:
        raise ProtocolError(f"an unknown dtype ({err})") from None
    if dtype.hasobject:
        raise ProtocolError("an object dtype")
    return dtype


def _torch_dtype(data: dict):
    import torch

    dtype = getattr(torch, _str(data, "v"), None)
    if not isinstance(dtype, torch.dtype):
        raise ProtocolError("an unknown torch dtype")
    return dtype


def _torch_device(data: dict):
    import torch

    try:
        return torch.device(_str(data, "v"))
    except RuntimeError as err:
        raise ProtocolError(f"an unknown device ({err})") from None


# How each value tag the kernel may send is rebuilt: (connection, data, depth) -> value.
_DECODERS = {
    **dict.fromkeys(CONTAINERS, Connection._decode_container),
    "dict": Connection._decode_dict,
    "float": lambda conn, data, depth: _float(data.get("v")),
    "complex": lambda conn, data, depth: complex(_float(data.get("re")), _float(data.get("im"))),
    "bytes": lambda conn, data, depth: base64.b64decode(_str(data, "b64"), validate=True),
    "slice": Connection._decode_slice,
    "ellipsis": lambda conn, data, depth: Ellipsis,
    "ndarray": lambda conn, data, depth: b64_to_array(_str(data, "npy")),
    "npscalar": lambda conn, data, depth: _npscalar(data),
    "npdtype": lambda conn, data, depth: _npdtype(data),
    "tensor": Connection._decode_tensor,
    "size": Connection._decode_size,
    "dtype": lambda conn, data, depth: _torch_dtype(data),
    "device": lambda conn, data, depth: _torch_device(data),
    "ref": Connection._decode_ref,
}


def _same_state(a, b) -> bool:
    import numpy as np
    import torch

    if isinstance(a, tuple) != isinstance(b, tuple):
        return False
    if isinstance(a, tuple):
        if a[2] != b[2] or (a[1] is None) != (b[1] is None):
            return False
        if a[0].shape != b[0].shape or a[0].dtype != b[0].dtype or not torch.equal(a[0], b[0]):
            return False
        return a[1] is None or (a[1].shape == b[1].shape and a[1].dtype == b[1].dtype and torch.equal(a[1], b[1]))
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))


def _write_state(value, state) -> None:
    """Write a mirrored state into the judge's own array/tensor, in place, if it fits."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        if type(state) is not tuple or len(state) != 3:
            raise ProtocolError("a tensor state that is not (data, grad, requires_grad)")
        data, grad, requires_grad = state
        if not isinstance(data, torch.Tensor) or data.shape != value.shape:
            raise ProtocolError("a mirrored tensor whose shape changed")
        if not torch.equal(value.detach(), data.to(value.dtype)):
            with torch.no_grad():
                value.copy_(data.to(value.dtype))
        if value.is_leaf:
            if grad is not None and (not isinstance(grad, torch.Tensor) or grad.shape != value.shape):
                raise ProtocolError("a gradient of the wrong shape")
            value.grad = None if grad is None else grad.to(value.dtype)
            if type(requires_grad) is bool and requires_grad != value.requires_grad and \
                    (value.is_floating_point() or not requires_grad):
                value.requires_grad_(requires_grad)
        return
    if type(state) is not np.ndarray or state.shape != value.shape:
        raise ProtocolError("a mirrored array whose shape changed")
    value[...] = state


def _learner_exception(reply: dict) -> BaseException:
    from dlbook import check

    kind, message = str(reply.get("type", "Error"))[:100], str(reply.get("message", ""))[:2000]
    if reply.get("forbidden") is True:
        return check.ForbiddenCall(message)
    cls = getattr(builtins, kind, None) if reply.get("builtin") is True else None
    if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, (StopIteration,
                                                                                     StopAsyncIteration)):
        try:
            return cls(message)
        except Exception:  # noqa: BLE001 - an exception type with another signature
            pass
    return LearnerError(f"{kind}: {message}")


# --- the check module as the tests see it in the judge -------------------------------------------

class _ModuleShim(types.ModuleType):
    """A dlbook module as the tests see it in the judge: the module's names, some of them redefined here."""

    def __init__(self, module: types.ModuleType, judge: Judge):
        super().__init__(module.__name__)
        # the module's names, except those the subclass redefines (an instance attribute would hide them)
        self.__dict__.update({k: v for k, v in vars(module).items() if not k.startswith("__") and
                              not any(k in vars(cls) for cls in type(self).__mro__[:-2])})
        self._judge, self._real = judge, module

    def __reduce__(self):  # sent inside a test function to the kernel (``launch``): the kernel's own module
        return (importlib.import_module, (self._real.__name__,))


class _JudgeCheck(_ModuleShim):
    """``dlbook.check`` for tests run by the judge: ``forbidden`` reaches the kernel; hidden inputs are salted."""

    @contextlib.contextmanager
    def forbidden(self, exercise, *targets):
        conn = self._judge.conn
        for owner, attr in targets:
            getattr(owner, attr)  # a misspelt target fails here, as in the notebook
        entries = [(_owner_name(owner), attr, exercise) for owner, attr in targets]
        conn.forbid.extend(entries)
        try:
            yield
        finally:
            del conn.forbid[len(conn.forbid) - len(entries):]

    def random_inputs(self, seed, *shapes, scale: float = 1.0):
        if self._judge.hidden:
            seed = (int(seed) * 1_000_003 + self._judge.seed) % (2**63)
        return self._real.random_inputs(seed, *shapes, scale=scale)


def _mark_hidden(source: str) -> str:
    """Replace the hidden-test markers by calls that tell the judge where hidden inputs are drawn."""
    lines = []
    for line in source.splitlines():
        stripped = line.strip()
        indent = line[: len(line) - len(line.lstrip())]
        if stripped.startswith(HIDDEN_BEGIN):
            lines.append(f"{indent}__dlbook_hidden__(True)")
        elif stripped.startswith(HIDDEN_END):
            lines.append(f"{indent}__dlbook_hidden__(False)")
        else:
            lines.append("" if stripped.startswith(("%", "!")) else line)
    return "\n".join(lines)


class Judge:
    """The tests of one notebook, run here against one learner kernel."""

    def __init__(self, ref: list[dict], seed: int, socket_dir: Path):
        self.ref, self.seed, self.hidden = ref, seed, False
        self.names = learner_names(ref)
        self.setup = setup_slice(ref)
        self.namespace: dict | None = None
        self.conn: Connection | None = None
        self.socket_path = socket_dir / "judge.sock"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.socket_path))
        os.chmod(self.socket_path, 0o666)  # the kernel runs as another uid; only its sandbox sees this path
        self.listener.listen(1)
        self.key = secrets.token_hex(16)

    def close(self) -> None:
        self.listener.close()

    def serve_code(self, inside_path: str) -> str:
        return f"__import__('_dlbook_agent').serve({inside_path!r}, {self.key!r})"

    def _namespace(self) -> dict:
        if self.namespace is None:
            ns: dict = {"__name__": "__dlbook_judge__", "__builtins__": builtins,
                        "__dlbook_hidden__": self._set_hidden}
            for name in self.names:
                ns[name] = LearnerObject(_LazyConn(self), {"name": name}, name)
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(self.setup, "<reference setup>", "exec"), ns)  # noqa: S102 - the reference's own code
            from dlbook import check, distributed

            shims = {id(check): _JudgeCheck(check, self), id(distributed): _JudgeDistributed(distributed, self)}
            for key, value in list(ns.items()):
                if id(value) in shims:
                    ns[key] = shims[id(value)]
            self.namespace = ns
        return self.namespace

    def _set_hidden(self, on: bool) -> None:
        self.hidden = bool(on)

    def accept(self, alive, deadline: float) -> Connection:
        """Wait for the kernel's agent to connect; return the connection (JudgeAbort if it does not)."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JudgeAbort("timeout", "the learner's kernel did not connect to the judge")
            ready, _, _ = select.select([self.listener], [], [], min(0.5, remaining))
            if ready:
                break
            if not alive():
                raise JudgeAbort("crashed", "the learner's kernel died before the test")
        sock, _ = self.listener.accept()
        conn = Connection(sock, alive, deadline)
        hello = conn.recv()
        if hello.get("op") != "hello" or hello.get("key") != self.key:
            sock.close()
            raise JudgeAbort("error", "the learner's kernel did not greet the judge properly")
        return conn

    def run_test(self, cell: dict, conn: Connection) -> dict:
        """Run one test cell against ``conn``; return ``{status: ok|error|timeout|crashed, error, stdout}``."""
        self.conn = conn
        ns = self._namespace()
        self.hidden = False
        out = io.StringIO()
        status, error = "ok", None
        try:
            # this connection's names: a learner's plain value (a number, an array) by value, anything else
            # (functions, classes, objects) as a proxy; objects of earlier tests are gone with their session
            values = conn.request({"op": "values", "names": list(self.names)})
            values = values if type(values) is dict else {}
            for name in self.names:
                known = values.get(name)
                if type(known) is dict and "v" in known:
                    ns[name] = known["v"]
                else:
                    ns[name] = LearnerObject(conn, {"name": name}, name)
            code = compile(_mark_hidden(cell["source"]), f"<test {cell['grade_id']}>", "exec")
            with contextlib.redirect_stdout(out):
                exec(code, ns)  # noqa: S102 - the reference's test, never the learner's
        except JudgeAbort as err:
            status, error = err.status, err.message
        except Exception as err:  # noqa: BLE001 - a failed test
            status, error = "error", f"{type(err).__name__}: {str(err)[:2000]}"
        finally:
            self.hidden = False
            try:
                send_frame(conn.sock, {"op": "done"})
            except OSError:
                pass
            conn.sock.close()
            self.conn = None
        return {"status": status, "error": error, "stdout": out.getvalue()[-20000:], "requests": conn.requests}


class _JudgeDistributed(_ModuleShim):
    """``dlbook.distributed`` for tests run by the judge: ``launch`` runs its workers in the learner's kernel."""

    def launch(self, fn, world_size, args=(), **kwargs):
        return self._judge.conn.launch(fn, world_size, tuple(args), kwargs)


class _LazyConn:
    """Stands in for a connection while the setup slice runs (setup code must not need the learner)."""

    def __init__(self, judge: Judge):
        self.judge = judge

    def request(self, message: dict):
        raise RuntimeError("the reference setup used a learner name before any test")

    def encode(self, value):
        raise RuntimeError("the reference setup used a learner name before any test")

    def forbid_list(self) -> list:
        return []


def judge_seed(seed: int | None) -> int:
    """Return the seed hidden inputs are salted with: ``seed`` if given, else a fresh random one."""
    return int(seed) if seed is not None else secrets.randbits(31)


__all__ = ["Connection", "Judge", "JudgeAbort", "LearnerError", "LearnerObject", "judge_seed", "learner_names",
           "setup_slice"]
