"""``make bench``: execute every chapter notebook at full settings, collect metrics, check targets.

Writes ``build/bench.json``::

    {"notebooks": [{"path": "chapters/01_backprop/2_....ipynb", "seconds": 41.2,
                    "metrics": {"test_accuracy": 0.975, ...}, "targets": {...}, "ok": true}]}
"""

from __future__ import annotations

import json
import operator
import os
import tempfile
import time
from pathlib import Path

from .config import CHAPTERS_DIR, REPO_ROOT

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
TARGETS_DIR = Path(__file__).resolve().parent / "targets"


def load_targets(targets_dir: Path = TARGETS_DIR) -> dict[str, dict[str, tuple[str, float]]]:
    """Return the quality targets per notebook: ``{"chapters/NN_slug/nb.ipynb": {metric: (op, bound)}}``.

    Each chapter keeps its targets in ``autograder/targets/NN_slug.json``:
    ``{"notebook.ipynb": {"test_accuracy": [">=", 0.97], "seconds": ["<=", 180]}}``. ``seconds`` is
    the wall time of the whole notebook at full settings on the benchmark machine (2 CPU cores).
    """
    targets: dict[str, dict[str, tuple[str, float]]] = {}
    for path in sorted(targets_dir.glob("*.json")):
        for notebook, metrics in json.loads(path.read_text()).items():
            rel = f"chapters/{path.stem}/{notebook}"
            for name, spec in metrics.items():
                if not (isinstance(spec, list) and len(spec) == 2 and spec[0] in _OPS):
                    raise ValueError(f"{path}: target {name!r} of {notebook} should be [op, bound] "
                                     f"with op one of {sorted(_OPS)}, got {spec!r}")
            targets[rel] = {name: (op, float(bound)) for name, (op, bound) in metrics.items()}
    return targets




def execute_notebook(path: Path, fast: bool, timeout: int = 900) -> tuple[float, dict[str, float], object]:
    """Execute a notebook top to bottom in its own folder; return (seconds, metrics, executed notebook).

    Raises ``nbclient.exceptions.CellExecutionError`` when a cell fails. The notebook file itself is
    only read.
    """
    import nbclient
    import nbformat

    from dlbook.metrics import METRICS_ENV, read_metrics
    from dlbook.settings import FAST_ENV

    nb = nbformat.read(path, as_version=4)
    saved = {k: os.environ.get(k) for k in (FAST_ENV, METRICS_ENV, "MPLBACKEND")}
    with tempfile.TemporaryDirectory() as tmp:
        metrics_file = Path(tmp) / "metrics.json"
        os.environ[METRICS_ENV] = str(metrics_file)
        if fast:
            os.environ[FAST_ENV] = "1"
        else:
            os.environ.pop(FAST_ENV, None)
        os.environ.pop("MPLBACKEND", None)  # the kernel uses the inline backend
        try:
            client = nbclient.NotebookClient(
                nb, timeout=timeout, kernel_name="python3",
                resources={"metadata": {"path": str(path.parent)}},
            )
            start = time.perf_counter()
            client.execute()
            seconds = time.perf_counter() - start
            metrics = read_metrics(metrics_file)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return seconds, metrics, nb


def check_targets(rel_path: str, seconds: float, metrics: dict[str, float]) -> dict[str, dict]:
    """Return ``{metric: {"value", "target", "ok"}}`` for the targets of ``rel_path``."""
    results = {}
    for name, (op, bound) in load_targets().get(rel_path, {}).items():
        value = seconds if name == "seconds" else metrics.get(name)
        ok = value is not None and _OPS[op](value, bound)
        results[name] = {"value": value, "target": f"{op} {bound}", "ok": bool(ok)}
    return results


def run_bench(out: Path, notebooks: list[Path] | None = None, fast: bool = False) -> bool:
    """Execute ``notebooks`` (default: every chapter notebook) and write ``out``; return True if all targets hold."""
    notebooks = notebooks or sorted(CHAPTERS_DIR.glob("*/*.ipynb"))
    entries = []
    all_ok = True
    for path in notebooks:
        rel = path.resolve().relative_to(REPO_ROOT).as_posix()
        print(f"bench: {rel} ...", flush=True)
        try:
            seconds, metrics, _ = execute_notebook(path.resolve(), fast=fast)
            error = None
        except Exception as err:  # noqa: BLE001 - a failing notebook is reported, the rest still run
            seconds, metrics, error = float("nan"), {}, f"{type(err).__name__}: {str(err)[-2000:]}"
        targets = check_targets(rel, seconds, metrics)
        ok = error is None and all(t["ok"] for t in targets.values())
        all_ok &= ok
        entries.append({"path": rel, "seconds": round(seconds, 2), "metrics": metrics,
                        "targets": targets, "ok": ok, **({"error": error} if error else {})})
        status = "ok" if ok else "MISSED"
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        print(f"bench: {rel}: {seconds:.1f} s  {shown}  [{status}]", flush=True)
        for name, t in targets.items():
            if not t["ok"]:
                print(f"  target missed: {name} = {t['value']} (want {t['target']})", flush=True)
        if error:
            print(f"  error: {error[-500:]}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"mode": "fast" if fast else "full", "notebooks": entries}, indent=2))
    print(f"bench: wrote {out}")
    return all_ok
