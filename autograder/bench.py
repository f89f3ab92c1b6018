"""``make bench``: execute every chapter notebook at full settings, collect metrics, check targets.

Writes ``build/bench.json``::

    {"notebooks": [{"path": "chapters/01_backprop/2_....ipynb", "seconds": 41.2, "peak_rss_mb": 812.4,
                    "children_peak_rss_mb": 0.0, "metrics": {"test_accuracy": 0.975, ...},
                    "targets": {...}, "ok": true}]}

``peak_rss_mb`` is the kernel's peak resident memory and ``children_peak_rss_mb`` the largest of its
child processes' (torchrun workers); at full settings the larger of the two must stay <= 1,500 MiB
(Binder's session has about 2 GB).
"""

from __future__ import annotations

import json
import operator
import os
import re
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from .config import CHAPTERS_DIR, REPO_ROOT

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
TARGETS_FILE = "targets.json"  # in each chapter's folder
_TABLE_KEYS = {"metrics", "what", "target"}
README = REPO_ROOT / "README.md"
TABLE_BEGIN = ("<!-- targets table: generated from chapters/*/targets.json; "
               "regenerate with `python -m autograder.bench --update-readme` -->")
TABLE_END = "<!-- end of targets table -->"


def _read_targets_file(path: Path) -> dict[str, dict]:
    """Return ``{notebook: {"targets": {metric: (op, bound)}, "table": [row, ...]}}`` from one ``targets.json``.

    The file maps each notebook of the chapter to ``{"targets": {metric: [op, bound]}, "table": [row]}``;
    a row, ``{"metrics": [name, ...], "what": "...", "target": "..."}``, is one line of the README's
    targets table. Raises ``ValueError`` naming the file, the notebook and what was expected.
    """
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object {{notebook: {{targets, table}}}}, got {type(data).__name__}")
    out = {}
    for notebook, entry in data.items():
        if not (isinstance(entry, dict) and set(entry) == {"targets", "table"}):
            got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise ValueError(f"{path}: {notebook} should map to {{\"targets\": ..., \"table\": ...}}, got {got}")
        if not isinstance(entry["targets"], dict):
            raise ValueError(f"{path}: the targets of {notebook} should be {{metric: [op, bound]}}, "
                             f"got {entry['targets']!r}")
        for name, spec in entry["targets"].items():
            if not (isinstance(spec, list) and len(spec) == 2 and spec[0] in _OPS):
                raise ValueError(f"{path}: target {name!r} of {notebook} should be [op, bound] "
                                 f"with op one of {sorted(_OPS)}, got {spec!r}")
        rows = entry["table"]
        for row in rows if isinstance(rows, list) else [rows]:
            if not (isinstance(row, dict) and set(row) == _TABLE_KEYS and isinstance(row["metrics"], list)
                    and row["metrics"] and all(isinstance(row[k], str) for k in ("what", "target"))):
                raise ValueError(f"{path}: a table row of {notebook} should be {{\"metrics\": [name, ...], "
                                 f"\"what\": str, \"target\": str}}, got {row!r}")
        out[notebook] = {"targets": {name: (op, float(bound)) for name, (op, bound) in entry["targets"].items()},
                         "table": rows}
    return out


def _chapter_files(chapters_dir: Path) -> list[Path]:
    return sorted(chapters_dir.glob(f"*/{TARGETS_FILE}"))


def load_targets(chapters_dir: Path = CHAPTERS_DIR) -> dict[str, dict[str, tuple[str, float]]]:
    """Return the quality targets per notebook: ``{"chapters/NN_slug/nb.ipynb": {metric: (op, bound)}}``.

    Each chapter keeps its targets in ``chapters/NN_slug/targets.json``:
    ``{"notebook.ipynb": {"targets": {"test_accuracy": [">=", 0.97], "seconds": ["<=", 180]}, "table": [...]}}``.
    ``seconds`` is the wall time of the whole notebook at full settings on the benchmark machine (2 CPU
    cores). ``table`` holds the notebook's rows of the README's targets table (:func:`targets_table`).
    """
    return {f"chapters/{path.parent.name}/{notebook}": entry["targets"]
            for path in _chapter_files(chapters_dir) for notebook, entry in _read_targets_file(path).items()}


def _table_line(cells: list[str]) -> str:
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def _row_line(label: str, row: dict) -> str:
    return _table_line([label, ", ".join(f"`{m}`" for m in row["metrics"]), row["what"], row["target"]])


def targets_table(chapters_dir: Path = CHAPTERS_DIR) -> str:
    """Return the README's targets table (Markdown): the ``table`` rows of every chapter's ``targets.json``.

    A row's notebook is written ``NN / k`` (chapter number, the notebook's number in its chapter); the
    grading benchmark's rows (``bench_grading.TABLE_ROWS``) come last.
    """
    from .bench_grading import TABLE_ROWS

    lines = [_table_line(["Notebook", "Metric", "Meaning", "Target"]), _table_line(["---"] * 4)]
    for path in _chapter_files(chapters_dir):
        for notebook, entry in sorted(_read_targets_file(path).items()):
            label = f"{path.parent.name.split('_')[0]} / {notebook.split('_')[0]}"
            lines += [_row_line(label, row) for row in entry["table"]]
    lines += [_row_line(row["label"], row) for row in TABLE_ROWS]
    return "\n".join(lines) + "\n"


def readme_with_table(readme: str, table: str) -> str:
    """Return ``readme`` with the text between the targets-table markers replaced by ``table``."""
    begin, end = readme.find(TABLE_BEGIN), readme.find(TABLE_END)
    if begin < 0 or end < begin:
        raise ValueError(f"expected the README to hold the lines {TABLE_BEGIN!r} and then {TABLE_END!r}")
    return readme[: begin + len(TABLE_BEGIN)] + "\n" + table + readme[end:]


def kernel_env(metrics_file: Path, fast: bool, base: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment for a benchmark kernel: ``base`` (default: this process's) with its settings.

    ``DLBOOK_METRICS_FILE`` names ``metrics_file``; ``DLBOOK_FAST`` is set only when ``fast``; ``MPLBACKEND``
    is dropped, so the kernel uses the inline backend. ``base`` itself is not changed.
    """
    from dlbook.metrics import METRICS_ENV
    from dlbook.settings import FAST_ENV

    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in (FAST_ENV, "MPLBACKEND")}
    env[METRICS_ENV] = str(metrics_file)
    if fast:
        env[FAST_ENV] = "1"
    return env


# Appended to the executed copy of a notebook (and taken out again): the kernel's peak resident memory,
# and the largest of its finished children's (torchrun workers, DataLoader workers) and of the ranks
# dlbook.distributed.launch started (forked by its warm launcher, they are not the kernel's children), in
# bytes. Linux gives ru_maxrss in KiB (macOS in bytes).
_MEMORY_CELL = """\
import resource as _r, sys as _s
_k = 1 if _s.platform == "darwin" else 1024
_c = _r.getrusage(_r.RUSAGE_CHILDREN).ru_maxrss * _k
if "dlbook.distributed" in _s.modules:
    _c = max(_c, int(_s.modules["dlbook.distributed"].ranks_peak_rss_mb() * 2**20))
print("[dlbook memory]", _r.getrusage(_r.RUSAGE_SELF).ru_maxrss * _k, _c)
"""
MEMORY_LIMIT_MB = 1500  # Binder gives a session about 2 GB; every notebook stays under this at full settings


class Executed(NamedTuple):
    seconds: float
    metrics: dict[str, float]
    notebook: object
    peak_rss_mb: float  # the kernel's own peak
    children_peak_rss_mb: float  # the largest peak of a child process the kernel waited for (0 when none)


def execute_notebook(path: Path, fast: bool, timeout: int = 900) -> Executed:
    """Execute a notebook top to bottom in its own folder; return its time, metrics, executed copy and memory.

    The kernel gets its settings in its own environment (:func:`kernel_env`); this process's is not
    changed. Raises ``nbclient.exceptions.CellExecutionError`` when a cell fails. The notebook file
    itself is only read. The time excludes the cell that reads the memory figures, which is run last
    and removed from the executed copy.
    """
    import nbclient
    import nbformat

    from dlbook.metrics import read_metrics

    from .zmq_poll import install

    install()  # a widget cell must not leave nbclient waiting for its reply until the timeout
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(_MEMORY_CELL))
    with tempfile.TemporaryDirectory() as tmp:
        metrics_file = Path(tmp) / "metrics.json"
        client = nbclient.NotebookClient(
            nb, timeout=timeout, kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        )
        start = time.perf_counter()
        client.execute(env=kernel_env(metrics_file, fast))  # passed on to the kernel manager's start_kernel
        seconds = time.perf_counter() - start
        metrics = read_metrics(metrics_file)
    memory_cell = nb.cells.pop()
    seconds -= _cell_seconds(memory_cell)
    text = "".join(o.get("text", "") for o in memory_cell.outputs if o.output_type == "stream")
    found = re.search(r"\[dlbook memory\] (\d+) (\d+)", text)
    if not found:
        raise RuntimeError(f"{path.name}: the kernel did not report its memory; its last cell printed {text[-300:]!r}")
    own, children = (int(v) / 2**20 for v in found.groups())
    return Executed(seconds, metrics, nb, round(own, 1), round(children, 1))


def _cell_seconds(cell) -> float:
    """Seconds a cell took, from the timing nbclient records (0 when it did not record it)."""
    from datetime import datetime

    timing = cell.get("metadata", {}).get("execution", {})
    try:
        begin = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return 0.0
    return max(0.0, (end - begin).total_seconds())


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
        memory: dict[str, float] = {}
        try:
            run = execute_notebook(path.resolve(), fast=fast)
            seconds, metrics, error = run.seconds, run.metrics, None
            memory = {"peak_rss_mb": run.peak_rss_mb, "children_peak_rss_mb": run.children_peak_rss_mb}
        except Exception as err:  # noqa: BLE001 - a failing notebook is reported, the rest still run
            seconds, metrics, error = float("nan"), {}, f"{type(err).__name__}: {str(err)[-2000:]}"
        targets = check_targets(rel, seconds, metrics)
        if memory and not fast:  # every notebook, whatever its targets.json says
            peak = max(memory.values())
            targets["peak_rss_mb"] = {"value": peak, "target": f"<= {MEMORY_LIMIT_MB}", "ok": peak <= MEMORY_LIMIT_MB}
        ok = error is None and all(t["ok"] for t in targets.values())
        all_ok &= ok
        entries.append({"path": rel, "seconds": round(seconds, 2), **memory, "metrics": metrics,
                        "targets": targets, "ok": ok, **({"error": error} if error else {})})
        status = "ok" if ok else "MISSED"
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        rss = f"  peak {memory['peak_rss_mb']:.0f} MiB" if memory else ""
        print(f"bench: {rel}: {seconds:.1f} s{rss}  {shown}  [{status}]", flush=True)
        for name, t in targets.items():
            if not t["ok"]:
                print(f"  target missed: {name} = {t['value']} (want {t['target']})", flush=True)
        if error:
            print(f"  error: {error[-500:]}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"mode": "fast" if fast else "full", "notebooks": entries}, indent=2))
    print(f"bench: wrote {out}")
    return all_ok


def main(argv: list[str] | None = None) -> int:
    """``python -m autograder.bench --table``: print the README's targets table; ``--update-readme``: write it."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m autograder.bench", description=main.__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--table", action="store_true", help="print the targets table generated from the chapters")
    group.add_argument("--update-readme", action="store_true", help="write that table into README.md")
    args = parser.parse_args(argv)
    table = targets_table()
    if args.table:
        print(table, end="")
    else:
        README.write_text(readme_with_table(README.read_text(), table))
        print(f"bench: wrote the targets table into {README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
