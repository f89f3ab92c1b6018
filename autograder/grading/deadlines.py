"""Deadlines: due dates, late penalties and extensions from a course's ``policy.toml``, applied after grading.

The policy (``COURSE_DIR/policy.toml`` by default, ``grade --policy FILE`` for another; without one
nothing is late)::

    [late]
    per_day = 0.1    # fraction of the raw score lost per late day (0 to 1)
    cap = 0.5        # at most this fraction is lost, however late (0 to 1; default 1)

    [chapters.01_backprop]
    due = 2025-03-03T23:59:00+01:00   # ISO 8601 with a timezone (a TOML date-time, or a string)
    # per_day = 0.2, cap = 1.0         # optional: this chapter's own late rule

    [extensions.alice]
    01_backprop = 2025-03-05T23:59:00+01:00   # alice's own due date for that chapter
    02_training = 2                           # or: this many days after the chapter's due date

The rule: a submission is late by ``ceil((submitted - due) / 24 h)`` days, so **any started day counts**
(one minute late is one day late); on time (at or before the due date) is 0 days. The penalty is
``min(per_day * late_days, cap)``, a fraction of the raw score: ``score = raw_score * (1 - penalty)``.

The submission time, first found of (the report's ``time_source`` says which):

- ``timestamp.txt``: nbgrader's exchange timestamp (``<student>/<chapter>/timestamp.txt`` or
  ``<student>/timestamp.txt``, also inside a zip), written by nbgrader when the learner submitted;
- ``zip``: an LMS zip's metadata of the learner's notebook members (the latest of them): the UTC time
  of the extended-timestamp field where the zip has one, else the zip's date and time, which carry no
  timezone and are read in the chapter's due-date timezone (``zip (local time read as UTC+01:00)``);
- ``mtime``: the modification time of the learner's notebook files (the latest), which a copy may have
  changed: a fallback, and the report says so;
- ``none``: no time found; such a submission is never counted late (and the report says so).

Applied after every ``grade`` run, to fresh and to reused reports alike (the raw score never changes;
a new extension applies on the next run): each report gets ``late`` (raw score, late days, penalty,
score, time source, times), its feedback pages a paragraph saying so, ``grades.csv`` the columns
``raw_score, late_days, penalty, score, time_source, submitted_at, due``, and the nbgrader gradebook
nbgrader's own fields (the chapter's due date, the submission's timestamp and extension, each
notebook's ``late_submission_penalty`` in points), so nbgrader's export and formgrader show them too.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import sys
import zipfile
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from pathlib import Path, PurePosixPath

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (a dependency there)
    import tomli as tomllib

DAY = timedelta(days=1)
TIME_SOURCES = ("timestamp.txt", "zip", "mtime", "none")
EXAMPLE = "2025-03-03T23:59:00+01:00"
MAX_TIMESTAMP_BYTES = 1024


class PolicyError(ValueError):
    """policy.toml is not what is expected: the message says where, what was expected and what came."""


@dataclass(frozen=True)
class LateRule:
    per_day: float = 0.0
    cap: float = 1.0


@dataclass(frozen=True)
class Policy:
    """A course's deadlines: ``due`` and ``rules`` per chapter, ``extensions[student][chapter]``."""

    due: dict[str, datetime]
    rules: dict[str, LateRule]
    default_rule: LateRule
    extensions: dict[str, dict[str, datetime | float]]
    path: Path | None = None

    def due_for(self, chapter: str, student: str) -> tuple[datetime | None, bool]:
        """``(due date of the chapter for this learner, whether an extension gave it)``; None without one."""
        due = self.due.get(chapter)
        ext = self.extensions.get(student, {}).get(chapter)
        if due is None and isinstance(ext, datetime):
            return ext, True
        if due is None:
            return None, False
        if ext is None:
            return due, False
        return (ext, True) if isinstance(ext, datetime) else (due + timedelta(days=ext), True)

    def rule(self, chapter: str) -> LateRule:
        return self.rules.get(chapter, self.default_rule)


# --- reading policy.toml ---------------------------------------------------------------------------

def _fraction(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise PolicyError(f"{where}: expected a fraction between 0 and 1 (0.1 = 10 %), got {value!r}")
    return float(value)


def _when(value: object, where: str) -> datetime:
    """An aware datetime from a TOML date-time or an ISO 8601 string; PolicyError without a timezone."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise PolicyError(f"{where}: expected an ISO 8601 date and time with a timezone, e.g. {EXAMPLE}, "
                              f"got {value!r}") from None
    if isinstance(value, date) and not isinstance(value, datetime):
        raise PolicyError(f"{where}: expected a date and time with a timezone, e.g. {EXAMPLE}, got the date "
                          f"{value.isoformat()} (at what time, in which timezone?)")
    if not isinstance(value, datetime):
        raise PolicyError(f"{where}: expected an ISO 8601 date and time with a timezone, e.g. {EXAMPLE}, "
                          f"got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise PolicyError(f"{where}: expected a timezone in the date and time (e.g. {EXAMPLE} or ...Z), got "
                          f"{value.isoformat()} without one")
    return value


def _table(value: object, where: str, expected: str) -> dict:
    if not isinstance(value, dict):
        raise PolicyError(f"{where}: expected a table ({expected}), got {value!r}")
    return value


def _keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(unknown)}; expected only {', '.join(sorted(allowed))}")


def _rule(table: dict, where: str, base: LateRule) -> LateRule:
    per_day = _fraction(table["per_day"], f"{where} per_day") if "per_day" in table else base.per_day
    cap = _fraction(table["cap"], f"{where} cap") if "cap" in table else base.cap
    return LateRule(per_day, cap)


def parse_policy(text: str, name: str = "policy.toml", chapters: list[str] | None = None) -> Policy:
    """Return the :class:`Policy` in ``text``; raise :class:`PolicyError` saying what was expected.

    ``chapters``: the course's chapters; a chapter named in the policy must be one of them.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise PolicyError(f"{name}: not valid TOML ({err})") from None
    _keys(data, {"late", "chapters", "extensions"}, name)
    default = _rule(_table(data.get("late", {}), f"{name} [late]", "per_day, cap"), f"{name} [late]", LateRule())
    _keys(data.get("late", {}), {"per_day", "cap"}, f"{name} [late]")

    def check_chapter(chapter: str, where: str) -> None:
        if chapters is not None and chapter not in chapters:
            raise PolicyError(f"{where}: unknown chapter {chapter!r}; expected one of {', '.join(chapters)}")

    due, rules = {}, {}
    for chapter, table in _table(data.get("chapters", {}), f"{name} [chapters]", "[chapters.NN_slug]").items():
        where = f"{name} [chapters.{chapter}]"
        check_chapter(chapter, where)
        table = _table(table, where, f"due = {EXAMPLE}")
        _keys(table, {"due", "per_day", "cap"}, where)
        if "due" not in table:
            raise PolicyError(f"{where}: expected a due date, e.g. due = {EXAMPLE}")
        due[chapter] = _when(table["due"], f"{where} due")
        if "per_day" in table or "cap" in table:
            rules[chapter] = _rule(table, where, default)
    extensions: dict[str, dict[str, datetime | float]] = {}
    for student, table in _table(data.get("extensions", {}), f"{name} [extensions]",
                                 "[extensions.STUDENT]").items():
        where = f"{name} [extensions.{student}]"
        table = _table(table, where, f"NN_slug = {EXAMPLE}, or a number of days")
        for chapter, value in table.items():
            check_chapter(chapter, f"{where} {chapter}")
            extensions.setdefault(student, {})[chapter] = _extension(value, f"{where} {chapter}")
    return Policy(due, rules, default, extensions)


def _extension(value, where: str) -> datetime | float:
    """An extension: a number of extra days (>= 0) or a new due date with a timezone."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise PolicyError(f"{where}: expected a number of days >= 0, got {value!r}")
        return float(value)
    return _when(value, f"{where} (a due date with a timezone, or a number of days)")


def load_policy(path: Path, chapters: list[str] | None = None) -> Policy:
    """Read ``path`` (see the module for its format); raise :class:`PolicyError` if it is not valid."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise PolicyError(f"{path}: not UTF-8 text ({err.reason})") from None
    policy = parse_policy(text, str(path), chapters)
    return Policy(policy.due, policy.rules, policy.default_rule, policy.extensions, path)


# --- when was it submitted ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SubmissionTime:
    """When a learner submitted (aware, UTC) and where that came from (``source``: one of TIME_SOURCES)."""

    time: datetime | None
    source: str
    detail: str = ""

    @property
    def shown(self) -> str:
        return f"{self.source} ({self.detail})" if self.detail else self.source


def parse_timestamp(text: str) -> datetime:
    """nbgrader's ``timestamp.txt`` (``2025-03-01 12:00:00.000000 UTC``, or ISO 8601) as an aware UTC datetime."""
    from nbgrader.utils import parse_utc

    text = text.strip()
    if not text or "\n" in text:
        raise ValueError(f"expected one date and time, got {text[:80]!r}")
    try:
        return parse_utc(text).replace(tzinfo=timezone.utc)
    except Exception as err:  # noqa: BLE001 - dateutil raises several kinds
        raise ValueError(f"expected a date and time such as '2025-03-01 12:00:00 UTC', got {text[:80]!r}") from err


def _regular(path: Path) -> os.stat_result | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info if stat.S_ISREG(info.st_mode) else None


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _from_folder(root: Path, assignment: str, student: str) -> SubmissionTime:
    folders = [d for d in (root / student / assignment, root / student) if _is_dir(d)]
    notes = []
    for folder in folders:
        if _regular(folder / "timestamp.txt") and os.path.getsize(folder / "timestamp.txt") <= MAX_TIMESTAMP_BYTES:
            try:
                when = parse_timestamp((folder / "timestamp.txt").read_text(encoding="utf-8"))
                return SubmissionTime(when, "timestamp.txt")
            except (OSError, ValueError) as err:
                notes.append(f"timestamp.txt unreadable: {err}")
    files = [f for folder in folders[:1] for f in folder.glob("*.ipynb")]
    if _is_dir(root):
        files += [f for f in root.glob(f"{_glob_escape(student)}_*.ipynb")]
    times = [info.st_mtime for f in files if (info := _regular(f))]
    if times:
        detail = "; ".join([*notes, "no nbgrader timestamp: the file's modification time"])
        return SubmissionTime(datetime.fromtimestamp(max(times), timezone.utc), "mtime", detail)
    return SubmissionTime(None, "none", "; ".join([*notes, "no timestamp and no notebook file found"]))


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _zip_utc(info: zipfile.ZipInfo) -> datetime | None:
    """The UTC modification time of a zip member's extended-timestamp field (0x5455), if it has one."""
    extra = info.extra
    while len(extra) >= 4:
        tag, size = int.from_bytes(extra[:2], "little"), int.from_bytes(extra[2:4], "little")
        body = extra[4:4 + size]
        if tag == 0x5455 and len(body) >= 5 and body[0] & 1:
            return datetime.fromtimestamp(int.from_bytes(body[1:5], "little", signed=True), timezone.utc)
        extra = extra[4 + size:]
    return None


def _member_owner(parts: tuple[str, ...], students: set[str]) -> str | None:
    """The student a zip member belongs to (``<s>/...``, ``<s>_x.ipynb``, possibly under one top folder)."""
    for rest in (parts, parts[1:] if len(parts) > 1 and parts[0] not in students else ()):
        if len(rest) >= 2 and rest[0] in students and len(rest) <= 3:
            return rest[0]
        if len(rest) == 1 and "_" in rest[0] and rest[0].partition("_")[0] in students:
            return rest[0].partition("_")[0]
    return None


def _member_time(info: zipfile.ZipInfo, local: tzinfo) -> tuple[datetime, str] | None:
    """(when, how it was read) of a zip member: its UTC time if the zip has one, else its local time in ``local``."""
    utc = _zip_utc(info)
    try:
        when = utc or datetime(*info.date_time, tzinfo=local)
    except ValueError:  # a date the zip got wrong (month 0, ...)
        return None
    offset = when.strftime("%z")
    return when, "" if utc else f"local time read as UTC{offset[:3]}:{offset[3:]}"


def _from_zip(archive: Path, students: set[str], local: tzinfo) -> dict[str, SubmissionTime]:
    found: dict[str, SubmissionTime] = {}
    latest: dict[str, tuple[datetime, str]] = {}
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = PurePosixPath(info.filename)
            if info.is_dir() or name.is_absolute() or ".." in name.parts or not name.parts:
                continue
            student = _member_owner(name.parts, students)
            if student is None:
                continue
            if name.name == "timestamp.txt" and info.file_size <= MAX_TIMESTAMP_BYTES:
                try:
                    found[student] = SubmissionTime(parse_timestamp(zf.read(info).decode("utf-8")),
                                                    "timestamp.txt", "in the zip")
                except (ValueError, UnicodeDecodeError, zipfile.BadZipFile, OSError):
                    pass
            elif name.suffix == ".ipynb":
                when = _member_time(info, local)
                if when is not None and (student not in latest or when[0] > latest[student][0]):
                    latest[student] = when
    for student, (when, detail) in latest.items():
        if student not in found:
            found[student] = SubmissionTime(when.astimezone(timezone.utc), "zip", detail)
    return found


def submission_times(submissions: Path, assignment: str, students: list[str],
                     local: tzinfo = timezone.utc) -> dict[str, SubmissionTime]:
    """Return ``{student: SubmissionTime}`` for the learners of a submissions folder or LMS zip (see the module).

    ``local``: the timezone a zip's date and time (which have none) are read in. Never raises for a
    learner's files: what cannot be read falls back to the next source.
    """
    submissions = Path(submissions)
    out: dict[str, SubmissionTime] = {}
    if submissions.is_file() and zipfile.is_zipfile(submissions):
        try:
            out = _from_zip(submissions, set(students), local)
        except (zipfile.BadZipFile, OSError):
            out = {}
        return {s: out.get(s, SubmissionTime(None, "none", "no member of the zip is this learner's notebook"))
                for s in students}
    return {s: _from_folder(submissions, assignment, s) for s in students}


# --- the penalty -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Lateness:
    """A submission's lateness and what it costs (``penalty``: the fraction of the raw score lost)."""

    raw_score: float
    max_score: float
    late_days: int
    penalty: float
    score: float
    time_source: str
    submitted_at: str | None  # ISO 8601, UTC
    due: str | None  # this learner's due date (extension included), ISO 8601 as the policy gave it
    extended: bool
    detail: str = ""

    def note(self) -> str:
        """One sentence for the learner's feedback."""
        source = f"{self.time_source}, {self.detail}" if self.detail else self.time_source
        when = f"submitted {self.submitted_at} (time from {source})"
        if self.due is None:
            return f"No due date for this chapter; {when}."
        due = f"due {self.due}{' (extension)' if self.extended else ''}"
        if self.submitted_at is None:
            return f"Submission time unknown ({self.detail or 'no timestamp'}); {due}; not counted late."
        if not self.late_days:
            return f"On time: {when}, {due}."
        return (f"Late by {self.late_days} day{'s' if self.late_days != 1 else ''} (any started day counts): {when}, "
                f"{due}. Penalty {self.penalty:.0%}: score {self.score:g} / {self.max_score:g} "
                f"(raw score {self.raw_score:g}).")


def late_days(submitted: datetime | None, due: datetime | None) -> int:
    """Days late: any started day counts (``ceil``); 0 at or before ``due``, or when either is unknown."""
    if submitted is None or due is None or submitted <= due:
        return 0
    return math.ceil((submitted - due) / DAY)


def lateness(policy: Policy, chapter: str, student: str, when: SubmissionTime, raw: float,
             maximum: float) -> Lateness:
    """Return what ``when`` costs learner ``student`` on ``chapter`` under ``policy``."""
    due, extended = policy.due_for(chapter, student)
    days = late_days(when.time, due)
    rule = policy.rule(chapter)
    penalty = min(rule.per_day * days, rule.cap) if days else 0.0
    score = round(raw * (1.0 - penalty), 6)
    return Lateness(raw, maximum, days, round(penalty, 6), score, when.source,
                    when.time.isoformat(timespec="seconds") if when.time else None,
                    due.isoformat() if due else None, extended, when.detail)


# --- applying it to a graded batch ---------------------------------------------------------------------

BANNER = re.compile(r"<!-- dlbook-late -->.*?<!-- /dlbook-late -->", re.S)
BODY = re.compile(r"<body[^>]*>", re.I)


def _banner(late: Lateness) -> str:
    import html

    return (f'<!-- dlbook-late --><div role="note" style="border:2px solid #b36b00;padding:0.5em 1em;margin:1em">'
            f"<p><strong>Deadline:</strong> {html.escape(late.note())}</p></div><!-- /dlbook-late -->")


def mark_feedback(page: Path, late: Lateness) -> None:
    """Put the lateness paragraph at the top of a feedback page (replacing one a previous run put there)."""
    text = page.read_text(encoding="utf-8")
    text = BANNER.sub("", text)
    m = BODY.search(text)
    if m is None:
        return
    page.write_text(text[:m.end()] + _banner(late) + text[m.end():], encoding="utf-8")


def apply_policy(reports: list[dict], policy: Policy, submissions: Path, assignment: str,
                 out_dir: Path | None = None, db_url: str | None = None) -> list[str]:
    """Add ``late`` to every report, and write it to ``out_dir``'s reports and feedback and the gradebook.

    Returns notes for the batch summary (learners whose time is a fallback or unknown).
    """
    base_due = policy.due.get(assignment)
    local = base_due.tzinfo if base_due else timezone.utc
    times = submission_times(Path(submissions), assignment, [r["student"] for r in reports], local)
    notes, by_student = [], {}
    for report in reports:
        student = report["student"]
        when = times.get(student, SubmissionTime(None, "none"))
        late = lateness(policy, assignment, student, when, float(report.get("points", 0) or 0),
                        float(report.get("max_points", 0) or 0))
        report["late"] = asdict(late)
        by_student[student] = late
        if when.source in ("mtime", "none"):
            notes.append(f"{student}: submission time from {when.shown}")
        if late.late_days:
            notes.append(f"{student}: late by {late.late_days} day(s) ({when.source}): penalty {late.penalty:.0%}, "
                         f"score {late.score:g} / {late.max_score:g} (raw {late.raw_score:g})")
        if out_dir is not None:
            path = Path(out_dir) / "reports" / f"{student}.json"
            if path.parent.is_dir():
                path.write_text(json.dumps(report, indent=2))
            for page in sorted((Path(out_dir) / "feedback" / student).glob("*.html")):
                mark_feedback(page, late)
    if db_url:
        record_lateness(db_url, assignment, by_student, base_due)
    return notes


def _naive_utc(when: datetime | None) -> datetime | None:
    return when.astimezone(timezone.utc).replace(tzinfo=None) if when else None


def record_lateness(db_url: str, assignment: str, late: dict[str, Lateness], base_due: datetime | None) -> None:
    """Write nbgrader's own late fields: the due date, each submission's timestamp and extension, and each
    notebook's ``late_submission_penalty`` (points), in one transaction. Grades (``auto_score``) stay raw."""
    from nbgrader.api import Gradebook, MissingEntry
    from sqlalchemy import text

    from .gradebook import LOCK_KEY, normalize_url

    url = normalize_url(db_url)
    with Gradebook(url) as gb:
        if gb.db.get_bind().dialect.name == "postgresql":
            gb.db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
        try:
            gb.find_assignment(assignment).duedate = _naive_utc(base_due)
        except MissingEntry:
            return
        for student, entry in late.items():
            try:
                sub = gb.find_submission(assignment, student)
            except MissingEntry:
                continue
            sub.timestamp = _naive_utc(datetime.fromisoformat(entry.submitted_at)) if entry.submitted_at else None
            due = datetime.fromisoformat(entry.due) if entry.due else None
            sub.extension = (due - base_due) if entry.extended and due and base_due else None
            for nb in sub.notebooks:
                nb.late_submission_penalty = round(float(nb.score or 0) * entry.penalty, 6)
        gb.db.commit()
