"""Cell outputs as nbformat dicts, capped in bytes (what a learner's cell may leave in a report).

Every output is counted in the bytes it takes in the report (``len(json.dumps(output))``, ASCII
escapes included), structure included, so ``sum(len(json.dumps(o)) for o in outputs)`` never exceeds
the cap, whatever the kernel sends: stream text, display data and metadata, error name, value and
traceback. What does not fit is dropped and only counted; :meth:`Outputs.finish` ends with a note
saying how much. The messages come from learner code, so nothing in them is trusted to have the
type nbformat says.
"""

from __future__ import annotations

import json

ENAME_CHARS, EVALUE_CHARS, TRACEBACK_CHARS = 200, 2000, 8000  # the most kept of an error, before the cap
_CHUNK = 1 << 16


def _text(value) -> str:
    """A message field that should be a string; nbformat's list-of-lines form is joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "".join(value)
    return "" if value is None else str(value)[:EVALUE_CHARS]


def _str_size(s: str) -> int:
    """``len(json.dumps(s)) - 2`` without building the dump of a huge string at once."""
    return sum(len(json.dumps(s[i:i + _CHUNK])) - 2 for i in range(0, len(s), _CHUNK))


def _size(obj, limit: float = float("inf")) -> int:
    """``len(json.dumps(obj))``; once the size is known to exceed ``limit`` a cheaper number above it.

    Walks the structure so that a huge message is never dumped whole just to learn it is too big.
    """
    if isinstance(obj, str):
        if len(obj) + 2 > limit:  # every character takes at least one byte
            return len(obj) + 2
        return _str_size(obj) + 2
    if isinstance(obj, dict):
        total = 2 + 2 * max(len(obj) - 1, 0)  # {} and ", "
        for key, value in obj.items():
            total += _size(key if isinstance(key, str) else json.dumps(key), limit - total) + 2  # ": "
            if total > limit:
                return total
            total += _size(value, limit - total)
            if total > limit:
                return total
        return total
    if isinstance(obj, (list, tuple)):
        total = 2 + 2 * max(len(obj) - 1, 0)
        for value in obj:
            total += _size(value, limit - total)
            if total > limit:
                return total
        return total
    return len(json.dumps(obj))


def _fit(text: str, room: int, tail: bool = False) -> str:
    """The longest prefix (or suffix, ``tail``) of ``text`` whose JSON string body takes ``room`` bytes at most."""
    if room <= 0:
        return ""
    part = text[-room:] if tail else text[:room]
    size = _str_size(part)
    while size > room:
        n = min(len(part) - 1, len(part) * room // size)
        part = part[len(part) - n:] if tail else part[:n]
        size = _str_size(part)
    return part


class Outputs:
    """Cell outputs as nbformat dicts, capped in bytes (``json.dumps`` bytes, as stored in reports)."""

    def __init__(self, cap: int):
        self.cap, self.used, self.dropped, self.items = cap, 0, 0, []

    @property
    def room(self) -> int:
        return max(self.cap - self.used, 0)

    def _store(self, item: dict) -> None:
        self.used += len(json.dumps(item))
        self.items.append(item)

    def add_text(self, name, text) -> None:
        name = "stderr" if name == "stderr" else "stdout"
        text = _text(text)
        if not text:
            return
        last = self.items[-1] if self.items else None
        merge = last is not None and last["output_type"] == "stream" and last["name"] == name
        overhead = 0 if merge else len(json.dumps({"output_type": "stream", "name": name, "text": ""}))
        kept = _fit(text, self.room - overhead)
        if len(kept) < len(text):
            self.dropped += _str_size(text) - _str_size(kept)
        if not kept:
            return
        if merge:
            self.used += _str_size(kept)
            last["text"] += kept
        else:
            self._store({"output_type": "stream", "name": name, "text": kept})

    def add_data(self, kind: str, content) -> None:
        content = content if isinstance(content, dict) else {}
        data, metadata = content.get("data"), content.get("metadata")
        out = {"output_type": kind, "data": data if isinstance(data, dict) else {},
               "metadata": metadata if isinstance(metadata, dict) else {}}
        if kind == "execute_result":
            count = content.get("execution_count")
            out["execution_count"] = count if isinstance(count, int) and not isinstance(count, bool) else None
        try:
            size = _size(out, self.room)
        except (RecursionError, TypeError, ValueError):  # nested too deep to be an output worth keeping
            self.dropped += self.room + 1
            return
        if size > self.room:
            self.dropped += size
            return
        self._store(out)

    def add_error(self, ename, evalue, traceback) -> None:
        """An error output: its name, value and the traceback's end, each shortened to what is left of the cap."""
        ename, evalue = _text(ename), _text(evalue)
        lines = [_text(line) for line in (traceback if isinstance(traceback, list) else [traceback])]
        sent = _str_size(ename) + _str_size(evalue) + sum(map(_str_size, lines)) + 2 * max(len(lines) - 1, 0)
        tail, n = [], 0  # the traceback's last TRACEBACK_CHARS characters, without joining a huge list
        for line in reversed(lines):
            if n >= TRACEBACK_CHARS:
                break
            tail.append(line[-TRACEBACK_CHARS:])
            n += len(tail[-1]) + 1
        item = {"output_type": "error", "ename": "", "evalue": "", "traceback": [""]}
        room = self.room - len(json.dumps(item))
        if room < 0:  # not even an empty error output fits
            self.dropped += sent
            return
        item["ename"] = _fit(ename[:ENAME_CHARS], room)
        room -= _str_size(item["ename"])
        item["evalue"] = _fit(evalue[:EVALUE_CHARS], room)
        room -= _str_size(item["evalue"])
        item["traceback"] = [_fit("\n".join(reversed(tail))[-TRACEBACK_CHARS:], room, tail=True)]
        self.dropped += max(sent - sum(_str_size(s) for s in (item["ename"], item["evalue"], item["traceback"][0])), 0)
        self._store(item)

    def clear(self) -> None:
        """``clear_output``: what was cleared no longer counts (a progress bar may redraw all day)."""
        self.items.clear()
        self.used = self.dropped = 0

    def finish(self) -> list[dict]:
        """The outputs, then a note if some were dropped (outputs may still be added: the judge's error)."""
        if not self.dropped:
            return list(self.items)
        return [*self.items, {"output_type": "stream", "name": "stderr",
                              "text": f"\n[grader: {self.dropped} more bytes of output not kept; "
                                      f"at most {self.cap} bytes are kept]\n"}]
