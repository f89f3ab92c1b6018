"""Running one assembled notebook in a confined kernel: execute cells, cap outputs, restart after crashes."""

from __future__ import annotations

import ast
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .judge import Judge, JudgeAbort, judge_seed
from .outputs import Outputs
from .sandbox import Kernel, Limits, course_env

GUARD = "__import__('_dlbook_guard').check()"
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
    threads: int | None = None  # OMP/MKL threads per kernel; None: the batch decides (cores // workers), else 1
    feedback: bool = True
    worker_memory_bytes: int = 8 << 30  # RLIMIT_AS of each grading worker process (the judge runs there)
    judge_seed: int | None = None  # salt of hidden inputs; None: a fresh one per notebook (recorded in the report)
    # kernels forked from a warm template (zygote.py; root with bubblewrap only). None: when each grading
    # worker has several notebooks to grade (starting the template costs about as much as two kernels).
    zygote: bool | None = None


# --- running one notebook in a confined kernel ---------------------------------------------------

def execute(kernel: Kernel, code: str, timeout: float, cap: int, user_expressions: dict | None = None,
            store_history: bool = True) -> dict:
    """Run ``code``; return ``{status: ok|error|timeout|crashed, outputs, error, expressions}``."""
    msg_id = kernel.client.execute(code, store_history=store_history, user_expressions=user_expressions or {},
                                   allow_stdin=False, stop_on_error=False)
    return collect(kernel, msg_id, timeout, Outputs(cap))


def collect(kernel: Kernel, msg_id: str, timeout: float, outputs: Outputs) -> dict:
    """Gather the outputs and the reply of the execute request ``msg_id`` (see :func:`execute`)."""
    import queue

    kc = kernel.client
    error, reply, idle = None, None, False
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
        if msg["parent_header"].get("msg_id") == msg_id:
            idle, error = _iopub(msg, outputs, error)
    return _finish(reply, error, outputs)


def _iopub(msg: dict, outputs: Outputs, error: str | None) -> tuple[bool, str | None]:
    """Add one IOPub message to ``outputs``; return (the kernel went idle, the cell's error so far)."""
    kind, content = msg["msg_type"], msg["content"]
    if kind == "stream":
        outputs.add_text(content.get("name", "stdout"), content.get("text", ""))
    elif kind in ("display_data", "execute_result"):
        outputs.add_data(kind, content)
    elif kind == "error":
        error = f"{str(content.get('ename', 'Error'))[:200]}: {str(content.get('evalue', ''))[:2000]}"
        outputs.add_error(content.get("ename", ""), content.get("evalue", ""), content.get("traceback", []))
    elif kind == "clear_output":
        outputs.clear()
    return kind == "status" and content.get("execution_state") == "idle", error


def _finish(reply: dict, error: str | None, outputs: Outputs) -> dict:
    if any(isinstance(p, dict) and p.get("source") == "ask_exit" for p in reply.get("payload", [])):
        return {"status": "crashed", "outputs": outputs.finish(), "error": "the cell called exit()"}
    status = "ok" if reply.get("status") == "ok" and error is None else "error"
    if reply.get("status") == "error" and error is None:
        error = f"{reply.get('ename', 'Error')}: {str(reply.get('evalue', ''))[:2000]}"
    return {"status": status, "outputs": outputs.finish(), "error": error,
            "expressions": reply.get("user_expressions", {})}


def _guard_result(res: dict) -> dict | None:
    from dlbook.check import parse_python  # one parser, safe in a threaded worker (the static checks' too)

    value = res.get("expressions", {}).get("guard", {})
    if res["status"] != "ok" or value.get("status") != "ok":
        return None
    try:
        return json.loads(ast.literal_eval(parse_python(value["data"]["text/plain"], mode="eval")))
    except (KeyError, ValueError, SyntaxError):
        return None


def run_notebook(cells: list[dict], workdir: Path | None, settings: Settings, watch: list[str] = (),
                 ref: list[dict] | None = None, left_out: list[str] = ()) -> dict:
    """Execute ``cells`` (from :func:`assemble`) in a confined kernel; test cells go to the judge.

    ``ref``: the reference cells (the judge's setup and the learner's names come from them).
    ``watch``: modules the guard snapshots at start, besides numpy, torch, math and dlbook.
    ``left_out``: what an earlier copy of ``workdir`` left out (see :mod:`.task`), reported like the kernel's own.
    """
    kernel = Kernel(workdir, settings.limits,
                    course_env(settings.threads or 1, settings.fast, {"DLBOOK_GUARD_MODULES": ",".join(watch)}),
                    settings.use_bwrap, zygote=bool(settings.zygote))
    shutil.copyfile(Path(__file__).with_name("agent.py"), kernel.grader_dir / "_dlbook_agent.py")
    (kernel.grader_dir / "_dlbook_agent.py").chmod(0o644)
    seed = judge_seed(settings.judge_seed)
    judge = Judge(ref if ref is not None else cells, seed, kernel.judge_dir)
    # where the time goes (grade --profile): kernel starts, the first code cell (the imports), the other code
    # cells (setup and the learner's solutions), the test cells (the judge and the learner's code it calls)
    timings = {"kernel_start": 0.0, "first_cell": 0.0, "code_cells": 0.0, "test_cells": 0.0}
    start = time.monotonic()
    deadline = start + settings.notebook_budget
    results: list[dict | None] = [None] * len(cells)
    flags: list[str] = [f"not_copied: {entry}" for entry in [*left_out, *getattr(kernel, "skipped", [])][:20]]
    history: list[str] = []
    restarts = 0
    left = settings.notebook_output_cap
    started = ran_code = False
    try:
        for i, cell in enumerate(cells):
            if cell["kind"] == "markdown":
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 1:
                results[i] = {"status": "not-run", "outputs": [], "error": "the notebook's time budget was used up",
                              "flags": []}
                continue
            if not kernel.alive():
                try:
                    restarts += started
                    started = True
                    t0 = time.monotonic()
                    _restart(kernel, history, settings, deadline)
                    timings["kernel_start"] += time.monotonic() - t0
                except RuntimeError as err:  # the kernel would not start: this cell is not run, credit is kept
                    results[i] = {"status": "crashed", "outputs": [], "flags": [],
                                  "error": f"the kernel could not be started: {str(err)[:300]}"}
                    kernel.stop()
                    continue
            timeout = min(settings.cell_timeout, deadline - time.monotonic())
            cap = min(settings.output_cap, max(left, 0))
            t0 = time.monotonic()
            if cell["kind"] == "test":
                res = judge_test(kernel, judge, cell, timeout, cap)
                timings["test_cells"] += time.monotonic() - t0
            else:
                res = execute(kernel, cell["source"], timeout, cap, {"guard": GUARD})
                timings["code_cells" if ran_code else "first_cell"] += time.monotonic() - t0
                ran_code = True
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
        judge.close()
        kernel.cleanup()
    return {"results": results, "flags": flags, "restarts": restarts, "seconds": time.monotonic() - start,
            "sandbox": "bubblewrap" if kernel.use_bwrap else "rlimits-only", "judge_seed": seed,
            "zygote": kernel.zygote, "timings": {k: round(v, 3) for k, v in timings.items()}}


def judge_test(kernel: Kernel, judge: Judge, cell: dict, timeout: float, cap: int) -> dict:
    """Run one test cell in the judge, the learner's kernel answering its requests; return the cell's result.

    The kernel only runs the agent's ``serve`` (no test code); the judge's verdict is the status. The
    cell's outputs are what the test printed here, then what the learner's code printed there.
    """
    deadline = time.monotonic() + timeout
    path = kernel.inside(kernel.judge_dir / "judge.sock")
    msg_id = kernel.client.execute(judge.serve_code(path), store_history=False, allow_stdin=False,
                                   stop_on_error=False)
    try:
        conn = judge.accept(kernel.alive, deadline)
    except JudgeAbort as err:
        verdict = {"status": err.status, "error": err.message, "stdout": "", "requests": 0}
    else:
        verdict = judge.run_test(cell, conn)
    outputs = Outputs(cap)
    if verdict["stdout"]:
        outputs.add_text("stdout", verdict["stdout"])
    if verdict["status"] in ("ok", "error"):  # the kernel is back from serve: collect what learner code printed
        kernel_side = collect(kernel, msg_id, max(min(deadline - time.monotonic(), 30.0), 5.0), outputs)
        if kernel_side["status"] in ("timeout", "crashed"):
            verdict["status"], verdict["error"] = kernel_side["status"], kernel_side["error"]
    if verdict["status"] != "ok" and verdict["error"]:
        ename, _, evalue = verdict["error"].partition(": ")
        outputs.add_error(ename, evalue, [verdict["error"]])
    status = {"ok": "ok", "error": "error"}.get(verdict["status"], verdict["status"])
    return {"status": status, "outputs": outputs.finish(), "error": verdict["error"], "flags": [],
            "requests": verdict["requests"]}


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


