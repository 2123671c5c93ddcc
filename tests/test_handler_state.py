"""A handler's state handed from worker to worker under `udp-reader serve`,
as real processes on loopback: a count per source (tests/stateful.py)
through HUP, USR2, --max-packets recycling, TTIN and TTOU and a SIGKILLed
worker, counted exactly. The test waits on what the master reports (its
status file) and on the state files themselves, never on log wording."""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Dict, Optional

from conftest import DEADLINE
from udp_reader.serve import state

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait(what: str, ready: Callable[[], object]) -> object:
    """ready()'s first true value, checked until DEADLINE."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        found = ready()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"never: {what}")


class Serve:
    """A `udp-reader serve` and the master now serving (a USR2 replaces it)."""

    def __init__(self, tmp: str, handler: str, *args: str, env: Dict[str, str]) -> None:
        self.port = free_port()
        self.pid_file = os.path.join(tmp, "serve.pid")
        self.log = open(os.path.join(tmp, "serve.log"), "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "udp_reader", "serve", handler,
             "--bind", f"127.0.0.1:{self.port}", "--pid-file", self.pid_file, *args],
            cwd=HERE, env=dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, EXAMPLES]), **env),
            stderr=self.log)
        self.master = self.proc.pid

    def snapshot(self, until: Callable[[dict], bool]) -> dict:
        """The current master's status file once `until` holds for it."""
        def found() -> Optional[dict]:
            try:
                with open(self.pid_file + ".json") as f:
                    snap = json.load(f)
            except (FileNotFoundError, ValueError):
                return None
            return snap if snap.get("pid") == self.master and until(snap) else None
        return wait(f"a snapshot of {self.master} that holds", found)  # type: ignore[return-value]

    def settled(self, workers: int, **events: int) -> dict:
        """Each of `workers` slots read by one worker, nothing draining, no
        other master, and at least `events`."""
        return self.snapshot(lambda s: (
            s["phase"] == "running" and len(s["slots"]) == workers and not s["others"]
            and all(x["state"] == "serving" and len(x["workers"]) == 1 for x in s["slots"])
            and all(s["events"].get(k, 0) >= n for k, n in events.items())))

    def signal(self, sig: int) -> None:
        os.kill(self.master, sig)

    def upgrade(self) -> None:
        """USR2: the new master serves, the old one has left."""
        old = self.master
        self.signal(signal.SIGUSR2)
        assert self.proc.wait(DEADLINE) == 0
        self.master = int(wait("a new pid file",  # type: ignore[arg-type]
                               lambda: self._pid() not in (None, old) and self._pid()))

    def _pid(self) -> Optional[int]:
        try:
            with open(self.pid_file) as f:
                return int(f.read())
        except (FileNotFoundError, ValueError):
            return None

    def stop(self) -> None:
        """TERM the current master and wait until it is gone."""
        if os.path.exists(f"/proc/{self.master}"):
            self.signal(signal.SIGTERM)
        wait("the master gone", lambda: not os.path.exists(self.pid_file))
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


SOURCES = [f"src{i:05d}".encode() for i in range(4)]


class Traffic:
    """Rounds of datagrams, a payload per source, and what was sent."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent: collections.Counter = collections.Counter()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def round(self, per_source: int = 50) -> int:
        for _ in range(per_source):
            for source in SOURCES:
                self.sock.sendto(source, ("127.0.0.1", self.port))
                self.sent[source.hex()] += 1
        return sum(self.sent.values())


def flushed(out: str) -> collections.Counter:
    """Every count the workers that left with nobody to follow wrote."""
    total: collections.Counter = collections.Counter()
    for name in os.listdir(out):
        with open(os.path.join(out, name)) as f:
            for line in f:
                total.update(json.loads(line))
    return total


def checkpointed(state_dir: str, slot: int) -> int:
    try:
        with open(state.path_for(state_dir, slot), "rb") as f:
            return sum(json.loads(state.unframe(f.read()).payload).values())
    except (FileNotFoundError, ValueError):
        return -1


def counted(traffic: "Traffic", state_dir: str, out: str, slots: int) -> None:
    """Wait until the slots' checkpoints and what was flushed hold all sent."""
    wait(f"all {sum(traffic.sent.values())} sent counted", lambda: sum(
        max(0, checkpointed(state_dir, i)) for i in range(slots))
        + sum(flushed(out).values()) == sum(traffic.sent.values()))


def test_counts_survive_restarts_scaling_recycling_and_a_killed_worker(tmp_path):
    out, state_dir = tmp_path / "out", tmp_path / "state"
    out.mkdir()
    state_dir.mkdir()
    serve = Serve(str(tmp_path), "stateful:on_packet", "--max-packets", "300",
                  "--state-dir", str(state_dir), env={"STATEFUL_OUT": str(out)})
    traffic = Traffic(serve.port)
    try:
        serve.settled(1)
        traffic.round()
        counted(traffic, str(state_dir), str(out), 1)
        for restarts in (1, 2, 3):  # HUP; --max-packets recycles on the way
            serve.signal(signal.SIGHUP)
            serve.settled(1, restarts=restarts)
            traffic.round()
            counted(traffic, str(state_dir), str(out), 1)
        serve.signal(signal.SIGTTIN)
        serve.settled(2)
        traffic.round()
        counted(traffic, str(state_dir), str(out), 2)
        serve.signal(signal.SIGTTOU)  # slot 1 drains and flushes: nobody follows it
        serve.settled(1)
        traffic.round()
        # Killed once its checkpoint holds all it counted: its replacement
        # starts from there. (Counted after its last checkpoint: lost.)
        counted(traffic, str(state_dir), str(out), 1)
        killed = serve.settled(1)["slots"][0]["workers"][0]["pid"]
        os.kill(killed, signal.SIGKILL)
        serve.snapshot(lambda s: s["slots"][0]["state"] == "serving"
                       and s["slots"][0]["workers"][0]["pid"] != killed)
        traffic.round()
        counted(traffic, str(state_dir), str(out), 1)
        serve.upgrade()
        serve.settled(1)
        traffic.round()
        counted(traffic, str(state_dir), str(out), 1)
    finally:
        serve.stop()
    assert dict(flushed(str(out))) == dict(traffic.sent)
    # --state-dir outlives the stop: what the last worker held after its flush.
    assert checkpointed(str(state_dir), 0) == 0
    assert sorted(os.listdir(state_dir)) == ["slot-0.lock", "slot-0.state"]  # slot 1 forgotten


def test_a_new_master_that_fails_leaves_the_state_to_the_old_one(tmp_path):
    """USR2 whose new master cannot start its workers: it exits, and the
    state directory it was handed (the old master's own) is still there."""
    out, made, fail = tmp_path / "out", tmp_path / "tmp", tmp_path / "fail"
    out.mkdir()
    made.mkdir()
    serve = Serve(str(tmp_path), "stateful:on_packet",
                  env={"STATEFUL_OUT": str(out), "TMPDIR": str(made),
                       "STATEFUL_FAIL_ONCE": str(fail)})
    traffic = Traffic(serve.port)
    try:
        serve.settled(1)
        [state_dir] = os.listdir(made)
        traffic.round()
        counted(traffic, str(made / state_dir), str(out), 1)
        fail.touch()
        serve.signal(signal.SIGUSR2)
        wait("the new master's worker to fail", lambda: not fail.exists())
        failed_at = time.time()
        serve.snapshot(lambda s: s["time"] > failed_at and not s["others"])
        assert os.listdir(made) == [state_dir]
        serve.signal(signal.SIGHUP)  # the state still passes from worker to worker
        serve.settled(1, restarts=1)
        traffic.round()
    finally:
        serve.stop()
    assert dict(flushed(str(out))) == dict(traffic.sent)
    assert os.listdir(made) == []
