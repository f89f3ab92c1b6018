"""The learner workspace: student notebooks copied out of the release, never overwriting a file.

``workspace/.dlbook-release.json`` remembers the SHA-256 of each release file as last copied. On each
``make lab``:

- a file that is not in the workspace is copied in (new chapters appear);
- a file whose release is unchanged is left alone, whatever the learner did to it;
- a file whose release changed is written *beside* the learner's copy as
  ``NAME.updated-<hash>.ipynb`` and the learner is told; their copy is never touched.

Course-wide files that are not part of any chapter's release (the bilingual glossary
``GLOSSARY.md``) are passed as ``extra_files`` and follow the same three rules.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = ".dlbook-release.json"


@dataclass
class SyncReport:
    """What :func:`sync_workspace` did, as paths relative to the workspace."""

    added: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    updated_beside: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = []
        if self.added:
            lines.append(f"Added {len(self.added)} file(s): " + ", ".join(self.added))
        for mine, new in self.updated_beside:
            lines.append(
                f"The course updated {mine}. Your copy is untouched; the new version is {new} "
                f"(open both and move over what you need)."
            )
        if not lines:
            lines.append(f"Workspace up to date ({len(self.unchanged)} file(s)); nothing overwritten.")
        return "\n".join(lines)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.chmod(tmp, _umask_mode())
    os.replace(tmp, path)


def _copy_new(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` through a temporary file, refusing to replace an existing file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}", suffix=".tmp")
    os.close(fd)
    shutil.copyfile(src, tmp)
    os.chmod(tmp, _umask_mode())
    try:
        os.link(tmp, dest)  # atomic, and fails if dest appeared meanwhile: never overwrite
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links
        with open(dest, "xb") as out, open(tmp, "rb") as inp:
            shutil.copyfileobj(inp, out)
    finally:
        os.unlink(tmp)


def sync_workspace(release_dir: Path, workspace: Path, extra_files: Mapping[str, Path] | None = None) -> SyncReport:
    """Bring ``workspace`` up to date with ``release_dir`` without overwriting any existing file.

    ``extra_files`` maps a path relative to the workspace (``"GLOSSARY.md"``) to the file to copy
    there, under the same rules as the release's files.
    """
    release_dir, workspace = Path(release_dir), Path(workspace)
    if not release_dir.is_dir():
        raise FileNotFoundError(f"expected a student release at {release_dir}; run `make release` first")
    workspace.mkdir(parents=True, exist_ok=True)
    manifest_path = workspace / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    except json.JSONDecodeError:
        manifest = {}  # a damaged manifest only costs a few extra ".updated" copies
    report = SyncReport()
    files: dict[str, Path] = {}
    for src in sorted(p for p in release_dir.rglob("*") if p.is_file()):
        rel = src.relative_to(release_dir)
        if not any(part.startswith(".") for part in rel.parts):
            files[rel.as_posix()] = src
    for key, src in (extra_files or {}).items():
        files.setdefault(Path(key).as_posix(), Path(src))
    for key, src in sorted(files.items()):
        rel = Path(key)
        new_hash = _sha256(src)
        target = workspace / rel
        if not target.exists():
            _copy_new(src, target)
            report.added.append(key)
        elif manifest.get(key) == new_hash or _sha256(target) == new_hash:
            report.unchanged.append(key)
        else:
            beside = target.with_name(f"{target.stem}.updated-{new_hash[:8]}{target.suffix}")
            if not beside.exists():
                _copy_new(src, beside)
            report.updated_beside.append((key, beside.relative_to(workspace).as_posix()))
        manifest[key] = new_hash
    _write_json_atomic(manifest_path, manifest)
    return report
