"""Intake: finding each student's notebooks in a submitted/ tree, a folder or an LMS zip.

Learner input is hostile, so intake follows these rules (the README repeats them):

- Every zip member and every file is handled on its own: a member or file that cannot be used
  (a name the file system refuses, a file/folder clash, a corrupt member, ...) becomes a note in
  the batch's problems and never stops the batch.
- Symbolic links are never followed: a linked student folder or ``<assignment>`` folder is skipped
  with a note; a linked notebook is rejected (``symlink_rejected: NAME``, the notebook's status is
  ``invalid``); a zip member that is a link is not extracted (its notebook is rejected the same way).
- Nothing ambiguous is graded or merged. A zip member name given twice, or a file that is also a
  folder in the zip, is extracted as nothing and its notebook is reported as
  ``ambiguous_submission: ...`` (status ``missing``). A student id that is both a folder and loose
  ``<id>_*.ipynb`` files is not merged: none of that student's notebooks is graded, each is reported
  ambiguous, and a note names the folder and the files. A reference notebook that no file carries
  by name and that two or more renamed files match equally well (by grade_ids) is ambiguous too.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from .notebook import load_submission

STUDENT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
INTAKE_FLAGS = ("ambiguous_submission:", "symlink_rejected:")  # errors that are flags of their own
EVERYTHING = "*"  # a ``withheld`` key: every notebook of the student (not a file name: it has no .ipynb)
MAX_MEMBERS = 50_000  # zip members extracted at most


def _show(name: object, keep: int = 80) -> str:
    """A file name for a note: quoted (control characters escaped) and cut to ``keep`` characters."""
    text = str(name)
    return repr(text if len(text) <= keep else f"{text[: keep - 20]}...{text[-17:]}")


def _why(err: BaseException) -> str:
    """An exception for a note: its type and message (an OSError's without the long path in it), cut short."""
    text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return f"{type(err).__name__}: {text[:200]}"


def _entries(folder: Path) -> list[os.DirEntry]:
    """The entries of ``folder``, sorted by name (nothing is followed: use ``is_*(follow_symlinks=False)``)."""
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)


def _is_dir(path: Path) -> bool:
    """Whether ``path`` is a folder itself, not a link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _notebook_names(folder: Path) -> list[str]:
    return [e.name for e in _entries(folder) if e.name.endswith(".ipynb")]


# --- one submission ------------------------------------------------------------------------------

def _ids(cells: list[dict]) -> set[str]:
    return {c["meta"].get("grade_id") for c in cells if isinstance(c["meta"].get("grade_id"), str)}


def _read(path: Path) -> tuple:
    """``(path, cells, None)``, or ``(path, None, why)`` for a link, a non-file or an unreadable notebook."""
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            return path, None, f"symlink_rejected: {path.name} is a symbolic link (links are never followed)"
        if not stat.S_ISREG(mode):
            return path, None, "not a regular file"
        return path, load_submission(path), None
    except ValueError as err:
        return path, None, str(err)
    except OSError as err:
        return path, None, f"cannot be read ({_why(err)})"
    except Exception as err:  # noqa: BLE001 - one bad file never loses the others
        return path, None, f"unreadable ({_why(err)})"


def match_notebooks(ref_names: list[str], ref_ids: dict[str, set[str]], folder: Path,
                    withheld: dict[str, str] | None = None, rejected: dict[str, str] | None = None) -> dict[str, tuple]:
    """Return ``{reference name: (path or None, cells or None, error or None)}`` for a submission folder.

    A notebook is found by its name, else (renamed) by the grade_ids it contains; a reference that two
    renamed files match equally well is ambiguous (neither is graded). Links are rejected, never read.
    ``withheld`` (from :func:`discover`) maps a file name, or ``EVERYTHING``, to the flag reported in place
    of that notebook (it was ambiguous or a link at intake: there is no file to grade). ``rejected`` maps
    the name of a notebook that was in the folder but is not there now (a packed copy left it out: a link,
    a special file) to why; it is reported as that file, unreadable.
    """
    withheld = dict(withheld or {})
    everything = withheld.pop(EVERYTHING, None)
    try:
        names = _notebook_names(folder) if _is_dir(folder) and everything is None else []
    except OSError as err:
        names, everything = [], f"the submission folder cannot be read ({_why(err)})"
    parsed: dict[str, tuple] = {n: _read(folder / n) for n in names if n not in withheld}
    if everything is None:
        parsed.update({n: (folder / n, None, why) for n, why in (rejected or {}).items() if n not in withheld})
    parsed.update({n: (None, None, flag) for n, flag in withheld.items()})
    out = {name: parsed[name] for name in ref_names if name in parsed}
    used = set(out)
    _match_renamed(ref_names, ref_ids, parsed, out, used)
    unmatched = [n for n in parsed if n not in used]
    missing = [n for n in ref_names if n not in out]
    if len(missing) == 1 and len(unmatched) == 1:  # one unreadable or unrecognisable file: that one
        out[missing[0]] = parsed[unmatched[0]]
    for name in ref_names:
        out.setdefault(name, (None, None, everything or "no such notebook in the submission"))
    return out


def _match_renamed(ref_names: list[str], ref_ids: dict[str, set[str]], parsed: dict[str, tuple], out: dict,
                   used: set[str]) -> None:
    """Match the references not found by name to the unused files holding most of their grade_ids."""
    for name in ref_names:
        if name in out:
            continue
        scores = [(len(_ids(c) & ref_ids[name]), n) for n, (_, c, _) in parsed.items() if n not in used and c]
        best = max((s for s, _ in scores), default=0)
        tied = [n for s, n in scores if s == best and best > 0]
        if len(tied) == 1:
            out[name] = parsed[tied[0]]
            used.add(tied[0])
        elif tied:
            out[name] = (None, None, f"ambiguous_submission: {name} matches {', '.join(map(_show, tied))} "
                                     f"equally (by grade_ids); none is graded")
            used.update(tied)


# --- a batch -----------------------------------------------------------------------------------

def _member_kind(info: zipfile.ZipInfo) -> int:
    """The file type a zip member claims (``stat.S_IFLNK`` for a link); 0 when the zip does not say.

    Unix zips keep the mode in the high 16 bits of ``external_attr``; a link is refused whatever system
    the zip claims, another type only from a Unix zip (others leave those bits to chance).
    """
    kind = stat.S_IFMT(info.external_attr >> 16)
    return kind if kind == stat.S_IFLNK or info.create_system == 3 else 0


def safe_extract(archive: Path, dest: Path, max_bytes: int = 2 << 30,
                  max_members: int = MAX_MEMBERS) -> tuple[list[str], dict[PurePosixPath, str]]:
    """Extract a zip member by member; return (notes, {relative path: flag} of notebooks not extracted).

    No member escapes ``dest`` (absolute names and ``..`` are skipped), none is a link or a special file,
    the total stays under ``max_bytes``. A name given twice, or both a file and a folder, is extracted
    as nothing and returned as ambiguous; a link is returned as rejected. Any other failure of a member
    (a name the file system refuses, a corrupt member) is a note; the other members are extracted.
    """
    notes: list[str] = []
    rejected: dict[PurePosixPath, str] = {}
    where = f"zip {archive.name!r}"
    try:
        zf = zipfile.ZipFile(archive)
    except Exception as err:  # noqa: BLE001 - reported, never raised
        return [f"{where}: cannot be read ({_why(err)}); nothing extracted"], rejected
    with zf:
        members = [(PurePosixPath(info.filename), info) for info in zf.infolist()[:max_members]]
        # never outside dest; macOS resource forks are no submission
        members = [(name, info) for name, info in members if not (
            name.is_absolute() or ".." in name.parts or not name.parts or name.parts[0] == "__MACOSX")]
        if len(zf.infolist()) > max_members:
            notes.append(f"{where}: more than {max_members} members; the rest were not extracted")
        files = [n for n, i in members if not i.is_dir()]
        folders = {n for n, i in members if i.is_dir()} | {p for n in files for p in n.parents}
        counts: dict[PurePosixPath, int] = {}
        for n in files:
            counts[n] = counts.get(n, 0) + 1
        total = 0
        for name, info in members:
            if info.is_dir():
                continue  # folders are made for the files in them
            try:
                if _refused(name, info, counts[name], name in folders, rejected, notes, where):
                    continue
                if total + info.file_size > max_bytes:
                    notes.append(f"{where}: skipped member {_show(info.filename)}: the zip would unpack to "
                                 f"more than {max_bytes} bytes")
                else:
                    total += info.file_size
                    _extract_one(zf, info, dest / name)
            except Exception as err:  # noqa: BLE001 - one bad member never stops the others
                notes.append(f"{where}: skipped member {_show(info.filename)}: {_why(err)}")
    return notes, rejected


def _refused(name: PurePosixPath, info: zipfile.ZipInfo, count: int, is_folder: bool,
             rejected: dict[PurePosixPath, str], notes: list[str], where: str) -> bool:
    """True for a member that is not extracted (a link, a special file, a name given twice or also a folder)."""
    kind = _member_kind(info)
    if kind == stat.S_IFLNK:
        rejected[name] = f"symlink_rejected: {name.name} is a symbolic link in the zip (not extracted)"
        notes.append(f"{where}: skipped member {_show(info.filename)}: a symbolic link")
        return True
    if kind not in (0, stat.S_IFREG):
        notes.append(f"{where}: skipped member {_show(info.filename)}: not a regular file")
        return True
    if count > 1 or is_folder:
        why = f"given {count} times" if count > 1 else "both a file and a folder"
        if name not in rejected:
            notes.append(f"{where}: skipped member {_show(info.filename)}: {why} (ambiguous)")
        rejected[name] = f"ambiguous_submission: {name.name} is {why} in the zip; none is graded"
        return True
    return False


def _extract_one(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """Write one member to ``target`` as a new regular file (no link followed); remove it if that fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not _is_dir(target.parent):
        raise NotADirectoryError(f"{target.parent.name!r} is not a folder")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as dst, zf.open(info) as src:
            shutil.copyfileobj(src, dst)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _unwrap(root: Path, assignment: str) -> Path:
    """``root``, or the one folder wrapping the students' folders in it (as LMS downloads have)."""
    entries = [e for e in _entries(root) if not e.name.startswith(".")]
    if len(entries) != 1 or not entries[0].is_dir(follow_symlinks=False):
        return root
    top = Path(entries[0].path)
    if _notebook_names(top) or _is_dir(top / assignment):
        return root
    inner = [Path(e.path) for e in _entries(top) if e.is_dir(follow_symlinks=False)]
    deeper = [d / assignment for d in inner if _is_dir(d / assignment)]
    return top if any(_notebook_names(d) for d in inner + deeper) else root


def _loose_id(name: str) -> tuple[str, str] | None:
    """``(student, notebook name)`` of a loose ``<student>_<anything>.ipynb``; None if it is not one."""
    student, sep, rest = name.partition("_")
    return (student, rest) if sep and rest and STUDENT_PATTERN.match(student) else None


class Roster(dict):
    """``{student: folder}`` as :func:`discover` finds them, and ``withheld``: ``{student: {file name or
    EVERYTHING: flag}}``, the notebooks that are reported in place of being graded (ambiguous, links)."""

    def __init__(self) -> None:
        super().__init__()
        self.withheld: dict[str, dict[str, str]] = {}


def discover(submissions: Path, assignment: str, scratch: Path) -> tuple[Roster, list[str]]:
    """Return ({student: folder}, problems) from an nbgrader ``submitted/`` tree, a folder, or an LMS zip.

    Layouts: ``<student>/<assignment>/*.ipynb``, ``<student>/*.ipynb``, or loose files named
    ``<student>_<anything>.ipynb`` (the LMS pattern: the student id is everything before the first
    ``_``; the notebook's name is the rest). In a zip, the same layouts, possibly under one top folder.
    Each entry is handled on its own: what cannot be used is a problem (a note), never an exception;
    links are never followed; nothing ambiguous is merged (see the module's rules). The returned
    :class:`Roster` also says, per student, which notebooks to report as withheld.
    """
    problems: list[str] = []
    submissions, rejected = _unzipped(Path(submissions), assignment, scratch, problems)
    if not submissions.is_dir():
        raise FileNotFoundError(f"expected a folder of submissions or a zip at {submissions}")

    folders: dict[str, Path] = {}
    loose: dict[str, dict[str, list[Path]]] = {}  # student -> notebook name -> loose files
    withheld: dict[str, dict[str, str]] = {}
    for entry in _entries(submissions):
        try:
            _classify(entry, assignment, folders, loose, withheld, problems)
        except Exception as err:  # noqa: BLE001 - one bad entry never stops the batch
            problems.append(f"skipped {_show(entry.name)}: {_why(err)}")
    for path, flag in rejected.items():  # notebooks of the zip that were extracted as nothing
        student_name = _rejected_owner(path, assignment, folders, loose, scratch, submissions)
        if student_name:
            withheld.setdefault(student_name[0], {})[student_name[1]] = flag
    students = Roster()
    for student in sorted(set(folders) | set(loose) | set(withheld)):
        try:
            _add_student(students, student, folders, loose, withheld.get(student, {}), scratch, problems)
        except Exception as err:  # noqa: BLE001 - one student's files never stop the batch
            students.pop(student, None)
            students.withheld.pop(student, None)
            problems.append(f"skipped student {_show(student)}: {_why(err)}")
    return students, problems


def _unzipped(submissions: Path, assignment: str, scratch: Path,
              problems: list[str]) -> tuple[Path, dict[PurePosixPath, str]]:
    """A zip's folder of submissions (extracted under ``scratch``) and its members not extracted; a folder as it is."""
    if not (submissions.is_file() and zipfile.is_zipfile(submissions)):
        return submissions, {}
    root = scratch / "unzipped"
    root.mkdir(parents=True, exist_ok=True)
    notes, rejected = safe_extract(submissions, root)
    problems += notes
    top = _unwrap(root, assignment)
    if top != root:  # the rejected members' paths, from inside the wrapping folder
        rejected = {PurePosixPath(*p.parts[1:]): f for p, f in rejected.items()
                    if len(p.parts) > 1 and p.parts[0] == top.name}
    return top, rejected


def _rejected_owner(path: PurePosixPath, assignment: str, folders: dict, loose: dict, scratch: Path,
                    submissions: Path) -> tuple[str, str] | None:
    """(student, notebook name) a zip member that was not extracted stands for; None when it is no submission."""
    parts = path.parts
    if not path.name.endswith(".ipynb"):
        return None
    if len(parts) == 1 and _loose_id(parts[0]):
        student, name = _loose_id(parts[0])
        loose.setdefault(student, {})
        return student, name
    if len(parts) in (2, 3) and STUDENT_PATTERN.match(parts[0]) and parts[1:-1] in ((), (assignment,)):
        student, name = parts[0], parts[-1]
        if student not in folders:  # nothing else of that folder to grade: an empty one stands for it
            folders[student] = _empty(scratch, student)
        elif folders[student] not in (scratch / "withheld" / student, submissions.joinpath(*parts[:-1])):
            return None  # beside the folder that is graded (``<student>/`` when ``<student>/<assignment>/`` is)
        return student, name
    return None


def _add_student(students: Roster, student: str, folders: dict, loose: dict, held: dict[str, str], scratch: Path,
                 problems: list[str]) -> None:
    """Put ``student``'s folder (or the folder made of their loose files) and withheld notebooks in ``students``."""
    files = [f for fs in loose.get(student, {}).values() for f in fs]
    if student in folders and student in loose:
        shown = ", ".join(_show(f.name) for f in files) or "(links or zip members not extracted)"
        flag = (f"ambiguous_submission: {student} is both a folder {_show(student + '/')} and loose "
                f"files {shown}; not merged, none is graded")
        problems.append(f"{student}: {flag.split(': ', 1)[1]}")
        students[student], students.withheld[student] = _empty(scratch, student), {EVERYTHING: flag}
        return
    if student in folders:
        students[student] = folders[student]
    else:
        students[student] = _lms_folder(scratch, student, loose.get(student, {}), held, problems)
    if held:
        students.withheld[student] = held


def _classify(entry: os.DirEntry, assignment: str, folders: dict, loose: dict, withheld: dict,
              problems: list[str]) -> None:
    """Sort one entry of the submissions folder into a student's folder, a loose notebook, or a note."""
    if entry.is_symlink():
        ids = _loose_id(entry.name) if entry.name.endswith(".ipynb") else None
        if ids:
            student, name = ids
            loose.setdefault(student, {})
            withheld.setdefault(student, {})[name] = (f"symlink_rejected: {entry.name} is a symbolic link "
                                                     f"(links are never followed)")
        problems.append(f"skipped {_show(entry.name)}: a symbolic link (links are never followed)")
    elif entry.is_dir(follow_symlinks=False):
        _classify_folder(entry, assignment, folders, problems)
    elif entry.name.endswith(".ipynb") and entry.is_file(follow_symlinks=False):
        ids = _loose_id(entry.name)
        if ids is None:
            problems.append(f"skipped {_show(entry.name)}: expected <student>_<anything>.ipynb")
            return
        student, name = ids
        loose.setdefault(student, {}).setdefault(name, []).append(Path(entry.path))


def _classify_folder(entry: os.DirEntry, assignment: str, folders: dict, problems: list[str]) -> None:
    """A student's folder: ``<student>/<assignment>/`` if there is one, else ``<student>/``."""
    d = Path(entry.path)
    inner = d
    if os.path.lexists(d / assignment):
        if _is_dir(d / assignment):
            inner = d / assignment
        else:
            problems.append(f"skipped {_show(f'{entry.name}/{assignment}')}: a symbolic link or not a folder")
    names = _notebook_names(inner)
    if not names:
        return
    if not STUDENT_PATTERN.match(entry.name):
        problems.append(f"skipped folder {_show(entry.name)}: not a valid student id")
        return
    folders[entry.name] = inner
    for name in names:
        if os.path.islink(inner / name):
            problems.append(f"{entry.name}: {_show(name)} is a symbolic link: rejected, never followed")


def _empty(scratch: Path, student: str) -> Path:
    folder = scratch / "withheld" / student
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _copy_regular(src: Path, dst: Path) -> None:
    """Copy ``src`` to a new file ``dst`` if ``src`` is a regular file (a link is refused, not copied)."""
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{src.name!r} is not a regular file")
        with open(dst, "xb") as out:
            shutil.copyfileobj(f, out)


def _lms_folder(scratch: Path, student: str, files: dict[str, list[Path]], withheld: dict[str, str],
                problems: list[str]) -> Path:
    """A fresh folder holding a copy of each of the student's loose notebooks under its notebook name.

    Two loose files for one name are ambiguous: neither is copied (the name goes into ``withheld``).
    """
    target = scratch / "lms" / student
    target.mkdir(parents=True, exist_ok=True)
    for name, sources in sorted(files.items()):
        shown = ", ".join(_show(f.name) for f in sources)
        if name in withheld:
            problems.append(f"{student}: {_show(name)} is also withheld ({withheld[name].split(':')[0]}); "
                            f"{shown} not graded")
            withheld[name] = f"{withheld[name]}; also {shown}"
        elif len(sources) > 1:
            withheld[name] = f"ambiguous_submission: {name} comes from {shown}; none is graded"
            problems.append(f"{student}: {shown} are all {_show(name)} (ambiguous): none is graded")
        else:
            try:
                _copy_regular(sources[0], target / name)
            except OSError as err:
                problems.append(f"{student}: skipped {shown}: {_why(err)}")
    return target
