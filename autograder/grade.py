"""``python -m autograder grade``: confined, parallel, tamper-aware autograding of a chapter.

Each submission notebook is graded against the *reference* (source) notebook, by grade_id:

- the learner's solution cells are found by their grade_id; every test cell that runs is the
  reference's, hidden tests included, whatever the submission holds (deleted, edited, re-flagged);
  points come from the reference, never from the submission's metadata;
- before each test cell the guard (:mod:`autograder.kernel_guard`) undoes and flags manipulation of
  the session; each test cell ends by storing a fresh random token which the grader reads back: a
  cell whose token did not come back did not really run, scores 0 and is flagged;
- the kernel is confined (:mod:`autograder.sandbox`), each cell has a timeout and each notebook a
  time budget; a timed-out or crashed kernel is restarted, the cells that ran before are replayed,
  and grading goes on (credit already earned is kept);
- outputs are capped in bytes; the submitted files are only read.

Outputs, under ``OUT`` (default ``build/course/graded/<assignment>``): ``reports/<student>.json``,
``feedback/<student>/<notebook>.html`` (hidden tests removed), ``grades.csv``; and the nbgrader
gradebook (``--db``, default the course's ``gradebook.db``).
"""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
import warnings
import zipfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from .kernel_guard import PROOF_NAME
from .sandbox import NOBODY, Kernel, Limits, bwrap_available

GUARD = "__import__('_dlbook_guard').check({})"
STUDENT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
HELPER_MODULES = {"check", "plot", "train", "data", "settings", "seed", "device", "metrics"}


@dataclass
class Settings:
    """How one notebook is graded (the CLI's options; defaults documented in the README)."""

    cell_timeout: float = 120.0  # seconds one cell may run
    notebook_budget: float = 900.0  # seconds for a whole notebook, restarts and replays included
    output_cap: int = 64 << 10  # bytes of output kept per cell
    notebook_output_cap: int = 1 << 20  # bytes of output kept per notebook
    fast: bool = True  # DLBOOK_FAST=1 in the kernel
    limits: Limits = field(default_factory=Limits)
    use_bwrap: bool | None = None  # None: whenever bubblewrap works
    threads: int = 1  # OMP/MKL threads per kernel
    feedback: bool = True


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


def reference_cells(path: Path) -> list[dict]:
    """Return the cells of a source notebook as ``{kind, grade_id, points, source, meta}``.

    ``kind`` is ``solution`` (learner's answer), ``test`` (graded code cell), ``code`` or ``markdown``.
    """
    nb = json.loads(Path(path).read_text())
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


def load_submission(path: Path) -> list[dict]:
    """Return the cells of a submitted notebook as ``{cell_type, source, meta}``; raise ValueError if unreadable."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"not a notebook (invalid JSON: {err})") from err
    cells = data.get("cells") if isinstance(data, dict) else None
    if not isinstance(cells, list):
        raise ValueError("not a notebook (no list of cells)")
    out = []
    for cell in cells:
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            raise ValueError("not a notebook (a cell without a valid cell_type)")
        out.append({"cell_type": cell["cell_type"], "source": _source(cell), "meta": _meta(cell)})
    return out


def _norm(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def assemble(ref: list[dict], sub: list[dict]) -> tuple[list[dict], list[str]]:
    """Return (cells to run, flags): the learner's cells with every graded cell taken from ``ref``.

    Solution cells keep the learner's code; test cells are the reference's (hidden tests included);
    a reference cell missing from the submission is put back after its predecessor; metadata of the
    submission is compared with the reference and only reported.
    """
    flags: list[str] = []
    by_id = {c["grade_id"]: c for c in ref if c["kind"] in ("solution", "test") and c["grade_id"]}
    run: list[dict] = []
    seen: set[str] = set()
    for cell in sub:
        gid = cell["meta"].get("grade_id")
        gid = gid if isinstance(gid, str) else None
        if cell["cell_type"] != "code":
            run.append({"kind": "markdown", "source": cell["source"], "grade_id": None})
            continue
        refc = by_id.get(gid) if gid else None
        if refc is None or gid in seen:
            if gid and gid in seen:
                flags.append(f"duplicate_grade_id: {gid} appears again; run as plain code")
            elif gid and cell["meta"]:
                flags.append(f"unknown_grade_id: {gid} is not in the reference; run as plain code")
            run.append({"kind": "code", "source": cell["source"], "grade_id": None})
            continue
        seen.add(gid)
        for key in ("grade", "solution", "locked", "points"):
            if key in refc["meta"] and cell["meta"].get(key) != refc["meta"].get(key):
                flags.append(f"metadata_changed: {gid} has {key}={cell['meta'].get(key)!r}, "
                             f"reference {refc['meta'].get(key)!r} (the reference is used)")
        if refc["kind"] == "test":
            if _norm(cell["source"]) != _norm(visible_source(refc["source"])):
                flags.append(f"test_cell_edited: {gid} (the reference test is run)")
            run.append({"kind": "test", "source": refc["source"], "grade_id": gid, "points": refc["points"]})
        else:
            run.append({"kind": "solution", "source": cell["source"], "grade_id": gid})
    extra = sum(c["kind"] == "code" for c in run) - sum(c["kind"] == "code" for c in ref)
    if extra > 0:
        flags.append(f"extra_cells: {extra} more code cell(s) than the reference (run as written)")
    # Put back missing graded cells, each right after the graded cell that precedes it in the reference.
    anchor = -1
    for refc in ref:
        if refc["kind"] not in ("solution", "test"):
            continue
        pos = next((i for i, c in enumerate(run) if c["grade_id"] == refc["grade_id"]), None)
        if pos is not None:
            anchor = pos
            continue
        if anchor < 0:  # nothing graded placed yet: after as many code cells as precede it in the reference
            before = sum(c["kind"] == "code" for c in ref[: ref.index(refc)])
            codes = [i for i, c in enumerate(run) if c["kind"] == "code"]
            anchor = codes[min(before, len(codes)) - 1] if before and codes else -1
        if refc["kind"] == "test":
            flags.append(f"test_cell_missing: {refc['grade_id']} (the reference test is run)")
            run.insert(anchor + 1, {"kind": "test", "source": refc["source"], "grade_id": refc["grade_id"],
                                    "points": refc["points"], "restored": True})
            anchor += 1
        else:
            flags.append(f"solution_cell_missing: {refc['grade_id']}")
    return run, flags


def _parse(source: str) -> ast.AST | None:
    """Return the AST of a cell, with IPython magics (``%...``, ``!...``) blanked; None if not Python."""
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


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
    """Flag solution cells that use a dlbook reference module (static check of their code)."""
    modules = set()
    for _, node in _nodes(ref, ("code",)):
        if isinstance(node, ast.ImportFrom) and node.module == "dlbook":
            modules.update(a.asname or a.name for a in node.names if a.name not in HELPER_MODULES)
    flags = []
    for cell, node in _nodes(run, ("solution",)):
        used = None
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            used = f"{node.value.id}.{node.attr}"
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and \
                isinstance(node.value.value, ast.Name) and node.value.value.id == "dlbook" and \
                node.value.attr not in HELPER_MODULES:
            used = f"dlbook.{node.value.attr}.{node.attr}"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dlbook."):
            used = node.module
        if used:
            flags.append(f"calls_reference: {cell['grade_id']} uses {used}")
    return sorted(set(flags))


# --- running one notebook in a confined kernel ---------------------------------------------------

class _Outputs:
    """Cell outputs as nbformat dicts, capped in bytes."""

    def __init__(self, cap: int):
        self.cap, self.used, self.dropped, self.items = cap, 0, 0, []

    def add_text(self, name: str, text: str) -> None:
        room = max(self.cap - self.used, 0)
        size = len(text.encode("utf-8", "replace"))
        if size > room:
            self.dropped += size - room
            text = text.encode("utf-8", "replace")[:room].decode("utf-8", "ignore")
        if not text:
            return
        self.used += len(text.encode("utf-8", "replace"))
        if self.items and self.items[-1].get("name") == name and self.items[-1]["output_type"] == "stream":
            self.items[-1]["text"] += text
        else:
            self.items.append({"output_type": "stream", "name": name, "text": text})

    def add_data(self, kind: str, content: dict) -> None:
        data = content.get("data", {})
        size = len(json.dumps(data))
        if self.used + size > self.cap:
            self.dropped += size
            return
        self.used += size
        out = {"output_type": kind, "data": data, "metadata": content.get("metadata", {})}
        if kind == "execute_result":
            out["execution_count"] = content.get("execution_count")
        self.items.append(out)

    def finish(self) -> list[dict]:
        if self.dropped:
            self.items.append({"output_type": "stream", "name": "stderr",
                               "text": f"\n[grader: {self.dropped} more bytes of output not kept; "
                                       f"at most {self.cap} bytes are kept]\n"})
        return self.items


def execute(kernel: Kernel, code: str, timeout: float, cap: int, user_expressions: dict | None = None,
            store_history: bool = True) -> dict:
    """Run ``code``; return ``{status: ok|error|timeout|crashed, outputs, error, expressions}``."""
    import queue

    kc = kernel.client
    msg_id = kc.execute(code, store_history=store_history, user_expressions=user_expressions or {},
                        allow_stdin=False, stop_on_error=False)
    outputs, error, reply, idle = _Outputs(cap), None, None, False
    deadline = time.monotonic() + timeout
    while not (idle and reply is not None):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return {"status": "timeout", "outputs": outputs.finish(), "error": f"cell timed out after {timeout:.0f} s"}
        if not kernel.alive():
            return {"status": "crashed", "outputs": outputs.finish(),
                    "error": f"the kernel died (exit code {kernel.proc.returncode if kernel.proc else '?'})"}
        if reply is None:
            try:  # once the kernel is idle only the reply is missing: wait for it, not for more output
                msg = kc.get_shell_msg(timeout=min(0.2, remaining) if idle else 0)
                if msg["parent_header"].get("msg_id") == msg_id:
                    reply = msg["content"]
            except queue.Empty:
                pass
            if idle:
                continue
        try:
            msg = kc.get_iopub_msg(timeout=min(0.2, remaining))
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            outputs.add_text(content.get("name", "stdout"), content.get("text", ""))
        elif kind in ("display_data", "execute_result"):
            outputs.add_data(kind, content)
        elif kind == "error":
            error = f"{content.get('ename', 'Error')}: {str(content.get('evalue', ''))[:2000]}"
            tb = "\n".join(content.get("traceback", []))[-8000:]
            outputs.items.append({"output_type": "error", "ename": str(content.get("ename", ""))[:200],
                                  "evalue": str(content.get("evalue", ""))[:2000], "traceback": [tb]})
        elif kind == "clear_output":
            outputs.items.clear()
        elif kind == "status" and content.get("execution_state") == "idle":
            idle = True
    if any(isinstance(p, dict) and p.get("source") == "ask_exit" for p in reply.get("payload", [])):
        return {"status": "crashed", "outputs": outputs.finish(), "error": "the cell called exit()"}
    status = "ok" if reply.get("status") == "ok" and error is None else "error"
    if reply.get("status") == "error" and error is None:
        error = f"{reply.get('ename', 'Error')}: {str(reply.get('evalue', ''))[:2000]}"
    return {"status": status, "outputs": outputs.finish(), "error": error,
            "expressions": reply.get("user_expressions", {})}


def _guard_result(res: dict) -> dict | None:
    value = res.get("expressions", {}).get("guard", {})
    if res["status"] != "ok" or value.get("status") != "ok":
        return None
    try:
        return json.loads(ast.literal_eval(value["data"]["text/plain"]))
    except (KeyError, ValueError, SyntaxError):
        return None


def _kernel_env(kernel: Kernel, settings: Settings) -> dict[str, str]:
    env = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
           "LANG": "C.UTF-8", "DLBOOK_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "MPLCONFIGDIR": kernel.inside(kernel.work) + "/.config/matplotlib",
           "OMP_NUM_THREADS": str(settings.threads), "MKL_NUM_THREADS": str(settings.threads)}
    if settings.fast:
        env["DLBOOK_FAST"] = "1"
    if os.environ.get("DLBOOK_DATA"):
        env["DLBOOK_DATA"] = str(Path(os.environ["DLBOOK_DATA"]).resolve())
    return env


def _seed_matplotlib_cache(kernel: Kernel) -> None:
    """Copy the host's matplotlib font list into the kernel's config dir (else each kernel rebuilds it)."""
    try:
        import matplotlib

        target = kernel.work / ".config" / "matplotlib"
        target.mkdir(parents=True, exist_ok=True)
        for f in Path(matplotlib.get_cachedir()).glob("fontlist-*.json"):
            shutil.copyfile(f, target / f.name)
        if kernel.drop_to_nobody:
            for p in [kernel.work / ".config", target, *target.iterdir()]:
                os.lchown(p, NOBODY, NOBODY)
    except Exception:  # noqa: BLE001 - only a speed-up
        pass


def run_notebook(cells: list[dict], workdir: Path | None, settings: Settings, watch: list[str] = ()) -> dict:
    """Execute ``cells`` (from :func:`assemble`) in a confined kernel; return the results per cell.

    ``watch``: modules the guard snapshots at start, besides numpy, torch, math and dlbook.
    """
    kernel = Kernel(workdir, settings.limits, {}, settings.use_bwrap)
    kernel.env = {**_kernel_env(kernel, settings), "DLBOOK_GUARD_MODULES": ",".join(watch)}
    _seed_matplotlib_cache(kernel)
    start = time.monotonic()
    deadline = start + settings.notebook_budget
    results: list[dict | None] = [None] * len(cells)
    flags: list[str] = []
    history: list[str] = []
    restarts = 0
    left = settings.notebook_output_cap
    try:
        kernel.start()
        for i, cell in enumerate(cells):
            if cell["kind"] == "markdown":
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 1:
                results[i] = {"status": "not-run", "outputs": [], "error": "the notebook's time budget was used up"}
                continue
            if not kernel.alive():
                restarts += 1
                _restart(kernel, history, settings, deadline)
            timeout = min(settings.cell_timeout, deadline - time.monotonic())
            cap = min(settings.output_cap, max(left, 0))
            if cell["kind"] == "test":
                pre = _guard_result(execute(kernel, "", timeout, cap, {"guard": GUARD.format("False")}, False))
                pre_flags = pre["flags"] if pre else ["guard_failed: the session check could not run"]
                token = secrets.token_hex(16)
                res = execute(kernel, f"{cell['source']}\n{PROOF_NAME} = {token!r}\n", timeout, cap,
                              {"guard": GUARD.format("True")})
                res["flags"] = list(pre_flags)
                post = _guard_result(res)
                if res["status"] == "ok":
                    if post is None or post.get("proof") != token:
                        res["status"], res["error"] = "tampered", "the test cell did not really run (no proof)"
                        res["flags"].append(f"no_proof_of_execution: {cell['grade_id']}")
                    else:
                        res["flags"] += post["flags"]
                        if any(not f.startswith("lying_eq") for f in post["flags"]):
                            res["status"], res["error"] = "tampered", "the session was manipulated during the test"
            else:
                res = execute(kernel, cell["source"], timeout, cap, {"guard": GUARD.format("False")})
                post = _guard_result(res)
                res["flags"] = post["flags"] if post else []
                if res["status"] == "ok":
                    history.append(cell["source"])
            left -= sum(len(json.dumps(o)) for o in res["outputs"])
            flags += res["flags"]
            results[i] = res
            if res["status"] in ("timeout", "crashed") or not kernel.alive():
                if res["status"] == "ok":  # exit() or os._exit() at the end of a cell
                    res["status"], res["error"] = "crashed", "the kernel exited"
                kernel.stop()
    finally:
        kernel.cleanup()
    return {"results": results, "flags": flags, "restarts": restarts, "seconds": time.monotonic() - start,
            "sandbox": "bubblewrap" if kernel.use_bwrap else "rlimits-only"}


def _restart(kernel: Kernel, history: list[str], settings: Settings, deadline: float) -> None:
    """Start a fresh kernel and replay the cells that ran fine before (their outputs are dropped)."""
    kernel.start()
    for source in history:
        remaining = min(settings.cell_timeout, deadline - time.monotonic())
        if remaining <= 1:
            return
        res = execute(kernel, source, remaining, 0)
        if res["status"] in ("timeout", "crashed"):
            kernel.stop()
            kernel.start()


# --- one submission ------------------------------------------------------------------------------

def _ids(cells: list[dict]) -> set[str]:
    return {c["meta"].get("grade_id") for c in cells if isinstance(c["meta"].get("grade_id"), str)}


def match_notebooks(ref_names: list[str], ref_ids: dict[str, set[str]], folder: Path) -> dict[str, tuple]:
    """Return ``{reference name: (path or None, cells or None, error or None)}`` for a submission folder.

    A notebook is found by its name, else (renamed) by the grade_ids it contains.
    """
    files = sorted(folder.glob("*.ipynb")) if folder.is_dir() else []
    parsed: dict[Path, tuple] = {}
    for f in files:
        try:
            parsed[f] = (load_submission(f), None)
        except (ValueError, OSError) as err:
            parsed[f] = (None, str(err))
    out, used = {}, set()
    for name in ref_names:
        if folder / name in parsed:
            out[name] = (folder / name, *parsed[folder / name])
            used.add(folder / name)
    for name in ref_names:
        if name in out:
            continue
        best = max(((len(_ids(c) & ref_ids[name]), f) for f, (c, _) in parsed.items() if f not in used and c),
                   default=(0, None))
        if best[0] > 0:
            out[name] = (best[1], *parsed[best[1]])
            used.add(best[1])
    unmatched = [f for f in parsed if f not in used]
    missing = [n for n in ref_names if n not in out]
    if len(missing) == 1 and len(unmatched) == 1:  # one unreadable or unrecognisable file: that one
        out[missing[0]] = (unmatched[0], *parsed[unmatched[0]])
    for name in ref_names:
        out.setdefault(name, (None, None, "no such notebook in the submission"))
    return out


FEEDBACK_TEMPLATE = Path(__file__).with_name("templates") / "feedback.html.j2"
_EXPORTER = None


def _feedback_html(cells: list[dict], results: list, report: dict, path: Path) -> None:
    """Write the graded notebook as HTML: hidden tests removed, test tracebacks reduced to their message."""
    import nbformat
    from nbconvert import HTMLExporter

    rows = "\n".join(f"| {e['grade_id']} | {e['points']:g} / {e['max_points']:g} | {e['status']} | "
                     f"{(e['error'] or '').replace('|', '/')[:300]} |" for e in report["exercises"])
    head = (f"# Feedback: {report['notebook']}\n\nScore: **{report['points']:g} / {report['max_points']:g}**\n\n"
            f"| exercise | points | status | message |\n| --- | --- | --- | --- |\n{rows}\n")
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell(head))
    for cell, res in zip(cells, results, strict=False):
        if cell["kind"] == "markdown":
            nb.cells.append(nbformat.v4.new_markdown_cell(cell["source"]))
            continue
        source = visible_source(cell["source"]) if cell["kind"] == "test" else cell["source"]
        outputs = []
        for out in (res or {}).get("outputs", []):
            if out["output_type"] == "error" and cell["kind"] == "test":
                out = {**out, "traceback": [f"{out['ename']}: {out['evalue']}"]}
            outputs.append(nbformat.from_dict(out))
        code = nbformat.v4.new_code_cell(source)
        code.outputs = outputs
        nb.cells.append(code)
    global _EXPORTER
    if _EXPORTER is None:  # one per worker process: loading the templates takes a while
        # sanitize_html: a learner's HTML output must not run JavaScript in the instructor's browser
        _EXPORTER = HTMLExporter(template_name="lab", template_file=str(FEEDBACK_TEMPLATE),
                                 sanitize_html=True)
    body, _ = _EXPORTER.from_notebook_node(nb)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)


def grade_notebook(name: str, ref: list[dict], found: tuple, workdir: Path | None, settings: Settings,
                   feedback: Path | None = None) -> dict:
    """Grade one notebook of a submission; return its report (never raises for a bad submission)."""
    path, sub, error = found
    tests = [c for c in ref if c["kind"] == "test"]
    report = {"notebook": name, "submitted_as": path.name if path else None, "status": "graded", "flags": [],
              "exercises": [], "cells": [], "restarts": 0, "seconds": 0.0, "sandbox": None}
    if path is not None and path.name != name:
        report["flags"].append(f"renamed: {path.name} graded as {name}")
    results: list = []
    cells: list[dict] = []
    if sub is None:
        report["status"] = "invalid" if path else "missing"
        report["flags"].append(f"{'invalid_notebook' if path else 'missing_notebook'}: {error}")
    else:
        try:
            cells, flags = assemble(ref, sub)
            report["flags"] += flags + reference_calls(ref, cells)
            run = run_notebook(cells, workdir, settings, dlbook_modules(ref))
            results = run["results"]
            report["flags"] += run["flags"]
            report.update(restarts=run["restarts"], seconds=round(run["seconds"], 2), sandbox=run["sandbox"])
        except Exception as err:  # noqa: BLE001 - a bad submission never aborts the batch
            report["status"] = "error"
            report["flags"].append(f"grading_failed: {type(err).__name__}: {str(err)[:500]}")
    by_id = {c["grade_id"]: r for c, r in zip(cells, results, strict=False) if c["kind"] == "test" and r is not None}
    for test in tests:
        res = by_id.get(test["grade_id"])
        status = {"ok": "passed", "error": "failed", None: "not-run"}.get(res and res["status"], res and res["status"])
        error = res.get("error") if res else None
        ex_flags = sorted(set(res.get("flags", []))) if res else []
        if res and res["status"] == "error" and "ForbiddenCall" in (error or ""):
            ex_flags.append(f"calls_reference: {test['grade_id']} called a forbidden reference")
        report["exercises"].append({"grade_id": test["grade_id"], "max_points": test["points"],
                                    "points": test["points"] if status == "passed" else 0.0,
                                    "status": status, "error": error, "flags": ex_flags})
        report["flags"] += ex_flags
    for i, (cell, res) in enumerate(zip(cells, results, strict=False)):
        if res and cell["kind"] != "test" and res["status"] != "ok":
            report["cells"].append({"index": i, "kind": cell["kind"], "grade_id": cell.get("grade_id"),
                                    "status": res["status"], "error": res.get("error")})
    report["flags"] = sorted(set(report["flags"]))
    report["points"] = sum(e["points"] for e in report["exercises"])
    report["max_points"] = sum(e["max_points"] for e in report["exercises"])
    if feedback is not None and settings.feedback and cells:
        try:
            _feedback_html(cells, results, report, feedback)
        except Exception as err:  # noqa: BLE001 - no feedback page is no reason to lose the grade
            report["flags"].append(f"feedback_failed: {type(err).__name__}: {err}")
    return report


def grade_submission(student: str, folder: str, assignment: str, references: dict[str, str], settings: Settings,
                     out_dir: str) -> dict:
    """Grade every notebook of one student's submission; write and return its JSON report."""
    start = time.monotonic()
    folder_path, out = Path(folder), Path(out_dir)
    refs = {name: reference_cells(Path(p)) for name, p in references.items()}
    ref_ids = {name: {c["grade_id"] for c in cells if c["grade_id"]} for name, cells in refs.items()}
    found = match_notebooks(list(refs), ref_ids, folder_path)
    notebooks = [grade_notebook(name, refs[name], found[name], folder_path, settings,
                                out / "feedback" / student / f"{Path(name).stem}.html") for name in refs]
    report = {"student": student, "assignment": assignment, "status": "graded",
              "points": sum(n["points"] for n in notebooks), "max_points": sum(n["max_points"] for n in notebooks),
              "flags": sorted({f for n in notebooks for f in n["flags"]}), "notebooks": notebooks,
              "seconds": round(time.monotonic() - start, 2)}
    if any(n["status"] == "error" for n in notebooks):
        report["status"] = "error"
    (out / "reports").mkdir(parents=True, exist_ok=True)
    (out / "reports" / f"{student}.json").write_text(json.dumps(report, indent=2))
    return report


# --- a batch -----------------------------------------------------------------------------------

def _safe_extract(archive: Path, dest: Path, max_bytes: int = 2 << 30) -> None:
    """Extract a zip without letting a member escape ``dest`` or the total exceed ``max_bytes``."""
    total = 0
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = Path(info.filename)
            if info.is_dir() or name.is_absolute() or ".." in name.parts or info.filename.startswith("__MACOSX"):
                continue
            total += info.file_size
            if total > max_bytes:
                raise ValueError(f"{archive} unpacks to more than {max_bytes} bytes")
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def discover(submissions: Path, assignment: str, scratch: Path) -> tuple[dict[str, Path], list[str]]:
    """Return ({student: folder}, problems) from an nbgrader ``submitted/`` tree, a folder, or an LMS zip.

    Layouts: ``<student>/<assignment>/*.ipynb``, ``<student>/*.ipynb``, or loose files named
    ``<student>_<anything>.ipynb`` (the LMS pattern: the student id is everything before the first
    ``_``). In a zip, the same layouts, possibly under one top folder.
    """
    submissions = Path(submissions)
    if submissions.is_file() and zipfile.is_zipfile(submissions):
        root = scratch / "unzipped"
        _safe_extract(submissions, root)
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
        top = entries[0] if len(entries) == 1 and entries[0].is_dir() else None
        if top and not any(top.glob("*.ipynb")) and not (top / assignment).is_dir() and \
                any(top.glob("*/*.ipynb")) | any(top.glob("*/*/*.ipynb")):
            root = top  # one wrapping folder around the students' folders
        submissions = root
    if not submissions.is_dir():
        raise FileNotFoundError(f"expected a folder of submissions or a zip at {submissions}")
    students: dict[str, Path] = {}
    problems: list[str] = []
    for d in sorted(p for p in submissions.iterdir() if p.is_dir()):
        inner = d / assignment if (d / assignment).is_dir() else d
        if not any(inner.glob("*.ipynb")):
            continue
        if not STUDENT_PATTERN.match(d.name):
            problems.append(f"skipped folder {d.name!r}: not a valid student id")
            continue
        students[d.name] = inner
    loose = sorted(submissions.glob("*.ipynb"))
    for f in loose:
        student = f.name.split("_", 1)[0]
        if "_" not in f.name or not STUDENT_PATTERN.match(student):
            problems.append(f"skipped {f.name!r}: expected <student>_<anything>.ipynb")
            continue
        target = scratch / "lms" / student
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target / f.name.split("_", 1)[1])
        students.setdefault(student, target)
    return students, problems


def write_grades_csv(reports: list[dict], path: Path) -> Path:
    """One row per student: total, status, flag count, then the points of every exercise."""
    ids = [e["grade_id"] for r in reports[:1] for n in r.get("notebooks", []) for e in n["exercises"]]
    for r in reports:
        for n in r.get("notebooks", []):
            ids += [e["grade_id"] for e in n["exercises"] if e["grade_id"] not in ids]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student_id", "assignment", "points", "max_points", "status", "flags", *ids])
        for r in sorted(reports, key=lambda r: r["student"]):
            per = {e["grade_id"]: e["points"] for n in r.get("notebooks", []) for e in n["exercises"]}
            w.writerow([r["student"], r["assignment"], r.get("points", 0), r.get("max_points", 0), r["status"],
                        len(r.get("flags", [])), *(per.get(i, "") for i in ids)])
    return path


def write_gradebook(reports: list[dict], assignment: str, references: dict[str, str], db_url: str) -> None:
    """Record every grade in an nbgrader gradebook (any SQLAlchemy URL); flag tampered notebooks."""
    from nbgrader.api import Gradebook, MissingEntry

    # nbgrader runs `alembic` from PATH: use this interpreter's environment.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    with Gradebook(db_url) as gb, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not in session.*")  # nbgrader's own add_submission
        gb.update_or_create_assignment(assignment)
        for name, path in references.items():
            stem = Path(name).stem
            gb.update_or_create_notebook(stem, assignment)
            for cell in reference_cells(Path(path)):
                if cell["kind"] == "test":
                    gb.update_or_create_grade_cell(cell["grade_id"], stem, assignment, max_score=cell["points"],
                                                   cell_type="code")
                elif cell["kind"] == "solution":
                    gb.update_or_create_solution_cell(cell["grade_id"], stem, assignment)
        for r in reports:
            gb.update_or_create_student(r["student"])
            gb.update_or_create_submission(assignment, r["student"])
            for n in r.get("notebooks", []):
                stem = Path(n["notebook"]).stem
                try:
                    nb = gb.find_submission_notebook(stem, assignment, r["student"])
                except MissingEntry:
                    continue
                nb.flagged = any(not f.startswith(("extra_cells", "renamed")) for f in n["flags"])
                for e in n["exercises"]:
                    grade = gb.find_grade(e["grade_id"], stem, assignment, r["student"])
                    grade.auto_score = e["points"]
                    grade.needs_manual_grade = False
            gb.db.commit()


@dataclass
class BatchResult:
    reports: list[dict]
    out_dir: Path
    seconds: float
    problems: list[str]

    @property
    def by_student(self) -> dict[str, dict]:
        return {r["student"]: r for r in self.reports}

    def summary(self) -> str:
        lines = [f"{'student':<24} {'points':>14} {'flags':>6}  status"]
        for r in sorted(self.reports, key=lambda r: r["student"]):
            lines.append(f"{r['student']:<24} {r.get('points', 0):>6g} / {r.get('max_points', 0):<5g} "
                         f"{len(r.get('flags', [])):>6}  {r['status']}")
        flagged = sum(1 for r in self.reports if r.get("flags"))
        failed = sum(1 for r in self.reports if r["status"] != "graded")
        lines.append(f"graded {len(self.reports) - failed}, flagged {flagged}, failed to grade {failed}, "
                     f"time {self.seconds:.1f} s; reports in {self.out_dir}")
        lines += [f"note: {p}" for p in self.problems]
        return "\n".join(lines)


def grade(assignment: str, submissions: Path, source_dir: Path, out_dir: Path, workers: int | None = None,
          db_url: str | None = None, settings: Settings | None = None, progress: bool = True) -> BatchResult:
    """Grade every submission of ``assignment`` in ``submissions`` with ``workers`` processes."""
    start = time.monotonic()
    settings = settings or Settings()
    workers = workers or os.cpu_count() or 1
    if settings.use_bwrap is None:
        settings.use_bwrap = bwrap_available()
    settings.threads = max(1, (os.cpu_count() or 1) // workers)
    references = {p.name: str(p) for p in sorted((Path(source_dir) / assignment).glob("*.ipynb"))}
    if not references:
        raise FileNotFoundError(f"no source notebooks in {Path(source_dir) / assignment}")
    out_dir = Path(out_dir)
    reports: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ag-batch-") as scratch:
        students, problems = discover(Path(submissions), assignment, Path(scratch))
        ctx = get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(grade_submission, s, str(f), assignment, references, settings, str(out_dir)): s
                       for s, f in students.items()}
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(futures), desc=f"grading {assignment}", unit="submission", file=sys.stderr)
            for fut in as_completed(futures):
                student = futures[fut]
                try:
                    reports.append(fut.result())
                except Exception as err:  # noqa: BLE001 - one failure never aborts the batch
                    reports.append({"student": student, "assignment": assignment, "status": "error", "points": 0,
                                    "max_points": 0, "flags": [f"grading_failed: {type(err).__name__}: {err}"],
                                    "notebooks": []})
                if bar:
                    bar.update()
            if bar:
                bar.close()
    write_grades_csv(reports, out_dir / "grades.csv")
    if db_url:
        write_gradebook(reports, assignment, references, db_url)
    return BatchResult(reports, out_dir, time.monotonic() - start, problems)
