"""Cell outputs as nbformat dicts, capped in bytes (what a learner's cell may leave in a report)."""

from __future__ import annotations

import json


class Outputs:
    """Cell outputs as nbformat dicts, capped in bytes."""

    def __init__(self, cap: int):
        self.cap, self.used, self.dropped, self.items = cap, 0, 0, []

    def add_text(self, name: str, text: str) -> None:
        room = max(self.cap - self.used, 0)
        size = len(text.encode("utf-8", "replace"))
        if size > room:
            self.dropped += size - room
            text = text.encode("utf-8", "replace")[:room].decode("utf-8", "ignore")
        if not text:
            return
        self.used += len(text.encode("utf-8", "replace"))
        if self.items and self.items[-1].get("name") == name and self.items[-1]["output_type"] == "stream":
            self.items[-1]["text"] += text
        else:
            self.items.append({"output_type": "stream", "name": name, "text": text})

    def add_data(self, kind: str, content: dict) -> None:
        data = content.get("data", {})
        size = len(json.dumps(data))
        if self.used + size > self.cap:
            self.dropped += size
            return
        self.used += size
        out = {"output_type": kind, "data": data, "metadata": content.get("metadata", {})}
        if kind == "execute_result":
            out["execution_count"] = content.get("execution_count")
        self.items.append(out)

    def finish(self) -> list[dict]:
        if self.dropped:
            self.items.append({"output_type": "stream", "name": "stderr",
                               "text": f"\n[grader: {self.dropped} more bytes of output not kept; "
                                       f"at most {self.cap} bytes are kept]\n"})
        return self.items
