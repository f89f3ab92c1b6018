"""Reading notebooks: the reference (source) cells, a submission's cells, and putting them together."""

from __future__ import annotations

import ast
import errno
import json
import os
import stat
from pathlib import Path

MAX_NOTEBOOK_BYTES = 32 << 20  # a submitted notebook larger than this is invalid (not read)
# --- reading notebooks -------------------------------------------------------------------------

def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _meta(cell: dict) -> dict:
    meta = cell.get("metadata", {})
    nbg = meta.get("nbgrader", {}) if isinstance(meta, dict) else {}
    return nbg if isinstance(nbg, dict) else {}


def visible_source(source: str) -> str:
    """Return ``source`` without its ``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS`` regions."""
    out, hidden = [], False
    for line in source.splitlines():
        if "### BEGIN HIDDEN TESTS" in line:
            hidden = True
        elif "### END HIDDEN TESTS" in line:
            hidden = False
        elif not hidden:
            out.append(line)
    return "\n".join(out)


def reference_cells(path: Path | bytes) -> list[dict]:
    """Return the cells of a source notebook (a path, or its bytes) as ``{kind, grade_id, points, source, meta}``.

    ``kind`` is ``solution`` (learner's answer), ``test`` (graded code cell), ``code`` or ``markdown``.
    """
    nb = json.loads(path.decode("utf-8") if isinstance(path, bytes) else Path(path).read_text())
    cells = []
    for cell in nb["cells"]:
        meta = _meta(cell)
        kind = cell["cell_type"] if cell["cell_type"] != "raw" else "markdown"
        if cell["cell_type"] == "code" and meta.get("grade") and not meta.get("solution"):
            kind = "test"
        elif cell["cell_type"] == "code" and meta.get("solution"):
            kind = "solution"
        cells.append({"kind": kind, "grade_id": meta.get("grade_id"), "points": float(meta.get("points", 0) or 0),
                      "source": _source(cell), "meta": meta})
    return cells


def load_submission(path: Path, max_bytes: int = MAX_NOTEBOOK_BYTES) -> list[dict]:
    """Return the cells of a submitted notebook as ``{cell_type, source, meta}``; raise ValueError if unreadable.

    The file is hostile: a link is not followed, a file over ``max_bytes`` is not read, and the message
    of the ValueError says what is wrong (not UTF-8, invalid or too deeply nested JSON, a cell whose
    source is not text, metadata that is not an object, ...). An OSError means it could not be opened.
    """
    data = _json_of(_read_bounded(path, max_bytes))
    cells = data.get("cells") if isinstance(data, dict) else None
    if not isinstance(cells, list):
        raise ValueError("not a notebook (no list of cells)")
    return [_submitted_cell(i, cell) for i, cell in enumerate(cells, 1)]


def _read_bounded(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (a link is not followed); ValueError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ValueError("a symbolic link (links are never followed)") from err
        raise
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        raw = f.read(max_bytes + 1) if info.st_size <= max_bytes else b""
    if info.st_size > max_bytes or len(raw) > max_bytes:
        raise ValueError(f"too large: {max(info.st_size, len(raw))} bytes, a notebook may have "
                         f"{max_bytes >> 20} MiB at most")
    return raw


def _json_of(raw: bytes):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 text ({err.reason} at byte {err.start})") from err
    try:
        return json.loads(text)
    except RecursionError as err:
        raise ValueError("not a notebook (invalid JSON: nested too deeply)") from err
    except ValueError as err:  # JSONDecodeError, or an integer of too many digits
        raise ValueError(f"not a notebook (invalid JSON: {str(err)[:200]})") from err


def _submitted_cell(i: int, cell) -> dict:
    """``{cell_type, source, meta}`` of the submission's cell number ``i``; ValueError saying what is wrong."""
    if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
        raise ValueError("not a notebook (a cell without a valid cell_type)")
    src = cell.get("source", "")
    if isinstance(src, list) and all(isinstance(line, str) for line in src):
        src = "".join(src)
    elif not isinstance(src, str):
        raise ValueError(f"cell {i}: source is not a string or a list of strings")
    try:
        src.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"cell {i}: source is not valid Unicode ({err.reason})") from err
    meta = cell.get("metadata", {})
    if not isinstance(meta, dict):
        raise ValueError(f"cell {i}: metadata is not an object")
    if not isinstance(meta.get("nbgrader", {}), dict):
        raise ValueError(f"cell {i}: metadata.nbgrader is not an object")
    return {"cell_type": cell["cell_type"], "source": src, "meta": _meta(cell)}


def _norm(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def assemble(ref: list[dict], sub: list[dict]) -> tuple[list[dict], list[str]]:
    """Return (cells to run, flags): the reference notebook with the learner's solution cells in it.

    Every cell that is not a learner's answer runs as the *reference* wrote it: test cells (hidden
    tests included) and the setup code cells (imports, data, helpers), whatever the submission holds
    (deleted, edited, re-flagged). A learner's code cell that matches no reference cell runs where the
    learner put it (``extra``); a reference cell missing from the submission (or edited) is put back
    after the cell that precedes it in the reference. Metadata of the submission is only reported.
    """
    flags: list[str] = []
    by_id = {c["grade_id"]: c for c in ref if c["kind"] in ("solution", "test") and c["grade_id"]}
    code_cells = {i: _norm(c["source"]) for i, c in enumerate(ref) if c["kind"] == "code"}
    run: list[dict] = []
    seen: set[str] = set()
    claimed: set[int] = set()
    for cell in sub:
        gid = cell["meta"].get("grade_id")
        gid = gid if isinstance(gid, str) else None
        if cell["cell_type"] != "code":
            run.append({"kind": "markdown", "source": cell["source"], "grade_id": None})
            continue
        refc = by_id.get(gid) if gid else None
        if refc is None or gid in seen:
            _plain_code_cell(cell, gid, seen, ref, code_cells, claimed, run, flags)
            continue
        seen.add(gid)
        run.append(_graded_cell(cell, gid, refc, flags))
    extra = sum(c["kind"] == "extra" for c in run)
    if extra:
        flags.append(f"extra_cells: {extra} code cell(s) that are not in the reference (run as written)")
    _restore_missing(ref, run, flags)
    return run, flags


def _plain_code_cell(cell: dict, gid: str | None, seen: set[str], ref: list[dict], code_cells: dict[int, str],
                     claimed: set[int], run: list[dict], flags: list[str]) -> None:
    """A code cell that is no exercise: the reference's setup cell it matches, else the learner's extra code."""
    if gid and gid in seen:
        flags.append(f"duplicate_grade_id: {gid} appears again; run as plain code")
    elif gid and cell["meta"]:
        flags.append(f"unknown_grade_id: {gid} is not in the reference; run as plain code")
    norm = _norm(cell["source"])
    match = next((i for i, src in code_cells.items() if i not in claimed and src == norm), None)
    if match is not None:
        claimed.add(match)
        run.append({"kind": "code", "source": ref[match]["source"], "grade_id": None, "ref_index": match})
    elif norm:
        run.append({"kind": "extra", "source": cell["source"], "grade_id": None})


def _graded_cell(cell: dict, gid: str, refc: dict, flags: list[str]) -> dict:
    """The cell to run for a solution or test cell of the submission (a test always as the reference wrote it)."""
    for key in ("grade", "solution", "locked", "points"):
        if key in refc["meta"] and cell["meta"].get(key) != refc["meta"].get(key):
            flags.append(f"metadata_changed: {gid} has {key}={cell['meta'].get(key)!r}, "
                         f"reference {refc['meta'].get(key)!r} (the reference is used)")
    if refc["kind"] == "test":
        if _norm(cell["source"]) != _norm(visible_source(refc["source"])):
            flags.append(f"test_cell_edited: {gid} (the reference test is run)")
        return {"kind": "test", "source": refc["source"], "grade_id": gid, "points": refc["points"]}
    return {"kind": "solution", "source": cell["source"], "grade_id": gid}


def _restore_missing(ref: list[dict], run: list[dict], flags: list[str]) -> None:
    """Put back missing reference cells, each right after the reference cell that precedes it."""
    anchor = -1
    for i, refc in enumerate(ref):
        if refc["kind"] == "markdown":
            continue
        if refc["kind"] == "code":
            pos = next((j for j, c in enumerate(run) if c.get("ref_index") == i), None)
        else:
            pos = next((j for j, c in enumerate(run) if c["grade_id"] == refc["grade_id"]), None)
        if pos is not None:
            anchor = pos
            continue
        if refc["kind"] == "test":
            flags.append(f"test_cell_missing: {refc['grade_id']} (the reference test is run)")
            entry = {"kind": "test", "source": refc["source"], "grade_id": refc["grade_id"],
                     "points": refc["points"], "restored": True}
        elif refc["kind"] == "code":
            flags.append(f"code_cell_changed: reference cell {i} was edited or deleted (the reference cell is run)")
            entry = {"kind": "code", "source": refc["source"], "grade_id": None, "ref_index": i, "restored": True}
        else:
            flags.append(f"solution_cell_missing: {refc['grade_id']}")
            continue
        run.insert(anchor + 1, entry)
        anchor += 1


def _parse(source: str) -> ast.AST | None:
    """Return the AST of a cell, with IPython magics blanked; None if not Python (one parser for the checks)."""
    from dlbook.check import parse_cell

    return parse_cell(source)


def _nodes(cells: list[dict], kinds: tuple[str, ...]):
    """Yield ``(cell, node)`` for every AST node of the cells of the given kinds that parse as Python."""
    for cell in cells:
        tree = _parse(cell["source"]) if cell["kind"] in kinds else None
        for node in ast.walk(tree) if tree else []:
            yield cell, node


def dlbook_modules(ref: list[dict]) -> list[str]:
    """Return the dlbook modules the reference notebook imports (the guard watches them from the start)."""
    found = set()
    for _, node in _nodes(ref, ("code", "solution", "test")):
        if isinstance(node, ast.ImportFrom) and node.module == "dlbook":
            found.update(f"dlbook.{a.name}" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dlbook."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("dlbook."))
    return sorted(found)


def reference_calls(ref: list[dict], run: list[dict]) -> list[str]:
    """Flag solution cells that use a dlbook reference module (static check of their code).

    dlbook's helper modules and the helpers the package itself exports (``dlbook.device``, ...) are fine.
    """
    import dlbook

    helpers = dlbook.HELPER_MODULES | set(dlbook.__all__)
    modules = set()
    for _, node in _nodes(ref, ("code",)):
        if isinstance(node, ast.ImportFrom) and node.module == "dlbook":
            modules.update(a.asname or a.name for a in node.names if a.name not in helpers)
    flags = []
    for cell, node in _nodes(run, ("solution",)):
        used = None
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            used = f"{node.value.id}.{node.attr}"
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and \
                isinstance(node.value.value, ast.Name) and node.value.value.id == "dlbook" and \
                node.value.attr not in helpers:
            used = f"dlbook.{node.value.attr}.{node.attr}"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dlbook."):
            used = node.module
        if used:
            flags.append(f"calls_reference: {cell['grade_id']} uses {used}")
    return sorted(set(flags))


def rebuilt_ops(ref: list[dict]) -> dict[str, tuple[list[str], list[str]]]:
    """Return ``{test grade_id: (ops, solution grade_ids)}`` for the reference's ``check.rebuilds`` checks.

    A test cell's visible ``check.rebuilds(ex, fn, "op", ...)`` names the ops its exercise rebuilds;
    they apply to the solution cells between the previous test cell and this one.
    """
    found: dict[str, tuple[list[str], list[str]]] = {}
    solutions: list[str] = []
    for cell in ref:
        if cell["kind"] == "solution":
            solutions.append(cell["grade_id"])
        elif cell["kind"] == "test":
            tree = _parse(cell["source"])
            calls = [node for node in (ast.walk(tree) if tree else []) if isinstance(node, ast.Call)
                     and isinstance(node.func, ast.Attribute) and node.func.attr == "rebuilds"]
            ops = [arg.value for call in calls for arg in call.args[2:]
                   if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
            if ops:
                found[cell["grade_id"]] = (ops, list(solutions))
            solutions = []
    return found


def rebuilt_ops_used(ref: list[dict], run: list[dict]) -> dict[str, str]:
    """Return ``{test grade_id: message}`` for each exercise whose submitted answer uses an op it rebuilds.

    The static check (:func:`dlbook.check.rebuilt_ops_used`) of the learner's whole solution cells, in
    the grader: such an exercise scores 0, whatever its tests say, because a check that blocks the op
    at run time (``check.forbidden``) cannot see every spelling of it.
    """
    from dlbook.check import rebuilt_ops_used as used_in

    sources = {c["grade_id"]: c["source"] for c in run if c["kind"] == "solution"}
    verdicts = {}
    for test_id, (ops, solution_ids) in rebuilt_ops(ref).items():
        used = [u for sid in solution_ids for u in used_in(sources.get(sid, ""), ops)]
        if used:
            names = ", ".join(op.lstrip(".") for op in ops)
            verdicts[test_id] = (f"{test_id}: the answer uses {used[0]}; this exercise rebuilds {names}, so it may "
                                 f"not call {'it' if len(ops) == 1 else 'them'} in any spelling (0 points)")
    return verdicts


DYNAMIC_BUILTINS = {"exec", "eval", "compile", "__import__"}  # run or import code the static checks cannot see
DYNAMIC_IMPORTERS = {"import_module", "__import__"}  # importlib's
ATTRIBUTE_BUILTINS = {"getattr", "setattr", "delattr"}


def _literal_name(args: list[ast.expr]) -> bool:
    return len(args) >= 2 and isinstance(args[1], ast.Constant) and isinstance(args[1].value, str)


def _dynamic_use(node: ast.AST, callee: dict[int, ast.Call]) -> str | None:
    """What ``node`` uses to run, import or reach code by a computed name (see :func:`dynamic_code_flags`)."""
    name = node.id if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) else None
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
            node.value.id in ("builtins", "__builtins__"):
        name = node.attr
    if name in DYNAMIC_BUILTINS:
        return name
    if name in ATTRIBUTE_BUILTINS:
        call = callee.get(id(node))
        if call is None:
            return f"{name} (not called by name)"
        return None if _literal_name(call.args) else f"{name} with a computed attribute name"
    if isinstance(node, ast.Attribute) and node.attr in DYNAMIC_IMPORTERS:
        base = node.value.id if isinstance(node.value, ast.Name) else "..."
        return f"{base}.{node.attr}"
    if isinstance(node, ast.ImportFrom) and node.module in ("importlib", "builtins"):
        names = [a.name for a in node.names if a.name in DYNAMIC_IMPORTERS | DYNAMIC_BUILTINS | ATTRIBUTE_BUILTINS]
        return ", ".join(f"{node.module}.{n}" for n in names) or None
    return None


def dynamic_code_flags(run: list[dict]) -> list[str]:
    """Flag solution cells that run or import code by name, or reach attributes by a computed name.

    Static check of the learner's solution cells (advisory: the flags never change points):
    ``__import__``, ``importlib.import_module``/``importlib.__import__``, ``exec``, ``eval``, ``compile``
    (called, or taken as a value; also through ``builtins``), and ``getattr``/``setattr``/``delattr``
    whose attribute name is not a string literal. Methods such as ``model.eval()`` or
    ``torch.compile`` are not flagged.
    """
    flags = set()
    for cell in run:
        tree = _parse(cell["source"]) if cell["kind"] == "solution" else None
        nodes = list(ast.walk(tree)) if tree else []
        callee = {id(n.func): n for n in nodes if isinstance(n, ast.Call)}
        for node in nodes:
            used = _dynamic_use(node, callee)
            if used:
                flags.add(f"dynamic_code: {cell['grade_id']} uses {used}")
    return sorted(flags)
