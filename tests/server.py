"""A `udp-reader serve` started by a test on a free loopback port, and what
it wrote: its status file (the state to wait on), its log lines (what the
operator reads), the handlers' records. It follows the master across an
upgrade (USR2)."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import threading
from typing import Callable

from conftest import DEADLINE, STARTED, free_port
from harness import Adopted, snapshot, wait_until
from places import EXAMPLES, HANDLERS


class Server:
    """Serves a handler of tests/handlers, of `record_dir` (where a test may
    write one) or of examples/, with `env` added to the environment. Without
    --pid-file among `args` it gets one in `record_dir`, so that there is
    always a status file to wait on. `proc` is the master it started,
    `master` the one serving now: another one after upgrade()."""

    def __init__(self, handler: str, *args: str, record_dir: str,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        if "--pid-file" in args:
            self.pid_file = args[args.index("--pid-file") + 1]
        else:
            self.pid_file = os.path.join(record_dir, f"serve-{self.port}.pid")
            args = (*args, "--pid-file", self.pid_file)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "udp_reader", "serve", handler,
             "--bind", f"127.0.0.1:{self.port}", *args],
            cwd=HANDLERS, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "RECORD_DIR": record_dir,
                 "PYTHONPATH": os.pathsep.join([HANDLERS, record_dir, EXAMPLES]), **(env or {})})
        self.master: subprocess.Popen | Adopted = self.proc
        self.lines: list[str] = []
        self._new = threading.Condition()
        self._collector = threading.Thread(target=self._collect, daemon=True)
        self._collector.start()
        STARTED.append(self)

    def _collect(self) -> None:
        # Reads till every process that inherited the pipe (a new master,
        # the workers) has closed it: the log is whole once this ends.
        for line in self.proc.stderr:
            with self._new:
                self.lines.append(line.rstrip("\n"))
                self._new.notify_all()

    @property
    def log(self) -> str:
        """What every master and worker wrote, whole once stop() returned."""
        return "\n".join(self.lines)

    def status(self, until: Callable[[dict], bool] = lambda s: True) -> dict:
        """The serving master's snapshot once `until(snapshot)` holds. The
        status file appears once the master serves, and is rewritten every
        second."""
        return snapshot(self.pid_file, lambda s: s.get("pid") == self.master.pid and until(s),
                        DEADLINE)

    def workers(self, until: Callable[[dict], bool] = lambda s: True) -> list[tuple[int, int]]:
        """(pid, slot) of every worker of the snapshot that satisfies `until`."""
        return [(w["pid"], x["slot"]) for x in self.status(until)["slots"] for w in x["workers"]]

    def told(self, text: str) -> None:
        """Wait until the log says `text`: only where the master can report
        nothing else (out of descriptors, it can write no status file)."""
        with self._new:
            ok = self._new.wait_for(lambda: any(text in l for l in self.lines), timeout=DEADLINE)
        assert ok, f"never saw {text!r} in:\n" + "\n".join(self.lines)

    def upgrade(self) -> None:
        """USR2; returns once the old master exited (0) and the new one
        wrote its pid file and its status file. status() and stop() then
        address the new one."""
        old = self.master
        old.send_signal(signal.SIGUSR2)
        assert old.wait(DEADLINE) == 0
        self.master = Adopted(wait_until(
            lambda: (pid := self._pid_in_file()) not in (None, old.pid) and pid, DEADLINE))
        self.status()

    def _pid_in_file(self) -> int | None:
        try:
            with open(self.pid_file) as f:
                return int(f.read())
        except (FileNotFoundError, ValueError):
            return None

    def stop(self) -> int | None:
        """TERM the serving master (unless it exited), and its exit code
        once the whole log was collected (an adopted master's is 0 once
        its new parent reaped it)."""
        master = self.master
        if master.poll() is None:
            master.send_signal(signal.SIGTERM)
        try:
            return master.wait(DEADLINE)
        finally:
            if master.poll() is None:
                master.kill()
                master.wait(DEADLINE)
            self._collector.join(DEADLINE)


def serving(workers: int) -> Callable[[dict], bool]:
    """A snapshot where `workers` slots each have a worker reading."""
    return lambda s: (s["phase"] == "running" and len(s["slots"]) == workers
                      and all(x["state"] == "serving" for x in s["slots"]))


def handled(record_dir: str) -> int:
    """Sequence numbers recorder.py wrote, over all workers."""
    return sum(os.path.getsize(os.path.join(record_dir, f)) // 8
               for f in os.listdir(record_dir) if f.endswith(".seq"))


def recorded(record_dir: str) -> list[bytes]:
    """Every payload flaky.py recorded, sorted."""
    out = []
    for path in glob.glob(os.path.join(record_dir, "*.txt")):
        with open(path, "rb") as f:
            out += f.read().split(b"\n")[:-1]
    return sorted(out)
