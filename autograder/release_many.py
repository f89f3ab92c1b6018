"""``python -m autograder.release_many CHAPTER...`` (run in a course directory): nbgrader's
``generate_assignment --force`` for several chapters in one process.

``nbgrader generate_assignment`` takes one assignment per run, and each run pays for starting nbgrader
(about 2 s) and for nbgrader asking ``alembic`` for its schema version in a subprocess each time it opens
the gradebook (about 1 s). Releasing every chapter (``make lab``'s first start, ``make release``, Binder)
did that once per chapter. Here nbgrader's own API (``NbGraderAPI.generate_assignment``, what the
formgrader calls) releases them one after the other with the course's configuration
(:func:`autograder.config.configure`, the same as the generated ``nbgrader_config.py``); the release is
byte for byte the one the command line makes (tests/test_course.py). The alembic version is read in
this process (:func:`autograder.config.alembic_head`), not from a subprocess per gradebook.
"""

from __future__ import annotations

import sys
from pathlib import Path


def release_many(course_dir: Path, source_dir: Path, chapters: list[str]) -> int:
    """Release ``chapters``; print nbgrader's log; return 0, or 1 at the first chapter that fails."""
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    from .config import configure, use_inprocess_alembic_head

    use_inprocess_alembic_head()
    api = NbGraderAPI(config=configure(Config(), course_dir, source_dir))
    for chapter in chapters:
        result = api.generate_assignment(chapter, force=True)
        sys.stdout.write(result.get("log", ""))
        if not result["success"]:
            sys.stdout.write(f"{result.get('error', '')}\nreleasing {chapter} failed\n")
            return 1
    return 0


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        sys.stderr.write("usage: python -m autograder.release_many COURSE_DIR SOURCE_DIR CHAPTER...\n")
        return 2
    return release_many(Path(argv[0]), Path(argv[1]), argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
