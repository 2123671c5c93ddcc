"""A handler's state handed from worker to worker under `udp-reader serve`,
as real processes on loopback: a count per source (handlers/stateful.py)
through HUP, USR2, --max-packets recycling, TTIN and TTOU and a SIGKILLed
worker, counted exactly. The test waits on what the master reports (its
status file) and on the state files themselves, never on log wording."""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import time

from harness import settled, wait_until
from server import Server
from udp_reader.serve import state


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
    wait_until(lambda: sum(max(0, checkpointed(state_dir, i)) for i in range(slots))
               + sum(flushed(out).values()) == sum(traffic.sent.values()))


def test_counts_survive_restarts_scaling_recycling_and_a_killed_worker(tmp_path):
    out, state_dir = tmp_path / "out", tmp_path / "state"
    out.mkdir()
    state_dir.mkdir()
    server = Server("stateful:on_packet", "--max-packets", "300", "--state-dir", str(state_dir),
                    record_dir=str(tmp_path), env={"STATEFUL_OUT": str(out)})
    traffic = Traffic(server.port)
    try:
        server.status(settled(1))
        traffic.round()
        counted(traffic, str(state_dir), str(out), 1)
        for restarts in (1, 2, 3):  # HUP; --max-packets recycles on the way
            server.master.send_signal(signal.SIGHUP)
            server.status(settled(1, restarts=restarts))
            traffic.round()
            counted(traffic, str(state_dir), str(out), 1)
        server.master.send_signal(signal.SIGTTIN)
        server.status(settled(2))
        traffic.round()
        counted(traffic, str(state_dir), str(out), 2)
        server.master.send_signal(signal.SIGTTOU)  # slot 1 drains and flushes: nobody follows it
        server.status(settled(1))
        traffic.round()
        # Killed once its checkpoint holds all it counted: its replacement
        # starts from there. (Counted after its last checkpoint: lost.)
        counted(traffic, str(state_dir), str(out), 1)
        killed = server.status(settled(1))["slots"][0]["workers"][0]["pid"]
        os.kill(killed, signal.SIGKILL)
        server.status(lambda s: s["slots"][0]["state"] == "serving"
                      and s["slots"][0]["workers"][0]["pid"] != killed)
        traffic.round()
        counted(traffic, str(state_dir), str(out), 1)
        server.upgrade()
        server.status(settled(1))
        traffic.round()
        counted(traffic, str(state_dir), str(out), 1)
    finally:
        server.stop()
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
    server = Server("stateful:on_packet", record_dir=str(tmp_path),
                    env={"STATEFUL_OUT": str(out), "TMPDIR": str(made),
                         "STATEFUL_FAIL_ONCE": str(fail)})
    traffic = Traffic(server.port)
    try:
        server.status(settled(1))
        [state_dir] = os.listdir(made)
        traffic.round()
        counted(traffic, str(made / state_dir), str(out), 1)
        fail.touch()
        server.master.send_signal(signal.SIGUSR2)
        wait_until(lambda: not fail.exists())  # the new master's worker failed
        failed_at = time.time()
        server.status(lambda s: s["time"] > failed_at and not s["others"])
        assert os.listdir(made) == [state_dir]
        server.master.send_signal(signal.SIGHUP)  # the state still passes from worker to worker
        server.status(settled(1, restarts=1))
        traffic.round()
    finally:
        server.stop()
    assert dict(flushed(str(out))) == dict(traffic.sent)
    assert os.listdir(made) == []
