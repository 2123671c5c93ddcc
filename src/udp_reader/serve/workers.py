"""The master's side of a worker process: spawning it, its state, the
commands it is sent and the status it reports (protocol.py)."""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import signal
import subprocess
import time
from typing import Any, Dict, Optional

from udp_reader.serve import bootstrap, clock, protocol
from udp_reader.serve.orders import WorkerOrders

log = logging.getLogger("udp_reader")
NEVER = float("inf")


class State(enum.Enum):
    STARTING = "starting"  # spawned; importing the handler
    READY = "ready"        # set up, waiting for its turn to read
    SERVING = "serving"    # reading
    LEAVING = "leaving"    # told to retire, drain or quit
    KILLED = "killed"      # stack asked for, SIGKILL on its way


class WorkerProcess:
    def __init__(self, proc: subprocess.Popen, slot: int, generation: int,
                 status_fd: int, control_fd: int, deadline: float) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.slot = slot
        self.generation = generation
        self.state = State.STARTING
        self.status_fd = status_fd
        self.control_fd = control_fd
        self.deadline = deadline    # when the current state has lasted too long
        self.stats: Dict[str, Any] = {}
        self.error = ""
        self.released = False
        self.recycle = False   # handled its --max-packets; reads no more
        self.replace_due = False  # the master passes its slot on to a new worker
        self.reads = False
        self.started = time.time()
        self.last_heard = clock.now()
        self._lines = protocol.Lines()

    def tell(self, command: str, state: State, deadline: float) -> None:
        if command in (protocol.GO, protocol.DRAIN):
            self.reads = True  # from now on it may hold datagrams it took
        try:
            os.write(self.control_fd, command.encode() + b"\n")
        except OSError:
            pass  # it is exiting; reaping will tell
        self.state, self.deadline = state, deadline

    def dismiss(self, deadline: float) -> None:
        """End a worker that never read: one still importing is killed, as
        it cannot hear a command yet."""
        if self.state is State.STARTING:
            self.kill()
        self.tell(protocol.QUIT, State.LEAVING, deadline)

    def read_status(self) -> bool:
        """Take what the worker reported; False once its pipe is closed."""
        try:
            chunk = os.read(self.status_fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not chunk:
            return False
        self.last_heard = clock.now()
        dropped = self._lines.dropped
        lines = self._lines.feed(chunk)
        if self._lines.dropped != dropped:
            log.warning("%r sent a status line longer than %d bytes; dropped it (%d so far)",
                        self, self._lines.limit, self._lines.dropped)
        for line in lines:
            message = protocol.decode(line)
            if message.get("ready") and self.state is State.STARTING:
                self.state = State.READY
            if message.get("released"):
                self.released = True
            if message.get("recycle"):
                self.recycle = True
            if isinstance(message.get("stats"), dict):
                self.stats = message["stats"]
            if "error" in message:
                self.error = str(message["error"])
        return True

    def poll(self) -> Optional[int]:
        return self.proc.poll()

    def dump_and_kill(self, now: float) -> None:
        """Ask for every thread's stack (faulthandler), SIGKILL a moment later."""
        self._signal(signal.SIGUSR2)
        self.state, self.deadline = State.KILLED, now + 0.5

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        try:
            self.proc.send_signal(sig)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """After it exited: wait for it and close our pipe ends."""
        self.proc.wait()
        os.close(self.status_fd)
        os.close(self.control_fd)

    def __repr__(self) -> str:
        return f"worker {self.pid} (slot {self.slot})"


def spawn(sock_fd: int, slot: int, generation: int, orders: WorkerOrders,
          start_timeout: float) -> WorkerProcess:
    """Start udp_reader.serve.worker (isolated: bootstrap.py) on the socket `sock_fd`.
    Raises OSError when the system refuses (descriptors, processes)."""
    status_read, status_write = os.pipe2(os.O_CLOEXEC)
    try:
        control_read, control_write = os.pipe2(os.O_CLOEXEC)
    except OSError:
        os.close(status_read)
        os.close(status_write)
        raise
    env = dict(os.environ, **{
        protocol.CONFIG_ENV: dataclasses.replace(orders, fd=sock_fd,
                                                 status_fd=status_write).to_json(),
        protocol.SLOT_ENV: str(slot)})
    try:
        proc = subprocess.Popen(bootstrap.command("udp_reader.serve.worker"), env=env,
                                stdin=control_read, pass_fds=(sock_fd, status_write))
    except BaseException:
        for fd in (status_read, control_write):
            os.close(fd)
        raise
    finally:
        os.close(status_write)
        os.close(control_read)
    os.set_blocking(status_read, False)
    os.set_blocking(control_write, False)
    return WorkerProcess(proc, slot, generation, status_read, control_write,
                         clock.now() + start_timeout)

