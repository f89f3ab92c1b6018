"""Per-learner variants: exercise values drawn for each learner from the course secret.

**Declaring.** A notebook lists, in its metadata, the values each exercise may take::

    "metadata": {"dlbook": {"variants": {
        "ch03_conv2d_naive": {"h": [5, 6, 7], "kw": [2, 3], "seed": "seed"}}}}

A value spec is a list of choices (one is picked), ``{"int": [lo, hi]}`` (an int, both ends included)
or ``"seed"`` (an int in ``[0, 2**31)``). The notebook's code reads the values from one line per
exercise, in a test cell or a plain code cell before the exercise (the grader runs both as the reference
has them, whatever the submission holds; never in a solution cell)::

    V = check.variant("ch03_conv2d_naive", h=5, kw=2, seed=0)

whose keywords are the declared keys, in any order, holding the instructor's values: the source
notebook, the default release and nbgrader's ``autograde`` use those, exactly as before variants.

**Releasing.** ``python -m autograder release CHAPTER --per-student roster.csv`` makes the default
release, then one copy per learner (``COURSE_DIR/release-per-student/<student>/<chapter>/``, and with
``--exchange`` in the classroom's exchange): each ``check.variant`` line is rewritten with the learner's
values, and the notebook's metadata records whom it was issued to (``dlbook.variant_of``). Each
exercise's values come from a seed, HMAC-SHA256(course secret, student id, exercise name), and each
value from that seed and its key alone (:func:`derive`), so they are reproducible from the secret.
The course secret is ``$DLBOOK_COURSE_SECRET`` or ``COURSE_DIR/.dlbook-secret`` (made on the first
per-student release, mode 0600); it is never written into a release. ``COURSE_DIR/variants/<chapter>.json``
records which learners got their own release (ids only, and a fingerprint of the secret).

**Grading.** ``grade`` (the judge) rebuilds, for each learner in that record, the reference notebooks
with the learner's values derived from the secret and the *submitting* student id
(:meth:`GradingVariants.references`), never from the submitted notebook: the setup cells that run in the
kernel and the tests that run in the judge both read those values. A submitted notebook whose
``check.variant`` lines (read with ``ast.literal_eval``, never run) or ``variant_of`` stamp are another
learner's is flagged ``variant_mismatch`` (:func:`mismatch_flags`); it is still graded with the
submitter's own values. ``autograde`` (nbgrader, tests in the kernel) uses the source's values.
"""

from __future__ import annotations

import ast
import copy
import csv
import hashlib
import hmac
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

SECRET_ENV = "DLBOOK_COURSE_SECRET"
SECRET_FILE = ".dlbook-secret"
RECORD_DIR = "variants"  # COURSE_DIR/variants/<chapter>.json: who got a per-learner release of a chapter
PER_STUDENT_DIR = "release-per-student"
CALL_NAME = "variant"  # check.variant(...) or variant(...)


class VariantError(ValueError):
    """A variant declaration, a ``check.variant`` line or a roster is not as expected; the message says how."""


# --- the secret and the values ---------------------------------------------------------------------

def course_secret(course_dir: Path, create: bool = False) -> bytes | None:
    """Return the course secret: ``$DLBOOK_COURSE_SECRET``, else ``COURSE_DIR/.dlbook-secret``.

    ``create``: make the file (32 random bytes, hex, mode 0600) when there is neither; else None.
    """
    env = os.environ.get(SECRET_ENV, "").strip()
    if env:
        return env.encode()
    path = Path(course_dir) / SECRET_FILE
    if path.is_file():
        text = path.read_text().strip()
        if not text:
            raise VariantError(f"the course secret {path} is empty")
        return text.encode()
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path.read_text().strip().encode()


def secret_fingerprint(secret: bytes) -> str:
    """A short digest that tells whether two secrets are the same (stored in the record, never the secret)."""
    return hashlib.sha256(b"dlbook-variant-secret\0" + secret).hexdigest()[:16]


def exercise_seed(secret: bytes, student: str, name: str) -> bytes:
    """The seed of one learner's values of exercise ``name``: HMAC-SHA256(secret, student id, name)."""
    return hmac.new(secret, f"dlbook-variant\0{student}\0{name}".encode(), hashlib.sha256).digest()


def _check_spec(name: str, key: str, spec) -> None:
    if isinstance(spec, list) and spec:
        return
    if spec == "seed":
        return
    if isinstance(spec, dict) and set(spec) == {"int"} and isinstance(spec["int"], list) and len(spec["int"]) == 2 \
            and all(type(v) is int for v in spec["int"]) and spec["int"][0] <= spec["int"][1]:
        return
    raise VariantError(f"variant {name}: the spec of {key!r} is {spec!r}; expected a non-empty list of choices, "
                       '"seed", or {"int": [lo, hi]} with lo <= hi')


def derive(seed: bytes, spec: dict) -> dict:
    """Return the values ``{key: value}`` for the declaration ``spec`` from an exercise's ``seed`` alone."""
    values = {}
    for key in spec:
        _check_spec("?", key, spec[key])
        draw = int.from_bytes(hashlib.sha256(seed + b"\0" + key.encode()).digest()[:8], "big")
        s = spec[key]
        if isinstance(s, list):
            values[key] = copy.deepcopy(s[draw % len(s)])
        elif s == "seed":
            values[key] = draw % 2**31
        else:
            lo, hi = s["int"]
            values[key] = lo + draw % (hi - lo + 1)
    return values


def declarations(nb: dict) -> dict[str, dict]:
    """Return a notebook's ``metadata.dlbook.variants`` (``{}`` when it declares none), checked."""
    decl = nb.get("metadata", {}).get("dlbook", {}).get("variants", {})
    if not isinstance(decl, dict):
        raise VariantError(f"metadata.dlbook.variants should be an object, got {type(decl).__name__}")
    for name, spec in decl.items():
        if not isinstance(spec, dict) or not spec:
            raise VariantError(f"variant {name}: expected an object of value specs, got {spec!r}")
        for key, s in spec.items():
            _check_spec(name, key, s)
    return decl


def learner_values(nb: dict, secret: bytes, student: str) -> dict[str, dict]:
    """Return ``{exercise name: values}`` of ``student`` for every variant the notebook declares."""
    return {name: derive(exercise_seed(secret, student, name), spec) for name, spec in declarations(nb).items()}


def digest(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


# --- the check.variant lines -------------------------------------------------------------------------

def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _is_solution(cell: dict) -> bool:
    return bool(cell.get("metadata", {}).get("nbgrader", {}).get("solution"))


def variant_calls(source: str) -> list[tuple[ast.Assign, str, dict]]:
    """Return ``(statement, name, {key: literal value})`` for each top-level ``X = check.variant("name", ...)``.

    The values are read with ``ast.literal_eval``: nothing is run. A keyword that is not a literal is
    left out (so it never matches the expected values).
    """
    from dlbook.check import parse_cell

    tree = parse_cell(source)
    found = []
    for node in tree.body if tree else []:
        call = node.value if isinstance(node, ast.Assign) else None
        if not isinstance(call, ast.Call) or not call.args or not isinstance(call.args[0], ast.Constant):
            continue
        func = call.func
        named = (isinstance(func, ast.Name) and func.id == CALL_NAME) or \
            (isinstance(func, ast.Attribute) and func.attr == CALL_NAME and isinstance(func.value, ast.Name))
        if not named or not isinstance(call.args[0].value, str):
            continue
        values = {}
        for kw in call.keywords:
            if kw.arg is None:
                continue
            try:
                values[kw.arg] = ast.literal_eval(kw.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
        found.append((node, call.args[0].value, values))
    return found


def _literal(value) -> str:
    """Python source of a plain value (strings in double quotes, as the notebooks write them)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def rewrite_source(source: str, values: dict[str, dict]) -> str:
    """Return ``source`` with every ``check.variant`` line of a declared exercise holding ``values[name]``.

    The line keeps its target and the order of its keywords; nothing else of the cell changes.
    """
    calls = [(node, name, old) for node, name, old in variant_calls(source) if name in values]
    if not calls:
        return source
    lines = source.split("\n")
    for node, name, old in sorted(calls, key=lambda c: -c[0].lineno):
        new = values[name]
        if set(old) != set(new):
            raise VariantError(f"variant {name}: the line `{ast.unparse(node)[:120]}` has keywords {sorted(old)}, "
                               f"the declaration {sorted(new)}: they must be the same")
        first, last = node.lineno - 1, node.end_lineno - 1
        indent = lines[first][: node.col_offset]
        rest = lines[last][node.end_col_offset:]  # a trailing comment is kept
        if indent.strip() or (rest.strip() and not rest.strip().startswith("#")):
            raise VariantError(f"variant {name}: its check.variant(...) statement must have lines of its own")
        target = ast.unparse(node.targets[0]) if len(node.targets) == 1 else None
        if target is None:
            raise VariantError(f"variant {name}: expected one target, `V = check.variant(...)`")
        func = ast.unparse(node.value.func)
        args = ", ".join(f"{key}={_literal(new[key])}" for key in old)
        lines[first: last + 1] = [f"{indent}{target} = {func}({_literal(name)}, {args}){rest.rstrip()}"]
    return "\n".join(lines)


def _set_source(cell: dict, text: str) -> None:
    if isinstance(cell.get("source"), list):
        cell["source"] = text.splitlines(keepends=True)
    else:
        cell["source"] = text


def personalise(nb: dict, secret: bytes, student: str) -> dict:
    """Return a copy of notebook ``nb`` (source or release) holding ``student``'s values, stamped with them.

    Every ``check.variant`` line of a declared exercise in a cell that is not a solution cell is
    rewritten; a locked cell's nbgrader checksum is recomputed. A notebook that declares no variant
    is returned unchanged (a copy).
    """
    nb = copy.deepcopy(nb)
    values = learner_values(nb, secret, student)
    if not values:
        return nb
    seen: set[str] = set()
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code" or _is_solution(cell):
            continue
        before = _source(cell)
        seen.update(name for _, name, _ in variant_calls(before) if name in values)
        after = rewrite_source(before, values)
        if after != before:
            _set_source(cell, after)
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if "checksum" in meta:
                import nbformat
                from nbgrader.utils import compute_checksum

                meta["checksum"] = compute_checksum(nbformat.from_dict({**cell, "source": after}))
    missing = sorted(set(values) - seen)
    if missing:
        raise VariantError(f"variants {missing} are declared but no code cell has their check.variant(...) line")
    nb["metadata"].setdefault("dlbook", {})["variant_of"] = {"student": student, "digest": digest(values)}
    return nb


def notebook_values(nb: dict) -> dict[str, dict]:
    """``{name: values}`` of the ``check.variant`` lines of a notebook's non-solution code cells (read, not run)."""
    found: dict[str, dict] = {}
    for cell in nb.get("cells", []):
        if isinstance(cell, dict) and cell.get("cell_type") == "code" and not _is_solution(cell):
            for _, name, values in variant_calls(_source(cell)):
                found.setdefault(name, values)
    return found


def mismatch_flags(notebook: str, ref_nb: dict, sub_nb: dict | None, student: str) -> list[str]:
    """Flag a submitted notebook that carries another learner's values (``variant_mismatch``).

    ``ref_nb``: the reference personalised for ``student`` (:func:`personalise`); ``sub_nb``: the
    submitted notebook as JSON (None when unreadable: nothing to compare). Read only, never run.
    """
    stamp = ref_nb.get("metadata", {}).get("dlbook", {}).get("variant_of")
    if not stamp or not isinstance(sub_nb, dict):
        return []
    expected = notebook_values(ref_nb)
    got = notebook_values(sub_nb)
    meta = sub_nb.get("metadata", {})
    sub_stamp = meta.get("dlbook", {}).get("variant_of") if isinstance(meta, dict) and \
        isinstance(meta.get("dlbook"), dict) else None
    issued = sub_stamp.get("student") if isinstance(sub_stamp, dict) else None
    differ = sorted(name for name in expected if name in got and got[name] != expected[name])
    flags = []
    if differ or (isinstance(issued, str) and issued != student):
        whose = f"issued to {issued[:64]!r}" if isinstance(issued, str) and issued != student else \
            "that are not theirs"
        what = f" ({', '.join(differ)})" if differ else ""
        flags.append(f"variant_mismatch: {notebook} carries values {whose}{what}; graded with {student}'s own")
    return flags


# --- release and grading -----------------------------------------------------------------------------

def read_roster(path: Path) -> list[str]:
    """Return the student ids of a roster CSV (a ``student_id`` column, as the classroom's roster)."""
    from .course import STUDENT_PATTERN

    path = Path(path)
    if not path.is_file():
        raise VariantError(f"expected a roster CSV at {path}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if "student_id" not in (reader.fieldnames or []):
            raise VariantError(f"{path}: expected a student_id column, got {reader.fieldnames}")
        ids = [row["student_id"].strip() for row in reader if (row.get("student_id") or "").strip()]
    bad = [s for s in ids if not STUDENT_PATTERN.match(s)]
    if bad:
        raise VariantError(f"{path}: invalid student ids {bad[:5]}: expected letters, digits, '_', '.', '-', '@'")
    if not ids:
        raise VariantError(f"{path}: no students")
    return list(dict.fromkeys(ids))


def _owner_ids(owner: str | None) -> tuple[int | None, int | None]:
    """The uid and gid of the system user ``owner`` when we can give files to them (root), else None."""
    if owner is not None and os.geteuid() == 0:
        import pwd

        try:
            entry = pwd.getpwnam(owner)
            return entry.pw_uid, entry.pw_gid
        except KeyError:
            pass
    return None, None


def _write_private(folder: Path, files: dict[str, bytes], owner: str | None) -> None:
    """Write ``files`` into ``folder`` (replaced); owned by ``owner`` and private to them if that user exists.

    With an owner, the folder above (the learner's own, ``personal/<student>/``) is theirs and private too,
    so no other learner can even list which chapters they got.
    """
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    uid, gid = _owner_ids(owner)
    if uid is not None:
        os.chown(folder.parent, uid, gid)
        folder.parent.chmod(0o700)
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o600 if uid is not None else 0o644)
    if uid is not None:
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, uid, gid)
        folder.chmod(0o700)


def release_per_student(chapters: list[str], roster: Path, course_dir: Path, source_dir: Path,
                        exchange: Path | None = None, course_id: str = "dlbook", quiet: bool = False) -> dict:
    """Release ``chapters`` once per learner of ``roster``; return ``{chapter: {student: folder}}``.

    The default release is made first (``course.release``); each learner's copy is that release with
    the learner's values (:func:`personalise`), in ``COURSE_DIR/release-per-student/<student>/<chapter>/``
    and, with ``exchange``, in ``EXCHANGE/<course_id>/personal/<student>/<chapter>/`` (owned by the
    learner's system user when there is one, mode 0700: no other learner can read it). A chapter that
    declares no variant gets the same copy for everyone.
    """
    from . import course

    students = read_roster(roster)
    secret = course_secret(course_dir, create=True)
    out: dict[str, dict[str, Path]] = {}
    for chapter, released in zip(chapters, course.release(chapters, course_dir, source_dir, quiet=quiet),
                                 strict=True):
        files = {p.relative_to(released).as_posix(): p.read_bytes() for p in sorted(released.rglob("*"))
                 if p.is_file()}
        out[chapter] = {}
        for student in students:
            mine = dict(files)
            for name, data in files.items():
                if name.endswith(".ipynb") and "/" not in name:
                    nb = personalise(json.loads(data), secret, student)
                    mine[name] = (json.dumps(nb, indent=1, ensure_ascii=False) + "\n").encode()
            dest = Path(course_dir) / PER_STUDENT_DIR / student / chapter
            _write_private(dest, mine, None)
            out[chapter][student] = dest
            if exchange is not None:
                _write_private(Path(exchange) / course_id / "personal" / student / chapter, mine, student)
        record = Path(course_dir) / RECORD_DIR / f"{chapter}.json"
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"chapter": chapter, "secret": secret_fingerprint(secret),
                                      "students": students}, indent=1) + "\n")
    return out


@dataclass(frozen=True)
class GradingVariants:
    """What ``grade`` needs to grade each learner with their own values: the secret and who got a release."""

    secret: bytes
    students: frozenset[str]

    def references(self, student: str, references: dict[str, bytes]) -> dict[str, bytes]:
        """The reference notebooks with ``student``'s values (unchanged for a learner not in the record)."""
        if student not in self.students:
            return references
        out = {}
        for name, data in references.items():
            nb = json.loads(data)
            out[name] = json.dumps(personalise(nb, self.secret, student)).encode() if declarations(nb) else data
        return out


def for_grading(course_dir: Path, chapter: str) -> GradingVariants | None:
    """The variants to grade ``chapter`` with, or None when it had no per-learner release in this course.

    Raises :class:`VariantError` when the record exists but the secret is missing or is not the one
    the release was made with (grading would then use values the learners never saw).
    """
    record = Path(course_dir) / RECORD_DIR / f"{chapter}.json"
    if not record.is_file():
        return None
    data = json.loads(record.read_text())
    secret = course_secret(course_dir)
    if secret is None:
        raise VariantError(f"{chapter} was released per learner, but the course secret is missing: set "
                           f"${SECRET_ENV} or restore {Path(course_dir) / SECRET_FILE}")
    if secret_fingerprint(secret) != data.get("secret"):
        raise VariantError(f"{chapter} was released per learner with another course secret than the current one "
                           f"(${SECRET_ENV} or {Path(course_dir) / SECRET_FILE})")
    return GradingVariants(secret, frozenset(data.get("students", [])))
