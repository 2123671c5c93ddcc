"""`udp-reader status --pid-file FILE` against a real `udp-reader serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import DEADLINE, send
from server import Server, handled, serving



def status(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "udp_reader", "status", *args],
                          capture_output=True, text=True, timeout=DEADLINE)


def test_status_of_a_running_server_then_of_a_stopped_one(record_dir):
    n = 300
    pid_file = os.path.join(record_dir, "serve.pid")
    server = Server("recorder:on_packet", "--workers", "2", "--pid-file", pid_file,
                    record_dir=record_dir)
    try:
        workers = {str(pid): str(slot) for pid, slot in server.workers(serving(2))}
        assert len(workers) == 2
        for flow in range(10):
            send(("127.0.0.1", server.port),
                 [i.to_bytes(8, "little") for i in range(flow, n, 10)])
        deadline = time.monotonic() + DEADLINE
        while handled(record_dir) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert handled(record_dir) == n
        # The master publishes what its workers report about once a second.
        while time.monotonic() < deadline:
            shown = status("--pid-file", pid_file, "--json")
            assert shown.returncode == 0, shown.stderr
            snapshot = json.loads(shown.stdout)
            if sum(s["totals"].get("delivered", 0) for s in snapshot["slots"]) >= n:
                break
            time.sleep(0.1)
        assert snapshot["pid"] == server.proc.pid
        assert snapshot["address"] == f"127.0.0.1:{server.port}"
        assert sum(s["totals"]["received"] for s in snapshot["slots"]) == n
        assert sum(s["totals"]["delivered"] for s in snapshot["slots"]) == n
        assert {str(w["pid"]): str(s["slot"]) for s in snapshot["slots"]
                for w in s["workers"]} == workers

        table = status("--pid-file", pid_file)
        assert table.returncode == 0 and table.stderr == ""
        lines = table.stdout.splitlines()
        assert lines[0] == (f"master {server.proc.pid} running on 127.0.0.1:{server.port}: "
                            "2 worker(s)")
        assert lines[1].split() == ["SLOT", "PID", "STATE", "AGE", "RECEIVED", "DELIVERED",
                                    "DROPS", "QUEUED"]
        rows = [line.split() for line in lines[2:4]]
        assert {(r[0], r[1], r[2]) for r in rows} == {
            (slot, pid, "serving") for pid, slot in workers.items()}
        assert sum(int(r[4].replace(",", "")) for r in rows) == n  # received
        assert sum(int(r[5].replace(",", "")) for r in rows) == n  # delivered
        assert [r[6] for r in rows] == ["0", "0"]                  # kernel drops
        assert f"since start: {n} received, {n} delivered, 0 filtered" in table.stdout
        assert "2 worker(s) started, 0 rolling restart(s)" in table.stdout
    finally:
        code = server.stop()
    assert code == 0
    gone = status("--pid-file", pid_file)
    assert gone.returncode == 1 and gone.stdout == ""
    assert gone.stderr == f"udp-reader: error: not running: no pid file {pid_file}\n"


def test_status_of_a_stale_pid_file_is_not_running(record_dir):
    pid_file = os.path.join(record_dir, "serve.pid")
    with open(pid_file, "w") as f:
        f.write("4194305\n")  # above the largest pid_max: never a process
    shown = status("--pid-file", pid_file)
    assert shown.returncode == 1 and shown.stdout == ""
    assert shown.stderr.splitlines() == [
        f"udp-reader: error: not running: {pid_file} names pid 4194305, which is not "
        "running (a stale pid file)"]


def test_status_of_a_pid_reused_by_another_program_is_not_running(record_dir):
    pid_file = os.path.join(record_dir, "serve.pid")
    with open(pid_file, "w") as f:
        f.write(f"{os.getpid()}\n")  # alive, but this test, not a master
    with open(pid_file + ".json", "w") as f:
        f.write('{"pid": 1, "slots": []}')  # the stale status of the master that was
    shown = status("--pid-file", pid_file)
    assert shown.returncode == 1
    assert shown.stderr.splitlines() == [
        f"udp-reader: error: not running: {pid_file} names pid {os.getpid()}, which is not "
        "a udp-reader serve master (a stale pid file, its pid reused)"]


@pytest.fixture
def master():
    """The pid of a stand-in for a master: a process whose command line
    says `udp_reader serve`, as `status` checks before it trusts a pid."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                             "udp_reader", "serve"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("content, args, words", [
    ("not a pid\n", [], "does not hold a pid"),
    (None, ["--pid-file", "/proc"], "cannot read /proc: Is a directory"),
    ("{pid}\n", [], "is not a status file"),
    (None, [], "the following arguments are required: --pid-file"),
])
def test_status_of_unreadable_files_is_one_line_and_exit_2(master, record_dir, content, args, words):
    pid_file = os.path.join(record_dir, "serve.pid")
    if content is not None:
        with open(pid_file, "w") as f:
            f.write(content.format(pid=master))
        with open(pid_file + ".json", "w") as f:
            f.write("{truncated")
        args = ["--pid-file", pid_file]
    shown = status(*args)
    assert shown.returncode == 2 and shown.stdout == ""
    assert len(shown.stderr.splitlines()) == 1
    assert shown.stderr.startswith("udp-reader: error: ") and words in shown.stderr


# What a terminal obeys or that reorders text: ESC (a title, colours, a
# clear), BEL, C1 CSI/OSC/ST/NEL, DEL, line and paragraph separators, a
# right-to-left override and an isolate.
HOSTILE = "\x1b]0;owned\x07\x1b[2J\x9b31m\x9d0;t\x9c\x85\x7f\u2028\u2029\u202e\u2066"


def test_status_escapes_what_a_planted_status_file_says(master, record_dir):
    pid_file = os.path.join(record_dir, "serve.pid")
    with open(pid_file, "w") as f:
        f.write(f"{master}\n")
    snapshot = {"pid": master, "phase": HOSTILE, "address": HOSTILE, "workers": HOSTILE,
                "slots": [{"slot": HOSTILE, "state": HOSTILE,
                           "workers": [{"pid": HOSTILE, "state": HOSTILE}]}]}
    with open(pid_file + ".json", "w") as f:
        json.dump(snapshot, f, ensure_ascii=False)
    for args in ([], ["--json"]):
        shown = status("--pid-file", pid_file, *args)
        assert shown.returncode == 0, shown.stderr
        assert all(c.isprintable() for line in shown.stdout.splitlines() for c in line)
    assert "\\x1b]0;owned\\x07" in status("--pid-file", pid_file).stdout
    assert json.loads(shown.stdout)["phase"] == HOSTILE


@pytest.mark.parametrize("plant, words", [
    (lambda p: os.symlink("/dev/zero", p), "is not a regular file"),
    (lambda p: os.mkfifo(p), "is not a regular file"),
    (lambda p: open(p, "wb").truncate(64 << 20), "is larger than 16,777,216 bytes"),
])
def test_status_refuses_a_status_file_that_no_master_wrote(master, record_dir, plant, words):
    pid_file = os.path.join(record_dir, "serve.pid")
    with open(pid_file, "w") as f:
        f.write(f"{master}\n")
    plant(pid_file + ".json")
    shown = status("--pid-file", pid_file)
    assert shown.returncode == 2 and shown.stdout == ""
    assert shown.stderr.splitlines() == [f"udp-reader: error: {pid_file}.json {words}"
                                         + ("" if "larger" not in words else
                                            ": not a file udp-reader wrote")]


def test_status_refuses_a_pid_file_that_is_a_device(record_dir):
    pid_file = os.path.join(record_dir, "serve.pid")
    os.symlink("/dev/zero", pid_file)
    shown = status("--pid-file", pid_file)
    assert shown.returncode == 2
    assert shown.stderr.splitlines() == [f"udp-reader: error: {pid_file} is not a regular file"]
