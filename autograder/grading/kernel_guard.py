"""Runs *inside* the learner's kernel: snapshot the grading session at start, then detect and undo tampering.

The grader copies this file into the sandbox (read-only) as ``_dlbook_guard.py`` and the kernel runs
``import _dlbook_guard; _dlbook_guard.install()`` before any learner code. The grader then evaluates
``__import__('_dlbook_guard').check(...)`` as a *user expression* of an execute request: IPython
evaluates user expressions with a plain ``eval``, outside input transformers, AST transformers and
custom exception handlers, and an empty cell never reaches the transformers at all.

``check`` returns a JSON string ``{"flags": [...]}``: each flag names one manipulation (and the guard
has already undone it). The guard is a source of *flags* only: the tests run in the judge, another
process (:mod:`.judge`), and nothing the guard says changes points.

This module only imports the standard library at import time; it must not import the autograder.
"""

from __future__ import annotations

import builtins
import importlib
import json
import os
import sys
import threading

# Modules whose public functions a learner could patch to make checks pass.
WATCHED = ["math", "numpy", "numpy.linalg", "numpy.testing", "torch", "torch.testing",
           "torch.nn.functional", "dlbook"]
SHELL_METHODS = ["run_cell", "run_cell_async", "_run_cell", "run_ast_nodes", "run_code", "transform_cell",
                 "transform_ast", "showtraceback", "_showtraceback", "user_expressions", "ev", "ex",
                 "should_run_async", "set_custom_exc"]
KERNEL_METHODS = ["do_execute", "execute_request", "send_response"]
BUILTINS = ["isinstance", "issubclass", "type", "abs", "len", "float", "int", "bool", "sum", "max", "min", "all",
            "any", "round", "range", "zip", "enumerate", "getattr", "hasattr", "repr", "str", "print", "id"]
EVENT_PREFIXES = ("IPython.", "ipykernel.", "matplotlib", "ipywidgets", "ipympl", "tqdm")

_snapshot: dict = {}


def _shell():
    from IPython import get_ipython

    return get_ipython()


def _callables(namespace: dict) -> dict:
    return {k: v for k, v in namespace.items() if callable(v) and not k.startswith("__")}


def _watch_module(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a missing optional module is simply not watched
        return
    _snapshot["modules"][name] = _callables(vars(module))


def _transformer_lists(ip) -> dict:
    manager = ip.input_transformer_manager
    return {
        "input_transformers_cleanup": ip.input_transformers_cleanup,
        "input_transformers_post": ip.input_transformers_post,
        "ast_transformers": ip.ast_transformers,
        "input_transformer_manager.cleanup_transforms": manager.cleanup_transforms,
        "input_transformer_manager.line_transforms": manager.line_transforms,
        "input_transformer_manager.token_transformers": manager.token_transformers,
    }


def install() -> None:
    """Take the pristine snapshot of the session (call once, before any learner code)."""
    ip = _shell()
    _snapshot["modules"] = {"builtins": {name: getattr(builtins, name) for name in BUILTINS}}
    # The grader lists the dlbook modules the reference notebook imports (importing all would be slow).
    for name in WATCHED + [m for m in os.environ.get("DLBOOK_GUARD_MODULES", "").split(",") if m]:
        _watch_module(name)
    try:
        import torch

        _snapshot["torch.Tensor"] = _callables(dict(vars(torch.Tensor)))
    except Exception:  # noqa: BLE001
        pass
    _snapshot["lists"] = {k: list(v) for k, v in _transformer_lists(ip).items()}
    _snapshot["shell_class"] = {m: getattr(type(ip), m, None) for m in SHELL_METHODS}
    kernel = getattr(ip, "kernel", None)
    _snapshot["kernel_class"] = {m: getattr(type(kernel), m, None) for m in KERNEL_METHODS} if kernel else {}
    _snapshot["shell_instance"] = {m: vars(ip)[m] for m in SHELL_METHODS if m in vars(ip)}
    _snapshot["events"] = {k: list(v) for k, v in ip.events.callbacks.items()}


def _from_library(obj) -> bool:
    """Return True for an object defined in an imported module (not in a notebook cell)."""
    module = getattr(obj, "__module__", None)
    if not (callable(obj) and isinstance(module, str) and module != "__main__" and module in sys.modules):
        return False
    where = str(getattr(sys.modules[module], "__file__", "") or "")
    if where.startswith(_library_roots()):  # read-only in the sandbox, even when they live under /tmp
        return True
    return not where.startswith((os.getcwd(), "/tmp", "/grade"))  # not a module the learner wrote


def _library_roots() -> tuple[str, ...]:
    """Directories of the installed Python, the venv and dlbook (never the learner's scratch space)."""
    roots = {sys.prefix, sys.base_prefix, os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
    dlbook = sys.modules.get("dlbook")
    if dlbook is not None and getattr(dlbook, "__file__", None):
        roots.add(os.path.dirname(os.path.realpath(dlbook.__file__)))
    return tuple(r.rstrip(os.sep) + os.sep for r in roots if r and r != os.sep)


def _restore_modules(flags: list[str]) -> None:
    for name, saved in _snapshot["modules"].items():
        module = sys.modules.get(name)
        if module is None:
            continue
        current = vars(module)
        for attr, obj in saved.items():
            new = current.get(attr, obj)
            if new is not obj:
                if _from_library(new):  # libraries rebind some of their own names lazily
                    saved[attr] = new
                    continue
                flags.append(f"patched_function: {name}.{attr}")
                setattr(module, attr, obj)
    try:
        import torch

        for attr, obj in _snapshot.get("torch.Tensor", {}).items():
            new = vars(torch.Tensor).get(attr, obj)
            if new is not obj and not _from_library(new):
                flags.append(f"patched_function: torch.Tensor.{attr}")
                setattr(torch.Tensor, attr, obj)
    except Exception:  # noqa: BLE001
        pass


def _restore_session(ip, flags: list[str]) -> None:
    _restore_transformers_and_hooks(ip, flags)
    _restore_shell_methods(ip, flags)
    _restore_event_callbacks(ip, flags)


def _restore_transformers_and_hooks(ip, flags: list[str]) -> None:
    for key, current in _transformer_lists(ip).items():
        saved = _snapshot["lists"][key]
        if list(current) != saved:
            kind = "ast_transformer" if key == "ast_transformers" else "input_transformer"
            flags.append(f"{kind}: {key} was changed")
            current[:] = saved
    if ip.custom_exceptions:
        names = ", ".join(getattr(e, "__name__", str(e)) for e in ip.custom_exceptions)
        flags.append(f"custom_exception_handler: set_custom_exc for ({names})")
        ip.custom_exceptions = ()  # showtraceback only calls CustomTB for these types
    if sys.gettrace() is not None or threading._trace_hook is not None:  # type: ignore[attr-defined]
        flags.append("settrace: sys.settrace was called")
        sys.settrace(None)
        threading.settrace(None)  # type: ignore[arg-type]
    if sys.getprofile() is not None or threading._profile_hook is not None:  # type: ignore[attr-defined]
        flags.append("setprofile: sys.setprofile was called")
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]


def _restore_shell_methods(ip, flags: list[str]) -> None:
    own = _snapshot["shell_instance"]
    for method in SHELL_METHODS:
        if vars(ip).get(method) is not own.get(method):
            flags.append(f"patched_shell: InteractiveShell.{method} overridden on the instance")
            if method in own:
                setattr(ip, method, own[method])
            else:
                delattr(ip, method)
        if getattr(type(ip), method, None) is not _snapshot["shell_class"][method]:
            flags.append(f"patched_shell: InteractiveShell.{method} replaced")
            setattr(type(ip), method, _snapshot["shell_class"][method])
    kernel = getattr(ip, "kernel", None)
    for method, original in _snapshot["kernel_class"].items():
        if method in vars(kernel):
            flags.append(f"patched_shell: kernel.{method} overridden on the instance")
            delattr(kernel, method)
        if getattr(type(kernel), method, None) is not original:
            flags.append(f"patched_shell: kernel.{method} replaced")
            setattr(type(kernel), method, original)


def _restore_event_callbacks(ip, flags: list[str]) -> None:
    for event, callbacks in ip.events.callbacks.items():
        saved = _snapshot["events"].get(event, [])
        for cb in list(callbacks):
            module = getattr(cb, "__module__", None) or ""
            if cb not in saved and not module.startswith(EVENT_PREFIXES):
                flags.append(f"event_callback: {event} callback {getattr(cb, '__qualname__', cb)!r}")
                callbacks.remove(cb)


class _Sentinel:
    pass


def _lying_classes(ip, flags: list[str]) -> None:
    """Flag classes defined by the learner whose ``==`` says True to an unrelated object."""
    for value in list(ip.user_ns.values()):
        cls = value if isinstance(value, type) else type(value)
        if getattr(cls, "__module__", None) != "__main__" or "__eq__" not in vars(cls):
            continue
        try:
            try:
                probe = object.__new__(cls)
            except TypeError:
                probe = cls.__new__(cls)
            lies = cls.__eq__(probe, _Sentinel()) is True
        except Exception:  # noqa: BLE001 - an __eq__ that raises does not lie
            lies = False
        if lies and id(cls) not in _snapshot.setdefault("lying", set()):
            _snapshot["lying"].add(id(cls))  # reported once; such a class only fails the checks it meets
            flags.append(f"lying_eq: {cls.__qualname__}.__eq__ says True to any object")


def check() -> str:
    """Detect and undo tampering; return JSON ``{"flags": [...]}``."""
    flags: list[str] = []
    ip = _shell()
    for name in list(sys.modules):
        if name.startswith("dlbook.") and name not in _snapshot["modules"]:
            _watch_module(name)  # imported later: watched from now on
    _restore_session(ip, flags)
    _restore_modules(flags)
    _lying_classes(ip, flags)
    return json.dumps({"flags": sorted(set(flags))})
