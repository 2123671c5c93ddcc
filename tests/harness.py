"""A `udp-reader serve` under numbered traffic, in a network namespace of
our own: the paced sender, the masters' sd_notify messages and status file,
and masters we did not start. Shared by the restart, multicast and watch
harnesses, which run as scripts (`unshare -n python X_harness.py NAME`)."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable

import numpy as np

from places import HANDLERS

PORT = 7777
FLOWS = 32
DEADLINE = 60.0  # no step of a scenario waits longer
HANDLER_ARGS = {"batch": ["recorder:on_batch", "--batches"], "packet": ["recorder:on_packet"],
                "buffered": ["buffered_recorder:on_packet"]}
COUNTERS = ("NoPorts", "RcvbufErrors", "InErrors")


def activator_env(**extra: str) -> list:
    """-E options for systemd-socket-activate, which starts its service with
    an empty environment: the variables given, and those a sanitizer build
    of the tests needs."""
    options = [f"-E{name}={value}" for name, value in extra.items()]
    for name in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS"):
        if name in os.environ:
            options.append(f"-E{name}={os.environ[name]}")
    return options


def udp_counters() -> dict:
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:]) if k in COUNTERS}


class Sender(threading.Thread):
    """Sends numbers 0, 1, 2, ... at `rate` per second, number n from source
    port n % FLOWS, until stopped, `limit` numbers, or `max_seconds`."""

    def __init__(self, rate: int, size: int = 64, limit: int = 10**9,
                 max_seconds: float = DEADLINE, flows: int = FLOWS, first: int = 0,
                 cpu: int | None = None, port: int = PORT):
        super().__init__(daemon=True)
        self.rate, self.size, self.limit = rate, size, limit
        self.max_seconds = max_seconds
        self.socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(flows)]
        self.first, self.cpu = first, cpu
        self.address = ("127.0.0.1", port)
        self.sent = 0
        self.elapsed = 0.0
        self.halt = threading.Event()

    def send_first(self) -> None:
        """Send number 0 alone (to wake a socket-activated service)."""
        self.socks[0].sendto(bytes(self.size), self.address)
        self.sent = 1

    def run(self) -> None:
        if self.cpu is not None:  # this thread only: the kernel receives on its CPU
            os.sched_setaffinity(0, {self.cpu})
        pad = bytes(self.size - 8)
        start = time.monotonic()
        flows = len(self.socks)
        while not self.halt.is_set() and self.sent < self.limit:
            elapsed = time.monotonic() - start
            if elapsed > self.max_seconds:
                break
            due = min(int(elapsed * self.rate) + 1, self.limit)
            while self.sent < due:
                number = self.first + self.sent
                self.socks[number % flows].sendto(number.to_bytes(8, "little") + pad, self.address)
                self.sent += 1
            time.sleep(0.0005)
        self.elapsed = time.monotonic() - start
        for s in self.socks:
            s.close()

    def achieved_rate(self) -> float:
        return self.sent / max(self.elapsed, 1e-9)

    def stop(self) -> int:
        self.halt.set()
        if self.is_alive():
            self.join()
        return self.sent


class Notifications:
    """A NOTIFY_SOCKET of our own: sd_notify messages from the masters, read
    as they come by a thread (a manager that stops reading would make the
    masters' messages be dropped)."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list = []
        self._seen = 0
        self._new = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096).decode()
            except OSError:
                return
            with self._new:
                self.messages.append(
                    dict(line.split("=", 1) for line in data.splitlines() if "=" in line))
                self._new.notify_all()

    def wait_for(self, predicate, timeout: float = DEADLINE) -> dict:
        """The first message not looked at yet (as a dict) that satisfies
        `predicate`; those before it are passed over."""
        deadline = time.monotonic() + timeout
        with self._new:
            while True:
                while self._seen < len(self.messages):
                    message = self.messages[self._seen]
                    self._seen += 1
                    if predicate(message):
                        return message
                left = deadline - time.monotonic()
                if left <= 0 or not self._new.wait(left):
                    raise TimeoutError("no matching sd_notify message")

    def ready(self, **expected) -> dict:
        return self.wait_for(lambda m: m.get("READY") == "1" and all(
            m.get(k) == v for k, v in expected.items()))

    def status(self, text: str) -> dict:
        return self.wait_for(lambda m: m.get("STATUS", "").startswith(text))

    def reloaded(self) -> None:
        self.wait_for(lambda m: m.get("RELOADING") == "1")
        self.ready()


def children(pid: int) -> list:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def ours(directory: str) -> list:
    """Pids of every process still running with our RECORD_DIR (leaks)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if f"RECORD_DIR={directory}".encode() in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            pass
    return found


class Harness:
    """The masters of one scenario, started at the defaults a user gets, and
    what they left: a log file each, the workers' records (recorder.py
    writes SLOT.PID.seq in RECORD_DIR), the status file of PID_FILE."""

    def __init__(self, directory: str, rate: int, handler: str, seconds: float = 0,
                 port: int = PORT) -> None:
        self.dir = directory
        self.port = port
        self.handler = HANDLER_ARGS[handler]
        self.notify = Notifications(directory)
        self.pid_file = os.path.join(directory, "serve.pid")  # for masters given --pid-file
        self.env = dict(os.environ, RECORD_DIR=directory, NOTIFY_SOCKET=self.notify.path,
                        PYTHONPATH=HANDLERS + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.sender = Sender(rate, max_seconds=max(DEADLINE, seconds + DEADLINE), port=port)
        self.masters: list = []
        self.logs: list = []
        self.cleanups: list = []  # run at the end, after the masters are gone

    def serve(self, *extra: str, prefix=(), bind=True, env=None, handler=None, pass_fds=()):
        """Start a master at the defaults; its log goes to a file of its own."""
        args = [sys.executable, "-m", "udp_reader", "serve", *(handler or self.handler), *extra]
        if bind:
            args += ["--bind", f"127.0.0.1:{self.port}"]
        log = os.path.join(self.dir, f"master-{len(self.logs)}.log")
        self.logs.append(log)
        with open(log, "w") as stderr:
            proc = subprocess.Popen([*prefix, *args], env=dict(self.env, **(env or {})),
                                    cwd=HANDLERS, stderr=stderr, pass_fds=pass_fds)
        self.masters.append(proc)
        return proc

    def log_text(self) -> str:
        text = ""
        for path in self.logs:
            with open(path) as f:
                text += f.read()
        return text

    def logged(self, pattern: str) -> list:
        """What the masters' logs said, read once a state the status file
        shows was reached (each master writes its log line before it
        publishes the state)."""
        return re.findall(pattern, self.log_text())

    def status(self, until: Callable[[dict], bool] = lambda s: True) -> dict:
        """The status file of the master given --pid-file h.pid_file."""
        return snapshot(self.pid_file, until)

    def records(self) -> list:
        """[(slot, pid, numbers)] for every worker's file."""
        out = []
        for path in glob.glob(os.path.join(self.dir, "*.seq")):
            slot, pid, _ = os.path.basename(path).split(".")
            out.append((slot, int(pid), np.fromfile(path, dtype="<u8")))
        return out


def wait_gone(pid: int, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1].startswith("Z"):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.02)


def wait_until(found, timeout: float = DEADLINE):
    """What `found()` returns once it is truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = found()
        if result:
            return result
        time.sleep(0.02)
    raise TimeoutError("never came")


def snapshot(pid_file: str, until: Callable[[dict], bool] = lambda s: True,
             timeout: float = DEADLINE) -> dict:
    """The master's status file (written next to its pid file every
    second), once `until(snapshot)` holds."""
    path = pid_file + ".json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                found = json.load(f)
            if until(found):
                return found
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"the status file never settled: {path}")


def settled(workers: int, **events: int):
    """A snapshot with `workers` slots, each served by one worker, no other
    master holding the sockets, and each of `events` counted at least so
    often (restarts=2)."""
    return lambda s: (s.get("phase") == "running" and s.get("workers") == workers
                      and len(s["slots"]) == workers and not s.get("others")
                      and all(x["state"] == "serving" and len(x["workers"]) == 1
                              for x in s["slots"])
                      and all(s["events"].get(k, 0) >= n for k, n in events.items()))


def upgraded(h: Harness, old, timeout: float = DEADLINE) -> "Adopted":
    """The master a USR2 to `old` started, once it is ready."""
    new = h.notify.wait_for(lambda m: m.get("READY") == "1"
                            and m.get("MAINPID", str(old.pid)) != str(old.pid), timeout)
    return Adopted(int(new["MAINPID"]))


class Adopted:
    """A master we did not start (an upgrade's), as far as scenarios need."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode = None

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float):
        """Its exit status, read from the zombie (or 0 once reaped by
        another), None if it still runs."""
        wait_gone(self.pid, timeout)
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().split(") ")[1].split()
        except FileNotFoundError:
            self.returncode = 0
            return 0
        if fields[0] != "Z":
            return None
        status = int(fields[-1])  # exit_code, as waitpid() would give it
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self):
        return None if os.path.exists(f"/proc/{self.pid}") else 0

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


