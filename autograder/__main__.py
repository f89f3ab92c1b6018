"""``python -m autograder``: the course's command line (see the README's instructor guide)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import course
from .config import CHAPTERS_DIR, DEFAULT_COURSE_DIR, LEARNER_COURSE_DIR, REPO_ROOT
from .variants import VariantError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m autograder", description=__doc__)
    parser.add_argument("--course-dir", type=Path, default=None,
                        help="nbgrader course directory (default: build/course; build/learner for lab and workspace)")
    parser.add_argument("--source-dir", type=Path, default=CHAPTERS_DIR,
                        help="source notebooks (default: chapters/)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("release", help="generate the student version of chapters")
    p.add_argument("chapters", nargs="*", help="chapter folders, e.g. 01_backprop (default: all)")
    p.add_argument("--per-student", type=Path, default=None, metavar="ROSTER",
                   help="also one release per learner of this CSV (student_id column) with their own exercise "
                        "values, in COURSE_DIR/release-per-student/ (see autograder/variants.py)")
    p.add_argument("--exchange", type=Path, default=None,
                   help="with --per-student: also into EXCHANGE/dlbook/personal/<student>/ (the classroom's)")

    p = sub.add_parser("lab", add_help=False,
                       help="learners: build workspace/ and open JupyterLab on it (`lab --help` for more)")
    p.add_argument("lab_args", nargs=argparse.REMAINDER, help="see `python -m autograder lab --help`")

    p = sub.add_parser("workspace", help="build or update the learner workspace, never overwriting (Binder)")
    p.add_argument("--dest", type=Path, default=REPO_ROOT / "workspace")

    p = sub.add_parser("autograde", help="autograde a folder of submissions")
    p.add_argument("chapter")
    p.add_argument("submissions", type=Path, nargs="?",
                   help="folder of SUBMISSIONS/<student>/<chapter>/*.ipynb (default: already collected)")
    p.add_argument("--full", action="store_true", help="run notebooks at full settings (slow)")
    p.add_argument("--fresh-kernels", action="store_true",
                   help="start each notebook's kernel as a new process (default: forked from a warm template, "
                        "see autograder/warm_kernels.py)")

    p = sub.add_parser("grade", help="confined, parallel, tamper-aware grading of a folder or zip of submissions")
    p.add_argument("chapter")
    p.add_argument("submissions", type=Path,
                   help="nbgrader submitted/ tree, SUBMISSIONS/<student>/*.ipynb, or an LMS zip")
    p.add_argument("--workers", type=int, default=None, help="parallel kernels (default: the number of cores)")
    p.add_argument("--db", default=None, help="gradebook SQLAlchemy URL (default: the course's gradebook.db)")
    p.add_argument("--out", type=Path, default=None,
                   help="reports, feedback and grades.csv (default: COURSE_DIR/graded/CHAPTER)")
    p.add_argument("--cell-timeout", type=float, default=120.0, help="seconds per cell (default 120)")
    p.add_argument("--budget", type=float, default=900.0, help="seconds per notebook (default 900)")
    p.add_argument("--memory", type=float, default=4.0, help="GiB of memory per kernel (default 4)")
    p.add_argument("--full", action="store_true", help="run notebooks at full settings (slow)")
    p.add_argument("--disk", type=float, default=0.5, help="GiB of /grade and of /tmp per kernel (default 0.5)")
    p.add_argument("--judge-seed", type=int, default=None,
                   help="salt of the hidden inputs (default: a fresh one per notebook, recorded in each report)")
    p.add_argument("--profile", action="store_true", help="print where a graded notebook's time goes")
    p.add_argument("--zygote", choices=["auto", "on", "off"], default="auto",
                   help="fork kernels from a warm template (root with bubblewrap; auto: when each worker grades "
                        "3 notebooks or more)")

    p.add_argument("--executor", default="local",
                   help="local (processes here, default) or dask://HOST:PORT (the workers of a Dask scheduler)")
    p.add_argument("--regrade", action="store_true",
                   help="grade every submission again (default: skip those unchanged since the gradebook got them)")
    p.add_argument("--policy", type=Path, default=None,
                   help="due dates, late penalty, extensions (default: COURSE_DIR/policy.toml if it exists; README)")

    p = sub.add_parser("scheduler", help="start the Dask scheduler that grading workers join (one task per slot)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8786, help="port (default 8786)")
    p.add_argument("--allowed-failures", type=int, default=2,
                   help="a submission whose workers died more than this many times is reported crashed (default 2)")

    p = sub.add_parser("worker", help="start a Dask grading worker on this host (one slot per core)")
    p.add_argument("scheduler", help="the Dask scheduler: HOST:PORT, tcp://HOST:PORT or dask://HOST:PORT")
    p.add_argument("--slots", type=int, default=None, help="submissions graded at once (default: the number of cores)")
    p.add_argument("--memory", type=float, default=4.0,
                   help="GiB of memory per slot: Dask's --memory-limit of each worker process (default 4)")

    p = sub.add_parser("feedback", help="generate HTML feedback with hidden tests removed")
    p.add_argument("chapter")

    p = sub.add_parser("export", help="export all grades as CSV (nbgrader's, or for an LMS: Canvas, Moodle)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=(
        "formats (one total per student and assignment, empty without a submission):\n"
        "  nbgrader  nbgrader's CSV export of the course's gradebook (the default)\n"
        "  csv       student_id, first_name, last_name, email, assignment, score, max_score, status\n"
        "            (one row per student and assignment; status: graded, crashed, error or missing)\n"
        "  canvas    Student, ID, SIS User ID, SIS Login ID, Section, then one column per assignment;\n"
        "            a 'Points Possible' second row; ID empty, SIS User/Login ID = the student id\n"
        "  moodle    Username, First name, Last name, Email address, then one column per assignment\n"
        "            (map Username to 'username' and each column to its grade item at import)"))
    p.add_argument("--to", type=Path, default=REPO_ROOT / "build" / "grades.csv")
    p.add_argument("--format", choices=["nbgrader", "csv", "canvas", "moodle"], default="nbgrader",
                   help="the CSV layout (default nbgrader; see below)")
    p.add_argument("--db", default=None, help="gradebook SQLAlchemy URL (default: the course's gradebook.db)")
    p.add_argument("--chapters", nargs="*", default=None, help="only these assignments (default: all)")

    p = sub.add_parser("similarity", help="rank pairs of learners by how alike their own code is (HTML and CSV)")
    p.add_argument("chapter")
    p.add_argument("submissions", type=Path,
                   help="nbgrader submitted/ tree, SUBMISSIONS/<student>/*.ipynb, or an LMS zip (as for grade)")
    p.add_argument("--out", type=Path, default=None,
                   help="report.html and pairs.csv (default: build/similarity/CHAPTER)")
    p.add_argument("--threshold", type=float, default=None,
                   help="pairs at or above this score (0-1) are shown in report.html (default 0.5)")

    p = sub.add_parser("bench", help="execute every chapter at full settings and check its targets")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "bench.json")
    p.add_argument("--fast", action="store_true", help="fast mode (a smoke test, targets not meaningful)")
    p.add_argument("notebooks", type=Path, nargs="*")
    p.add_argument("--no-grading", action="store_true", help="skip the grading-throughput benchmark")
    p.add_argument("--grading-only", action="store_true", help="only the grading-throughput benchmark")
    p.add_argument("--grading-submissions", type=int, default=20, help="submissions in the grading benchmark")
    p.add_argument("--no-dask", action="store_true",
                   help="skip the Dask grading benchmark (1 worker vs 2, and vs the local pool)")
    p.add_argument("--dask-submissions", type=int, default=12, help="submissions in the Dask grading benchmark")

    p = sub.add_parser("gpu-check", add_help=False,
                       help="dlbook on a CUDA GPU vs the CPU: references, training, autocast, DDP (skips without one)")
    p.add_argument("gpu_check_args", nargs=argparse.REMAINDER, help="see `python -m autograder gpu-check --help`")

    p = sub.add_parser("classroom", add_help=False,
                       help="a JupyterHub for a class with the nbgrader exchange (`classroom --help` for more)")
    p.add_argument("classroom_args", nargs=argparse.REMAINDER, help="see `python -m autograder classroom --help`")

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "lab":  # its options are its own (autograder/lab.py); its default course is its own too
        from .lab import main as lab_main

        given = ["--course-dir", str(args.course_dir)] if args.course_dir else []
        return lab_main([*given, "--source-dir", str(args.source_dir), *extra, *args.lab_args])
    args.course_dir = args.course_dir or (LEARNER_COURSE_DIR if args.command == "workspace" else DEFAULT_COURSE_DIR)
    if args.command == "classroom":  # its options are its own (autograder/classroom/__init__.py)
        from .classroom import main as classroom_main

        return classroom_main(extra + args.classroom_args, args.course_dir.resolve(), args.source_dir.resolve())
    if args.command == "gpu-check":  # its options are its own (autograder/gpu_check.py)
        from .gpu_check import main as gpu_check_main

        return gpu_check_main(extra + args.gpu_check_args)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    course_dir, source_dir = args.course_dir.resolve(), args.source_dir.resolve()
    try:
        return _COMMANDS[args.command](args, parser, course_dir, source_dir) or 0
    except (course.CourseError, FileNotFoundError, ConnectionError, VariantError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _release(args, parser, course_dir: Path, source_dir: Path) -> None:
    if args.per_student:
        from .variants import release_per_student

        chapters = args.chapters or course.list_chapters(source_dir)
        for chapter, folders in release_per_student(chapters, args.per_student, course_dir, source_dir,
                                                    args.exchange).items():
            print(f"released {chapter} for {len(folders)} learners in {course_dir / 'release-per-student'}")
        return
    if args.exchange:
        parser.error("--exchange goes with --per-student")
    for path in course.release(args.chapters or None, course_dir, source_dir):
        print(f"released {path}")


def _workspace(args, parser, course_dir: Path, source_dir: Path) -> None:
    from .lab import prepare_workspace

    report = prepare_workspace(args.dest, course_dir, source_dir)
    print(f"Workspace: {args.dest}")
    print(report.summary())


def _autograde(args, parser, course_dir: Path, source_dir: Path) -> None:
    students = course.autograde(args.chapter, args.submissions, course_dir, source_dir, fast=not args.full,
                                warm_kernels=not args.fresh_kernels)
    table = course.scores(args.chapter, course_dir)
    print(f"\n{'student':<24} {'score':>12}")
    for student in students:
        cells = table.get(student, {})
        got = sum(s for s, _ in cells.values())
        total = sum(m for _, m in cells.values())
        print(f"{student:<24} {got:>6g} / {total:<5g}")


def _grade(args, parser, course_dir: Path, source_dir: Path) -> int:
    from .grade import Settings, grade
    from .grading.deadlines import PolicyError, load_policy
    from .grading.executors import dask_address
    from .grading.sandbox import Limits, bwrap_available
    from .variants import for_grading

    try:
        dask_address(args.executor)
    except ValueError as err:
        parser.error(str(err))
    course._check_chapter(args.chapter, source_dir)
    settings = Settings(cell_timeout=args.cell_timeout, notebook_budget=args.budget, fast=not args.full,
                        limits=Limits(memory_bytes=int(args.memory * (1 << 30)),
                                      disk_bytes=int(args.disk * (1 << 30))),
                        judge_seed=args.judge_seed,
                        zygote={"auto": None, "on": True, "off": False}[args.zygote])
    if args.executor == "local" and not bwrap_available():  # a Dask worker's report says its own
        print("warning: bubblewrap is not available: learner code runs with rlimits and its own process "
              "group only, NOT confined on disk or network (see the README)", file=sys.stderr)
    db = args.db or f"sqlite:///{course_dir / 'gradebook.db'}"
    course_dir.mkdir(parents=True, exist_ok=True)
    policy_path = args.policy or course_dir / "policy.toml"
    try:  # deadlines: an explicit --policy must exist; the course's own is optional
        policy = (load_policy(policy_path, course.list_chapters(source_dir))
                  if args.policy or policy_path.is_file() else None)
    except (PolicyError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = grade(args.chapter, args.submissions, source_dir, args.out or course_dir / "graded" / args.chapter,
                   workers=args.workers, db_url=db, settings=settings, executor=args.executor,
                   regrade=args.regrade, variants=for_grading(course_dir, args.chapter), policy=policy)
    print(result.summary())
    if args.profile:
        print(result.profile())
    return 0


def _scheduler(args, parser, course_dir: Path, source_dir: Path) -> None:
    from .grading.executors import exec_scheduler

    try:
        exec_scheduler(args.host, args.port, args.allowed_failures)
    except ValueError as err:  # raised before the exec: a bad --allowed-failures
        parser.error(f"--allowed-failures: {err}")


def _worker(args, parser, course_dir: Path, source_dir: Path) -> None:
    from .grading.executors import exec_worker
    from .grading.run import Settings

    exec_worker(args.scheduler, args.slots, int(args.memory * (1 << 30)), Settings().worker_memory_bytes)


def _feedback(args, parser, course_dir: Path, source_dir: Path) -> None:
    print(f"feedback in {course.feedback(args.chapter, course_dir, source_dir)}")


def _export(args, parser, course_dir: Path, source_dir: Path) -> None:
    if args.format == "nbgrader":
        print(f"grades written to {course.export(args.to, course_dir, source_dir)}")
        return
    from .grading.export import export_grades

    db = args.db or f"sqlite:///{course_dir / 'gradebook.db'}"
    print(f"grades written to {export_grades(db, args.format, args.to, args.chapters)} ({args.format})")


def _similarity(args, parser, course_dir: Path, source_dir: Path) -> None:
    from .grading.similarity import THRESHOLD, similarity

    course._check_chapter(args.chapter, source_dir)
    threshold = THRESHOLD if args.threshold is None else args.threshold
    if not 0.0 <= threshold <= 1.0:
        parser.error(f"--threshold: expected a number between 0 and 1, got {threshold}")
    out = args.out or REPO_ROOT / "build" / "similarity" / args.chapter
    print(similarity(args.chapter, args.submissions, source_dir, out, threshold).summary())


def _bench(args, parser, course_dir: Path, source_dir: Path) -> int:
    from .bench import run_bench

    ok = args.grading_only or run_bench(args.out, [p.resolve() for p in args.notebooks] or None, args.fast)
    if not args.no_grading and not args.notebooks:
        from .bench_grading import run_dask_bench, run_grading_bench

        ok = run_grading_bench(args.out, args.grading_submissions) and ok
        if not args.no_dask:
            ok = run_dask_bench(args.out, args.dask_submissions) and ok
    return 0 if ok else 1


_COMMANDS = {"release": _release, "workspace": _workspace, "autograde": _autograde, "grade": _grade,
             "scheduler": _scheduler, "worker": _worker, "feedback": _feedback, "export": _export,
             "similarity": _similarity,
             "bench": _bench}


if __name__ == "__main__":
    sys.exit(main())
