"""`udp-reader serve` failure handling, as real processes on loopback."""

from __future__ import annotations

import glob
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from conftest import DEADLINE, STARTED, send
from udp_reader.serve import privileges

HERE = os.path.dirname(os.path.abspath(__file__))


class Server:
    """A `udp-reader serve` whose log lines are collected as they come."""

    def __init__(self, handler: str, *args: str, record_dir: str) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        # Handlers come from tests/ and from the record folder.
        env = dict(os.environ, RECORD_DIR=record_dir,
                   PYTHONPATH=os.pathsep.join([HERE, record_dir]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "udp_reader", "serve", handler,
             "--bind", f"127.0.0.1:{self.port}", *args],
            cwd=HERE, env=env, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._new = threading.Condition()
        threading.Thread(target=self._collect, daemon=True).start()
        STARTED.append(self)

    def _collect(self) -> None:
        for line in self.proc.stderr:
            with self._new:
                self.lines.append(line.rstrip("\n"))
                self._new.notify_all()

    def ready_workers(self) -> list[tuple[str, str]]:
        """(pid, slot) of every "worker PID ready on slot N" logged so far."""
        return [m.groups() for l in self.lines
                if (m := re.search(r"worker (\d+) ready on slot (\d+)", l))]

    def wait_for(self, text: str, count: int = 1) -> None:
        with self._new:
            ok = self._new.wait_for(lambda: sum(text in l for l in self.lines) >= count,
                                    timeout=DEADLINE)
        assert ok, f"never saw {text!r} x{count} in:\n" + "\n".join(self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(DEADLINE)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def record_dir():
    with tempfile.TemporaryDirectory() as d:
        yield d


def recorded(record_dir: str) -> list[bytes]:
    out = []
    for path in glob.glob(os.path.join(record_dir, "*.txt")):
        with open(path, "rb") as f:
            out += f.read().split(b"\n")[:-1]
    return sorted(out)


def test_handler_that_fails_to_import_is_one_line_and_exit_2(record_dir):
    for handler, words in (("broken_handler:on_packet", "fails on import"),
                           ("no_such_module:f", "No module named 'no_such_module'"),
                           ("flaky:missing", "has no 'missing'"),
                           ("flaky:not_callable", "is not callable"),
                           ("flaky", "MODULE:CALLABLE")):
        server = Server(handler, record_dir=record_dir)
        code = server.proc.wait(DEADLINE)
        server.stop()
        assert code == 2, server.lines
        assert words in server.lines[-1]
        assert server.lines[-1].startswith("udp-reader: error: ")
        assert not any("Traceback" in line for line in server.lines)


def test_handler_exception_is_logged_and_the_worker_carries_on(record_dir):
    server = Server("flaky:on_packet", record_dir=record_dir)
    server.wait_for("serving")
    send(("127.0.0.1", server.port), [b"a", b"boom", b"b"] + [b"boom"] * 50 + [b"c"])
    deadline = time.monotonic() + DEADLINE
    while len(recorded(record_dir)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.stop() == 0
    assert recorded(record_dir) == [b"a", b"b", b"c"]
    errors = [l for l in server.lines if "handler raised ValueError: boom" in l]
    assert 1 <= len(errors) < 10  # rate-limited


def test_first_of_each_distinct_handler_error_is_logged_with_its_traceback(record_dir):
    # Without -v: one traceback per kind of error (type and place), not one
    # per error, and none for the repeats.
    server = Server("flaky:on_packet", record_dir=record_dir)
    server.wait_for("serving")
    send(("127.0.0.1", server.port), [b"boom"] * 20 + [b"key"] * 20 + [b"boom", b"a"])
    deadline = time.monotonic() + DEADLINE
    while not recorded(record_dir) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.stop() == 0
    text = "\n".join(server.lines)
    assert text.count("Traceback (most recent call last)") == 2, text
    assert re.search(r"handler raised ValueError: boom\nTraceback.*"
                     r'flaky\.py", line \d+, in on_packet\n.*\nValueError: boom', text, re.S)
    assert re.search(r"handler raised KeyError: 'key'.*\nTraceback.*"
                     r"\nKeyError: 'key'", text, re.S)


def test_every_handler_error_is_counted_in_the_log_by_the_stop(record_dir):
    # The log is rate-limited, but the errors of the last second before
    # TERM are told too: reported lines plus "N more" add up to all.
    server = Server("flaky:on_packet", record_dir=record_dir)
    server.wait_for("serving")
    send(("127.0.0.1", server.port), [b"boom"] * 150)
    assert server.stop() == 0
    reported = 0
    for line in server.lines:
        if "handler raised ValueError: boom" in line:
            more = re.search(r"\((\d+) more since the last report\)", line)
            reported += 1 + (int(more.group(1)) if more else 0)
        elif more := re.search(r"handler raised (\d+) more exception\(s\) since the last report",
                               line):
            reported += int(more.group(1))
    assert reported == 150, server.lines


def test_failed_restart_is_a_rollback(record_dir):
    module = os.path.join(record_dir, "swappable.py")
    with open(module, "w") as f:
        f.write("from flaky import on_packet\n")
    server = Server("swappable:on_packet", "--workers", "2", record_dir=record_dir)
    server.wait_for("serving")
    os.unlink(module)  # the deploy went wrong: the handler is gone
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for("rolling restart aborted")
    # From many source ports, so SO_REUSEPORT would spread them over any
    # socket the failed start had left in the group.
    expected = sorted(b"still-served-%d" % i for i in range(16))
    for payload in expected:
        send(("127.0.0.1", server.port), [payload])
    deadline = time.monotonic() + DEADLINE
    while len(recorded(record_dir)) < 16 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.proc.poll() is None
    assert server.stop() == 0
    assert recorded(record_dir) == expected
    assert any("No module named 'swappable'" in l for l in server.lines)
    # Aborted is not complete: never told as a restart that happened.
    assert not any("rolling restart complete" in l for l in server.lines)
    # Every line of the master's log says when it happened.
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} udp-reader", l)
               for l in server.lines if "udp-reader" in l), server.lines


def test_killed_worker_is_replaced_on_the_same_socket(record_dir):
    server = Server("flaky:on_packet", record_dir=record_dir)
    server.wait_for("worker")
    server.wait_for("serving")
    pid = int(server.ready_workers()[0][0])
    os.kill(pid, signal.SIGKILL)
    server.wait_for("takes over its socket and queue")
    server.wait_for("ready", 2)
    send(("127.0.0.1", server.port), [b"after"])
    deadline = time.monotonic() + DEADLINE
    while not recorded(record_dir) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.stop() == 0
    assert recorded(record_dir) == [b"after"]
    assert any("killed by SIGKILL" in l and "takes over its socket and queue" in l
               for l in server.lines)
    assert not any("kernel dropped" in l for l in server.lines)


def test_pid_file_written_and_removed(record_dir):
    pid_file = os.path.join(record_dir, "serve.pid")
    server = Server("flaky:on_packet", "--pid-file", pid_file, record_dir=record_dir)
    server.wait_for("serving")
    with open(pid_file) as f:
        assert int(f.read()) == server.proc.pid
    assert server.stop() == 0
    assert not os.path.exists(pid_file)


def test_unwritable_pid_file_is_a_clear_error(record_dir):
    server = Server("flaky:on_packet", "--pid-file", "/proc/no/such/dir/serve.pid",
                    record_dir=record_dir)
    assert server.proc.wait(DEADLINE) == 2
    server.stop()
    assert "cannot write pid file" in server.lines[-1]


@pytest.mark.parametrize("args, words", [
    (["--workers", "0"], "--workers"),
    (["--min-size", "10", "--max-size", "2"], "must not exceed"),
    (["--handoff", "/tmp"], "closed to others (mode 0700)"),
    (["--graceful-timeout", "0"], "--graceful-timeout must be positive"),
    (["--timeout", "-1"], "--timeout must be 0 (never) or positive"),
    (["--timeout", "inf"], "--timeout must be 0 (never) or positive"),
    (["--max-packets", "-1"], "--max-packets must be at least 1"),
    (["--max-packets", "5", "--max-packets-jitter", "-1"], "--max-packets-jitter must be 0"),
    (["--user", "no-such-user-here"], "--user: no user 'no-such-user-here'"),
    (["--steer", "spread", "--shared"], "needs a socket per worker, not --shared"),
    (["--steer", "cpu", "--workers", str(len(os.sched_getaffinity(0)) + 1)], "CPU(s)"),
    (["--user", "nobody", "--group", "no-such-group-here"], "--group: no group"),
    (["--group", "nogroup"], "--group needs --user: without it the workers would keep root"),
    (["--rcvbuf", "-1"], "--rcvbuf must be a positive int"),
    (["--shared", "--takeover", "/proc/no/such/dir"], "--takeover /proc/no/such/dir: no such"),
    (["--shared", "--takeover", "{record_dir}/run"], "no handoff at"),
    (["--pid-file", "{record_dir}"], "is a directory"),
])
def test_impossible_serve_options(record_dir, args, words):
    args = [a.format(record_dir=record_dir) for a in args]
    os.makedirs(os.path.join(record_dir, "run"), mode=0o700)  # a --handoff nobody serves
    server = Server("flaky:on_packet", *args, record_dir=record_dir)
    assert server.proc.wait(DEADLINE) == 2
    server.stop()
    assert words in server.lines[-1]
    assert not os.path.exists("/proc/no/such/dir")
    # Nothing left behind: no stray pid file beside a --pid-file that was refused.
    assert not [n for n in os.listdir(os.path.dirname(record_dir)) if n.startswith(".udp-reader-")]


def test_pid_file_replaces_a_planted_link_and_never_follows_it(record_dir):
    victim = os.path.join(record_dir, "victim")
    with open(victim, "w") as f:
        f.write("precious\n")
    pid_file = os.path.join(record_dir, "serve.pid")
    os.symlink(victim, pid_file)
    os.symlink(victim, pid_file + ".tmp")  # the name the old code wrote through
    server = Server("flaky:on_packet", "--pid-file", pid_file, record_dir=record_dir)
    server.wait_for("serving")
    assert not os.path.islink(pid_file)
    with open(pid_file) as f:
        assert int(f.read()) == server.proc.pid
    assert server.stop() == 0
    with open(victim) as f:
        assert f.read() == "precious\n"
    assert not os.path.exists(pid_file)


def test_kernel_drops_are_logged_while_they_happen(record_dir):
    # A small buffer and a handler asleep: the queue overflows while the
    # worker is stuck, and the master says so then, not at the stop.
    server = Server("flaky:on_packet", "--rcvbuf", "65536", record_dir=record_dir)
    server.wait_for("serving")
    send(("127.0.0.1", server.port), [b"sleep"] + [b"x" * 100] * 2000)
    server.wait_for("the kernel dropped")
    line = next(l for l in server.lines if "the kernel dropped" in l)
    assert "socket of slot 0 (worker " in line and "receive queue was full" in line
    assert server.proc.poll() is None
    server.proc.send_signal(signal.SIGQUIT)  # fast: do not wait for the sleeper
    assert server.proc.wait(DEADLINE) == 0


def test_a_second_interrupt_makes_a_graceful_stop_fast(record_dir):
    server = Server("flaky:on_packet", record_dir=record_dir)
    server.wait_for("serving")
    send(("127.0.0.1", server.port), [b"sleep"])
    time.sleep(0.2)
    server.proc.send_signal(signal.SIGINT)
    server.wait_for("graceful stop")
    server.proc.send_signal(signal.SIGINT)
    server.wait_for("fast stop")
    # The handler sleeps a minute and the graceful timeout is 30 s: only the
    # fast stop ends this within the deadline.
    assert server.proc.wait(DEADLINE) == 0
    assert any("did not leave within 5 s" in l for l in server.lines)


def test_changing_user_needs_a_root_master():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no exec, so root's private interpreter is no obstacle
        try:
            os.setgid(65534)
            os.setuid(65534)
            privileges.resolve("nobody", None)
            outcome = "resolved"
        except ValueError as e:
            outcome = str(e)
        os.write(write_end, outcome.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        outcome = f.read()
    os.waitpid(pid, 0)
    assert outcome == "--user and --group need a master running as root (this one runs as uid 65534)"
