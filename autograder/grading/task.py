"""What travels to a grading worker and back: a packed submission in, a graded one out.

Both executors (the local process pool and Dask workers on other hosts) grade a :class:`GradeTask`: the
submission's bytes and the chapter's reference notebooks, never a path on the instructor's host. The
worker grades in its own host's sandbox and returns a :class:`GradedSubmission` (the report and the
feedback pages, as bytes); only the instructor's process writes ``graded/``, grades.csv and the gradebook.

Packing copies the submission folder with the sandbox's own rules (:func:`.sandbox.copy_submission`:
regular files and folders only, links never followed, at most ``Limits.disk_bytes``) into a tar whose
headers carry no time, owner or host detail, so the same files always give the same bytes and the same
:attr:`PackedSubmission.sha256`: that digest is how an unchanged submission is recognised on a re-run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .intake import _is_dir, _notebook_names, _read
from .run import Settings
from .sandbox import copy_submission


@dataclass(frozen=True)
class PackedSubmission:
    """One student's submission as bytes: what a worker on any host needs to grade it."""

    student: str
    tree: bytes  # tar of the regular files and folders of the submission folder
    left_out: tuple[str, ...] = ()  # what the copy left out (links, special files, past the size limit)
    rejected: dict[str, str] = field(default_factory=dict)  # {notebook left out of the tree: why}
    withheld: dict[str, str] | None = None  # from intake: notebooks reported in place of being graded

    @property
    def sha256(self) -> str:
        """The digest of everything grading reads: the files' bytes and the intake's verdicts."""
        digest = hashlib.sha256(self.tree)
        digest.update(json.dumps([list(self.left_out), self.rejected, self.withheld], sort_keys=True).encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class GradeTask:
    """Grade ``submission`` against ``references`` ({notebook name: source notebook bytes}) with ``settings``."""

    assignment: str
    references: dict[str, bytes]
    settings: Settings
    submission: PackedSubmission


@dataclass
class GradedSubmission:
    """A worker's answer: the report (a JSON-able dict) and the feedback pages ({notebook stem: HTML bytes})."""

    report: dict
    feedback: dict[str, bytes] = field(default_factory=dict)


def references_sha256(references: dict[str, bytes]) -> str:
    """The digest of a chapter's reference notebooks (names and bytes): a change in them means regrading."""
    digest = hashlib.sha256()
    for name in sorted(references):
        digest.update(json.dumps(name).encode() + b"\0" + hashlib.sha256(references[name]).digest())
    return digest.hexdigest()


def _tar_info(name: str, mode: int, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory or mode & 0o111 else 0o644
    info.size = size
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def pack_submission(student: str, folder: Path, withheld: dict[str, str] | None = None,
                    disk_bytes: int = 512 << 20) -> PackedSubmission:
    """Pack ``folder`` (as the sandbox would copy it, at most ``disk_bytes``) into a :class:`PackedSubmission`.

    A top-level notebook the copy leaves out (a link, a special file, past the limit) is kept by name with
    the reason, so that it is reported as that file, unreadable, as when grading reads the folder itself.
    """
    folder = Path(folder)
    buf = io.BytesIO()
    left_out: list[str] = []
    rejected: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="ag-pack-") as tmp:
        copy = Path(tmp) / "copy"
        if _is_dir(folder):
            left_out = copy_submission(folder, copy, disk_bytes)
            for name in _notebook_names(folder):
                if not (copy / name).is_file():
                    try:
                        mode = os.lstat(folder / name).st_mode
                    except OSError as err:
                        rejected[name] = f"cannot be read ({err.strerror})"
                        continue
                    regular = stat.S_ISREG(mode)
                    rejected[name] = (f"cannot be read (left out of the submission's copy: over its "
                                      f"{disk_bytes >> 20} MiB)") if regular else str(_read(folder / name)[2])
        else:
            copy.mkdir()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                          errors="surrogateescape") as tar:
            for root, dirs, files in os.walk(copy):
                dirs.sort()
                rel = Path(root).relative_to(copy)
                for name in dirs:
                    tar.addfile(_tar_info((rel / name).as_posix(), 0o755, directory=True))
                for name in sorted(files):
                    path = Path(root) / name
                    st = path.stat()
                    with path.open("rb") as f:
                        tar.addfile(_tar_info((rel / name).as_posix(), st.st_mode, st.st_size), f)
    return PackedSubmission(student, buf.getvalue(), tuple(left_out), rejected, withheld)


def unpack_tree(tree: bytes, dest: Path) -> None:
    """Write the regular files and folders of the tar ``tree`` under the existing folder ``dest``.

    The tar comes from :func:`pack_submission`; still, a member outside ``dest`` or of any other type is
    skipped, and no path is followed through a link.
    """
    dest = Path(dest)
    with tarfile.open(fileobj=io.BytesIO(tree), mode="r:", encoding="utf-8", errors="surrogateescape") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if not parts or PurePosixPath(member.name).is_absolute() or ".." in parts:
                continue
            target = dest.joinpath(*parts)
            if member.isdir():
                target.mkdir(mode=0o755, exist_ok=True)
            elif member.isreg():
                data = tar.extractfile(member).read()
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
