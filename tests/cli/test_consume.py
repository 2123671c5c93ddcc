"""`udp-reader consume` prints what `listen` printed: the same datagrams,
sent from one socket, are shown by listen, then received again and
forwarded to a real JetStream, and consume prints the same lines (but for
the arrival time, which each receive takes itself)."""

from __future__ import annotations

import json
import re
import socket
import subprocess

import pytest

from conftest import DEADLINE
from jetstream import jetstream  # noqa: F401 (fixture)
from test_cli import COMMAND, start
from udp_reader import Reader
from udp_reader.forward import Publisher

PAYLOADS = [b"hello world\n", bytes(range(40)), b"", b"\xff" * 3, b"\0" * 100]
TTL, TOS = 33, 0xb9
CLOCK = re.compile(rb"^\d\d:\d\d:\d\d\.\d{6} ", flags=re.M)


def sender() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, TTL)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, TOS)
    return s


def forward(jetstream, port: int, s: socket.socket) -> None:
    """Receive PAYLOADS on `port` as serve's workers do and forward them."""
    with Reader(f"127.0.0.1:{port}", timestamps=True, ip_fields=True) as reader, \
            Publisher(f"{jetstream.url}/udp.in") as out:
        for p in PAYLOADS:
            s.sendto(p, ("127.0.0.1", port))
        taken = 0
        while taken < len(PAYLOADS):  # loopback queues before sendto returns
            batch = reader.receive_batch()
            assert batch is not None, "a datagram sent on loopback was not queued"
            out.forward(batch, port)
            taken += len(batch)
        assert out.flush(DEADLINE)


def consume(jetstream, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, "consume", jetstream.url, "--stream", "UDP", *args],
                          capture_output=True, timeout=DEADLINE)


def untimed(fmt: str, out: bytes):
    if fmt == "jsonl":
        return [{k: v for k, v in json.loads(line).items() if k != "time"}
                for line in out.splitlines()]
    return CLOCK.sub(b"", out)


@pytest.mark.parametrize("fmt", ["summary", "hex", "jsonl", "raw"])
def test_consume_prints_what_listen_printed(jetstream, fmt):
    jetstream.add_stream("UDP", ["udp.>"])
    with sender() as s:
        proc, (_, port) = start("listen", "127.0.0.1:0", "--count", str(len(PAYLOADS)),
                                "--format", fmt, "--status-interval", "0")
        for p in PAYLOADS:
            s.sendto(p, ("127.0.0.1", port))
        listened, err = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 0, err
        forward(jetstream, port, s)  # the port listen held, from the same source
    done = consume(jetstream, "--format", fmt, "--no-follow")
    assert done.returncode == 0, done.stderr
    assert untimed(fmt, done.stdout) == untimed(fmt, listened)
    assert len(done.stdout.splitlines()) >= (len(PAYLOADS) if fmt != "raw" else 1)


def test_count_stops_a_following_consume_after_n_datagrams(jetstream):
    jetstream.add_stream("UDP", ["udp.>"])
    with sender() as s, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hold:
        hold.bind(("127.0.0.1", 0))
        port = hold.getsockname()[1]
        hold.close()
        forward(jetstream, port, s)
    done = consume(jetstream, "--format", "raw", "--count", "3")  # follows, by default
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"".join(PAYLOADS[:3])


def test_no_follow_on_an_empty_stream_prints_nothing(jetstream):
    jetstream.add_stream("UDP", ["udp.>"])
    done = consume(jetstream, "--no-follow")
    assert (done.returncode, done.stdout) == (0, b"")


def test_no_such_stream_is_one_line_and_exit_2(jetstream):
    done = consume(jetstream, "--no-follow")
    assert done.returncode == 2
    assert done.stderr.decode().splitlines() == [
        f"udp-reader: error: no JetStream stream 'UDP' at {jetstream.url}"]


def frames(pcap: bytes) -> list:
    """A pcap file's frames without their times."""
    got, at = [], 24  # past the file header
    while at < len(pcap):
        length = int.from_bytes(pcap[at + 8:at + 12], "little")
        got.append(pcap[at + 8:at + 16 + length])
        at += 16 + length
    return got


def test_write_saves_the_frames_listen_saved(jetstream, tmp_path):
    jetstream.add_stream("UDP", ["udp.>"])
    listened, consumed = tmp_path / "listen.pcap", tmp_path / "consume.pcap"
    with sender() as s:
        proc, (_, port) = start("listen", "127.0.0.1:0", "--count", str(len(PAYLOADS)),
                                "--write", str(listened), "--status-interval", "0")
        for p in PAYLOADS:
            s.sendto(p, ("127.0.0.1", port))
        _, err = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 0, err
        forward(jetstream, port, s)
    done = consume(jetstream, "--write", str(consumed), "--no-follow")
    assert (done.returncode, done.stdout) == (0, b""), done.stderr
    assert len(frames(listened.read_bytes())) == len(PAYLOADS)
    assert frames(consumed.read_bytes()) == frames(listened.read_bytes())
    assert consumed.read_bytes()[:24] == listened.read_bytes()[:24]
