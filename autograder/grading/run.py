"""Running one assembled notebook in a confined kernel: execute cells, cap outputs, restart after crashes."""

from __future__ import annotations

import ast
import json
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .kernel_guard import PROOF_NAME
from .outputs import Outputs
from .sandbox import NOBODY, Kernel, Limits

GUARD = "__import__('_dlbook_guard').check({})"
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


# --- running one notebook in a confined kernel ---------------------------------------------------

def execute(kernel: Kernel, code: str, timeout: float, cap: int, user_expressions: dict | None = None,
            store_history: bool = True) -> dict:
    """Run ``code``; return ``{status: ok|error|timeout|crashed, outputs, error, expressions}``."""
    import queue

    kc = kernel.client
    msg_id = kc.execute(code, store_history=store_history, user_expressions=user_expressions or {},
                        allow_stdin=False, stop_on_error=False)
    outputs, error, reply, idle = Outputs(cap), None, None, False
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


