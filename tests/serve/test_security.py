"""What a stranger's datagrams, a compromised handler or another local user
can and cannot do to a server: each test is an attack, made for real on
loopback, and what must hold against it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, List, Optional


from conftest import DEADLINE, NOBODY, SANITIZED, STARTED, free_port, root_only
from udp_reader.serve import statusfile



def serving_pids(pid_file: str) -> Optional[tuple]:
    """(master pid, sorted worker pids) once every slot of the master named
    by `pid_file` has one worker, serving; else None."""
    try:
        snapshot = statusfile.read(pid_file)
    except (OSError, ValueError):
        return None
    workers = [w for s in snapshot["slots"] for w in s["workers"]]
    if len(workers) != snapshot["workers"] or any(w["state"] != "serving" for w in workers):
        return None
    return snapshot["pid"], sorted(w["pid"] for w in workers)


def wait_until(what: Callable, fail_early: Callable[[], bool] = lambda: False):
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline and not fail_early():
        value = what()
        if value:
            return value
        time.sleep(0.05)
    return None


class Master:
    """A serve master known by its pid, which may change on USR2."""

    def __init__(self, pid_file: str) -> None:
        self.pid_file = pid_file

    def stop(self) -> None:
        try:
            with open(self.pid_file) as f:
                pid = int(f.read())
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            return
        wait_until(lambda: not os.path.exists(f"/proc/{pid}"))


PLANTED = """import os
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ran-as"), "a") as f:
    f.write(f"{os.getuid()}\\n")
"""


@root_only
def test_a_module_planted_by_the_worker_account_never_runs_as_root(tmp_path):
    # The handler's directory (the master's working directory) and a
    # PYTHONPATH entry are both writable by nobody, the --user account. A
    # compromised handler plants json.py in each; the workers a HUP starts
    # and the master a USR2 starts must not run it as root.
    handler_dir, path_dir = tempfile.mkdtemp(), tempfile.mkdtemp()
    for d in (handler_dir, path_dir):
        os.chmod(d, 0o777)
    with open(os.path.join(handler_dir, "innocent.py"), "w") as f:
        f.write("def on_packet(packet):\n    return None\n")
    pid_file = str(tmp_path / "serve.pid")
    records = [os.path.join(d, "ran-as") for d in (handler_dir, path_dir)]

    def ran_as() -> List[int]:
        return [int(line) for r in records if os.path.exists(r) for line in open(r)]

    proc = subprocess.Popen(
        [sys.executable, "-m", "udp_reader", "serve", "innocent:on_packet",
         "--bind", f"127.0.0.1:{free_port()}", "--workers", "2", "--user", "nobody",
         "--pid-file", pid_file],
        cwd=handler_dir, env=dict(os.environ, PYTHONPATH=path_dir))
    master = Master(pid_file)
    STARTED.append(master)
    first = wait_until(lambda: serving_pids(pid_file))
    assert first, "the master never served"
    assert first[0] == proc.pid
    for d in (handler_dir, path_dir):
        with open(os.path.join(d, "json.py"), "w") as f:
            f.write(PLANTED)
        os.chown(os.path.join(d, "json.py"), NOBODY, NOBODY)

    proc.send_signal(signal.SIGHUP)
    rooted = lambda: 0 in ran_as()  # noqa: E731
    after_hup = wait_until(lambda: (s := serving_pids(pid_file)) and
                           not set(s[1]) & set(first[1]) and s, rooted)
    assert 0 not in ran_as(), "a planted module ran as root in a new worker"
    assert after_hup, "the workers a HUP started never served"

    proc.send_signal(signal.SIGUSR2)
    after_usr2 = wait_until(lambda: (s := serving_pids(pid_file)) and s[0] != proc.pid and s,
                            rooted)
    assert 0 not in ran_as(), "a planted module ran as root in the new master"
    assert after_usr2, "the master a USR2 started never served"
    assert proc.wait(DEADLINE) == 0
    master.stop()
    assert set(ran_as()) <= {NOBODY}


CHATTY = """import fcntl, os, stat

def worker_start():
    # Find the status pipe (the only pipe opened for writing past stderr)
    # and write {junk} MiB to it without a newline, then one.
    for fd in map(int, os.listdir("/proc/self/fd")):
        try:
            if (fd > 2 and stat.S_ISFIFO(os.fstat(fd).st_mode)
                    and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY):
                status = fd
        except OSError:
            pass
    block = b"x" * (1 << 20)
    for _ in range({junk}):
        os.write(status, block)
    os.write(status, b"\\n")

def on_packet(packet):
    return None
"""


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def test_a_status_line_without_end_costs_the_master_a_bounded_buffer(tmp_path):
    # A worker's handler writes 256 MiB to the status pipe without a
    # newline: the master drops that line, says so, and serves on.
    junk = 256
    (tmp_path / "chatty.py").write_text(CHATTY.format(junk=junk))
    pid_file = str(tmp_path / "serve.pid")
    log = open(tmp_path / "log", "w+")
    env = dict(os.environ)
    if SANITIZED:  # its quarantine would keep every freed chunk: measure the master's own
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "udp_reader", "serve", "chatty:on_packet",
         "--bind", f"127.0.0.1:{free_port()}", "--pid-file", pid_file],
        cwd=tmp_path, stderr=log, env=env)
    STARTED.append(Master(pid_file))
    assert wait_until(lambda: serving_pids(pid_file)), "the master never served"
    assert peak_rss(proc.pid) < (junk << 20) // 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(DEADLINE) == 0
    log.seek(0)
    assert "sent a status line longer than 1048576 bytes; dropped it (1 so far)" in log.read()
