"""`udp-reader serve --forward`: the workers publish what they receive to a
real JetStream, with no handler; across a rolling restart (HUP) and the
final stop every datagram is in the stream exactly once, since each worker
waits for every acknowledgement before it lets its socket go."""

from __future__ import annotations

import re
import signal
import struct
import subprocess
import sys

from conftest import DEADLINE, send
from jetstream import jetstream  # noqa: F401 (fixture)
from server import Server, serving
from udp_reader.forward import unpack


def sequenced(first: int, count: int) -> list[bytes]:
    return [struct.pack("<Q", n) for n in range(first, first + count)]


def forwarded(snapshot: dict) -> int:
    """Datagrams the stream acknowledged, as the master's status tells."""
    return sum(x["totals"].get("forward_datagrams", 0) for x in snapshot["slots"])


def send_from_many_ports(port: int, payloads: list[bytes]) -> None:
    # A socket per few datagrams: SO_REUSEPORT spreads them over every worker.
    for at in range(0, len(payloads), 10):
        send(("127.0.0.1", port), payloads[at:at + 10])


def test_every_datagram_is_in_the_stream_once_across_hup_and_stop(jetstream, record_dir):
    jetstream.add_stream("UDP", ["udp.>"])
    server = Server(f"--forward={jetstream.url}/udp.in", "--workers", "2",
                    record_dir=record_dir)
    first = server.workers(serving(2))
    send_from_many_ports(server.port, sequenced(0, 1000))
    server.status(lambda s: forwarded(s) == 1000)  # acknowledged, as the workers report
    shown = subprocess.run([sys.executable, "-m", "udp_reader", "status", "--pid-file",
                            server.pid_file], capture_output=True, text=True, timeout=DEADLINE)
    assert re.search(r"^forwarded: .* acknowledged \(1,000 datagrams\), 0 re-sent, "
                     r"0 duplicate\(s\), 0 in flight$", shown.stdout, flags=re.M), shown.stdout
    server.master.send_signal(signal.SIGHUP)  # every worker replaced, one by one
    server.status(lambda s: s["events"].get("restarts", 0) >= 1 and serving(2)(s))
    assert not set(first) & set(server.workers())
    # Loopback queues a datagram before sendto returns: the stop finds
    # these in the sockets' queues, and the leaving workers publish them.
    send_from_many_ports(server.port, sequenced(1000, 1000))
    assert server.stop() == 0
    numbers = [struct.unpack("<Q", p.data)[0]
               for m in jetstream.messages("UDP") for p in unpack(m).batch]
    assert sorted(numbers) == list(range(2000))


def test_no_stream_for_the_subject_is_one_line_and_exit_2(jetstream):
    jetstream.add_stream("OTHER", ["other.>"])
    done = subprocess.run([sys.executable, "-m", "udp_reader", "serve", "--bind", "127.0.0.1:0",
                           "--forward", f"{jetstream.url}/udp.in"],
                          capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 2
    errors = [l for l in done.stderr.splitlines() if "error" in l]
    assert len(errors) == 1 and "no JetStream stream captures subject 'udp.in'" in errors[0]


def test_a_handler_and_forward_together_are_refused():
    done = subprocess.run([sys.executable, "-m", "udp_reader", "serve", "mod:fn", "--bind",
                           "127.0.0.1:0", "--forward", "nats://127.0.0.1:4222/udp"],
                          capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 2
    assert "--forward publishes what the workers receive: give no handler" in done.stderr
