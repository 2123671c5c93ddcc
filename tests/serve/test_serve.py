"""`udp-reader serve` failure handling, as real processes on loopback."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from conftest import DEADLINE, send
from server import Server, recorded, serving
from udp_reader.serve import privileges


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
    server.status()
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
    server.status()
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
    server.status()
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
    server.status()
    os.unlink(module)  # the deploy went wrong: the handler is gone
    server.proc.send_signal(signal.SIGHUP)
    server.status(lambda s: s["events"].get("restarts_aborted") == 1)
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
    assert any("rolling restart aborted" in l for l in server.lines)
    # Aborted is not complete: never told as a restart that happened.
    assert not any("rolling restart complete" in l for l in server.lines)
    # Every line of the master's log says when it happened.
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} udp-reader", l)
               for l in server.lines if "udp-reader" in l), server.lines


def test_killed_worker_is_replaced_on_the_same_socket(record_dir):
    server = Server("flaky:on_packet", record_dir=record_dir)
    [(pid, _)] = server.workers(serving(1))
    os.kill(pid, signal.SIGKILL)
    [(new, _)] = server.workers(lambda s: s["events"].get("exits_crashed") == 1 and serving(1)(s))
    assert new != pid
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
    server.status()
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
    server.status()
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
    server.status()
    send(("127.0.0.1", server.port), [b"sleep"] + [b"x" * 100] * 2000)
    server.status(lambda s: s["kernel_drops"] > 0)
    assert server.proc.poll() is None
    server.proc.send_signal(signal.SIGQUIT)  # fast: do not wait for the sleeper
    assert server.stop() == 0
    told = [i for i, l in enumerate(server.lines) if "the kernel dropped" in l]
    assert told, server.lines
    line = server.lines[told[0]]
    assert "socket of slot 0 (worker " in line and "receive queue was full" in line
    # Told while it happened: before the stop, not in its summary.
    stopped = next(i for i, l in enumerate(server.lines) if "fast stop" in l)
    assert told[0] < stopped


def test_a_second_interrupt_makes_a_graceful_stop_fast(record_dir):
    server = Server("flaky:on_packet", record_dir=record_dir)
    server.status()
    send(("127.0.0.1", server.port), [b"sleep"])
    server.status(lambda s: any(w["stats"].get("busy_for", 0) > 0
                                for x in s["slots"] for w in x["workers"]))  # asleep
    server.proc.send_signal(signal.SIGINT)
    server.status(lambda s: s["phase"] == "stopping")
    server.proc.send_signal(signal.SIGINT)
    # The handler sleeps a minute and the graceful timeout is 30 s: only the
    # fast stop ends this within the deadline.
    assert server.proc.wait(DEADLINE) == 0
    assert server.stop() == 0
    graceful = next(i for i, l in enumerate(server.lines) if "graceful stop" in l)
    assert any("fast stop" in l for l in server.lines[graceful:]), server.lines
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
