"""The dlbook package: what it exports, and its list of helper (not reference) modules."""

from __future__ import annotations

import importlib
from pathlib import Path

import dlbook


def test_helper_modules_are_dlbook_modules() -> None:
    present = {p.stem for p in Path(dlbook.__file__).parent.glob("*.py")}
    assert dlbook.HELPER_MODULES <= present, f"not dlbook modules: {sorted(dlbook.HELPER_MODULES - present)}"
    for name in dlbook.HELPER_MODULES:
        importlib.import_module(f"dlbook.{name}")


def test_exports_are_callable_helpers_and_shadow_no_module() -> None:
    present = {p.stem for p in Path(dlbook.__file__).parent.glob("*.py")}
    for name in dlbook.__all__:
        assert hasattr(dlbook, name), f"dlbook.__all__ names {name!r}, which dlbook lacks"
        assert name not in present, f"dlbook.{name} would shadow the module dlbook/{name}.py"
