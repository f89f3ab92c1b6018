"""The sliced wait on a kernel's shell channel (autograder/zmq_poll.py): same answers, same timeout."""

from __future__ import annotations

import asyncio
import time
from queue import Empty

import pytest
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.manager import AsyncKernelManager

from autograder import zmq_poll


def test_install_is_idempotent_and_keeps_the_reply_and_the_timeout() -> None:
    zmq_poll.install()
    patched = AsyncZMQSocketChannel.get_msg
    zmq_poll.install()
    assert AsyncZMQSocketChannel.get_msg is patched and patched.dlbook_sliced

    async def scenario() -> tuple[dict, float, float]:
        km = AsyncKernelManager(kernel_name="python3")
        await km.start_kernel()
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=120)
            msg_id = kc.execute("import time; time.sleep(1.2); 6 * 7")
            t0 = time.monotonic()
            reply = await kc.shell_channel.get_msg(timeout=60)  # longer than a slice: several polls
            while reply["parent_header"].get("msg_id") != msg_id:  # a late kernel_info reply of wait_for_ready
                reply = await kc.shell_channel.get_msg(timeout=60)
            waited_for_reply = time.monotonic() - t0
            t0 = time.monotonic()
            with pytest.raises(Empty):
                await kc.shell_channel.get_msg(timeout=1.2)  # nothing is coming: Empty at the deadline
            return reply, waited_for_reply, time.monotonic() - t0
        finally:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)

    reply, waited_for_reply, waited_for_nothing = asyncio.run(scenario())
    assert reply["content"]["status"] == "ok"
    assert 1.0 <= waited_for_reply < 30, f"the reply came after {waited_for_reply:.2f} s"
    assert 1.2 <= waited_for_nothing < 3.0, f"Empty after {waited_for_nothing:.2f} s, expected at the 1.2 s deadline"
