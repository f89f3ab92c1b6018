"""A work-around for a missed wake-up in jupyter_client's asyncio channels (nbclient issue #312).

nbclient waits for a cell's ``execute_reply`` with one ``shell_channel.get_msg(timeout=<cell timeout>)``.
After a cell that opens widget comms (``ipywidgets.interact``), that single poll of the zmq asyncio
socket sometimes misses the reply that has already arrived and returns only when the cell timeout
runs out: the benchmark and nbgrader's autograde then sit idle for 600-900 s and carry on as if
nothing happened. Polling in short slices until the same deadline sees the reply within one slice;
nothing else changes (the same timeout, the same ``Empty`` at the end).
"""

from __future__ import annotations

from queue import Empty
from time import monotonic

SLICE_SECONDS = 0.5


def install() -> None:
    """Make ``AsyncZMQSocketChannel.get_msg`` poll in slices of at most :data:`SLICE_SECONDS` (idempotent)."""
    from jupyter_client.channels import AsyncZMQSocketChannel

    original = AsyncZMQSocketChannel.get_msg
    if getattr(original, "dlbook_sliced", False):
        return

    async def get_msg(self, timeout: float | None = None):
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            step = SLICE_SECONDS if deadline is None else min(SLICE_SECONDS, max(0.0, deadline - monotonic()))
            try:
                return await original(self, step)
            except Empty:
                if deadline is not None and monotonic() >= deadline:
                    raise

    get_msg.dlbook_sliced = True
    get_msg.__doc__ = original.__doc__
    AsyncZMQSocketChannel.get_msg = get_msg
