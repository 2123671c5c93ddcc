"""An upgrade (USR2) as an operator meets it: the totals go on from the old
master's, and a serve in a terminal's foreground keeps the terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time

from conftest import DEADLINE, send
from harness import snapshot
from places import HANDLERS
from server import Server, handled


def delivered(snap: dict) -> int:
    return sum(s["totals"].get("delivered", 0) for s in snap.get("slots", []))


def upgraded(pid_file: str, old: int) -> dict:
    """The snapshot of the master that took over from `old`, once the old
    one has left."""
    return snapshot(pid_file, lambda s: s["pid"] != old and "old_master" not in s["others"])


def test_totals_go_on_across_an_upgrade(record_dir):
    pid_file = os.path.join(record_dir, "serve.pid")
    server = Server("recorder:on_packet", "--workers", "2", "--pid-file", pid_file,
                    record_dir=record_dir)
    new_master = None
    try:
        server.status()
        for flow in range(4):
            send(("127.0.0.1", server.port), [i.to_bytes(8, "little") for i in range(flow, 200, 4)])
        server.status(lambda s: delivered(s) == 200)
        server.proc.send_signal(signal.SIGUSR2)
        assert server.proc.wait(DEADLINE) == 0  # no terminal here: the old master exits
        # The new master's totals start from the old one's.
        snap = upgraded(pid_file, server.proc.pid)
        new_master = snap["pid"]
        assert delivered(snap) == 200
        assert sum(s["totals"]["received"] for s in snap["slots"]) == 200
        assert snap["events"]["worker_starts"] == 4  # 2 old, 2 new
        for flow in range(4):
            send(("127.0.0.1", server.port),
                 [i.to_bytes(8, "little") for i in range(200 + flow, 300, 4)])
        snapshot(pid_file, lambda s: delivered(s) == 300)
        assert handled(record_dir) == 300
    finally:
        if new_master is not None:  # first: it writes to the old master's stderr too
            os.kill(new_master, signal.SIGTERM)
            deadline = time.monotonic() + DEADLINE
            while os.path.exists(pid_file) and time.monotonic() < deadline:
                time.sleep(0.05)
        server.stop()
    assert any("the old master has left" in l for l in server.lines)
    assert not os.path.exists(pid_file)


def test_a_foreground_serve_keeps_the_terminal_across_an_upgrade(record_dir):
    # As a shell runs it: the terminal's foreground process group is serve's.
    controller, terminal = pty.openpty()
    pid_file = os.path.join(record_dir, "serve.pid")
    env = dict(os.environ, RECORD_DIR=record_dir,
               PYTHONPATH=os.pathsep.join([HANDLERS, record_dir]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "udp_reader", "serve", "recorder:on_packet", "--bind",
         "127.0.0.1:0", "--pid-file", pid_file], stdin=terminal, stdout=terminal,
        stderr=terminal, cwd=HANDLERS, env=env,
        start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(terminal)
    seen = b""

    def read_until(text: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + DEADLINE
        while text not in seen and time.monotonic() < deadline:
            if select.select([controller], [], [], 0.1)[0]:
                try:
                    seen += os.read(controller, 65536)
                except OSError:  # EIO: nobody has the terminal open any more
                    break
        assert text in seen, seen.decode(errors="replace")

    new_master = None
    try:
        snapshot(pid_file, lambda s: s["pid"] == proc.pid)
        read_until(b"serving recorder:on_packet")
        proc.send_signal(signal.SIGUSR2)
        new_master = upgraded(pid_file, proc.pid)["pid"]
        # What the person at the terminal reads.
        read_until(b"the old master has left")
        read_until(b"this process waits for it")
        # The prompt would not come back: the process the shell waits for is there.
        assert proc.poll() is None
        os.write(controller, b"\x03")  # Ctrl-C, as a person types it
        assert proc.wait(DEADLINE) == 0
        read_until(b"stopped:")
        new_master_gone = not os.path.exists(f"/proc/{new_master}")
        assert new_master_gone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if new_master is not None and os.path.exists(f"/proc/{new_master}"):
            os.kill(new_master, signal.SIGKILL)
        os.close(controller)
