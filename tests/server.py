"""A `udp-reader serve` started by a test on a free loopback port, and what
it wrote: its status file (the state to wait on), its log lines (what the
operator reads), the handlers' records."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import threading
from typing import Callable

from conftest import DEADLINE, STARTED, free_port
from harness import snapshot
from places import HANDLERS


class Server:
    """Serves a handler of tests/handlers (or of `record_dir`, where a test
    may write one). Without --pid-file among `args` it gets one in
    `record_dir`, so that there is always a status file to wait on."""

    def __init__(self, handler: str, *args: str, record_dir: str) -> None:
        self.port = free_port()
        if "--pid-file" in args:
            self.pid_file = args[args.index("--pid-file") + 1]
        else:
            self.pid_file = os.path.join(record_dir, f"serve-{self.port}.pid")
            args = (*args, "--pid-file", self.pid_file)
        env = dict(os.environ, RECORD_DIR=record_dir,
                   PYTHONPATH=os.pathsep.join([HANDLERS, record_dir]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "udp_reader", "serve", handler,
             "--bind", f"127.0.0.1:{self.port}", *args],
            cwd=HANDLERS, env=env, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._new = threading.Condition()
        self._collector = threading.Thread(target=self._collect, daemon=True)
        self._collector.start()
        STARTED.append(self)

    def _collect(self) -> None:
        for line in self.proc.stderr:
            with self._new:
                self.lines.append(line.rstrip("\n"))
                self._new.notify_all()

    def status(self, until: Callable[[dict], bool] = lambda s: True) -> dict:
        """This master's snapshot once `until(snapshot)` holds. The status
        file appears once the master serves, and is rewritten every second."""
        return snapshot(self.pid_file, lambda s: s.get("pid") == self.proc.pid and until(s),
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

    def stop(self) -> int:
        """TERM (unless it exited), and its exit code once its whole log
        was collected."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(DEADLINE)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
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
