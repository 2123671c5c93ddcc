"""The publisher against a real nats-server with JetStream: every batch is
one acknowledged message, the window of unacknowledged bytes holds, a
re-send after a lost acknowledgement is dropped by the stream as a
duplicate, and a stream that cannot be used is one line at start."""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import DEADLINE, send
from jetstream import JetStream, free_tcp_port, jetstream  # noqa: F401 (fixture)
from udp_reader import Reader
from udp_reader.forward import Publisher, TargetError, unpack


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"never {what} within {DEADLINE} s")
        time.sleep(0.01)


def test_each_batch_is_one_acknowledged_message_holding_its_datagrams(jetstream):
    jetstream.add_stream("UDP", ["udp.>"])
    sent = [f"datagram {i}".encode() for i in range(40)]
    with Reader("127.0.0.1:0", timestamps=True, batch_size=16) as reader, \
            Publisher(f"{jetstream.url}/udp.in") as out:
        port = reader.address[1]
        send(("127.0.0.1", port), sent)
        batches = 0
        while (batch := reader.receive_batch()) is not None:
            out.forward(batch, port)
            batches += 1
        assert out.flush(DEADLINE)
        stats = out.stats
    assert batches >= 3  # 40 datagrams, at most 16 a receive
    assert (stats.forwarded, stats.acknowledged, stats.in_flight) == (batches, batches, 0)
    assert stats.datagrams == len(sent) and stats.duplicates == 0
    got = [unpack(m) for m in jetstream.messages("UDP")]
    assert len(got) == batches
    assert [p.data for g in got for p in g.batch] == sent
    assert {int(p) for g in got for p in g.dst_port} == {port}


def test_message_ids_are_distinct_and_name_the_origin(jetstream):
    jetstream.add_stream("UDP", ["udp.>"])
    with Publisher(f"{jetstream.url}/udp.in", tag="slot3") as out:
        for i in range(5):
            out.publish(b"m%d" % i)
        origin = out.ids.origin

    async def ids():
        import nats
        nc = await nats.connect(jetstream.url)
        try:
            js = nc.jetstream()
            return [(await js.get_msg("UDP", seq)).headers["Nats-Msg-Id"] for seq in range(1, 6)]
        finally:
            await nc.close()
    got = asyncio.run(ids())
    assert got == [f"{origin}/{n}" for n in range(1, 6)]
    assert "/slot3/" in origin


def test_the_window_bounds_the_unacknowledged_bytes(jetstream):
    jetstream.add_stream("UDP", ["udp.>"])
    message = b"x" * 1000
    with Publisher(f"{jetstream.url}/udp.in", window=2500) as out:
        most = 0
        for _ in range(60):
            out.publish(message)
            most = max(most, out.stats.in_flight_bytes)
        assert out.flush(DEADLINE)
    assert 0 < most <= 2500
    assert len(jetstream.messages("UDP")) == 60


def test_a_resend_after_a_lost_acknowledgement_is_stored_once(jetstream):
    jetstream.add_stream("UDP", ["udp.>"])
    with Publisher(f"{jetstream.url}/udp.in", ack_timeout=0.3) as out:
        out.publish(b"first")
        assert out.flush(DEADLINE)
        jetstream.pause()  # the server takes the bytes only when it resumes
        try:
            out.publish(b"second")
            out.publish(b"third")
            wait_for(lambda: out.stats.retried >= 2, "re-sent both")
        finally:
            jetstream.resume()
        assert out.flush(DEADLINE)
        stats = out.stats
    # The first sends and their re-sends all reach the server: each
    # message is stored once, every later copy acknowledged as a duplicate.
    assert jetstream.messages("UDP") == [b"first", b"second", b"third"]
    assert stats.duplicates >= 2 and stats.acknowledged == 3


def test_no_stream_for_the_subject_is_one_line_naming_it(jetstream):
    jetstream.add_stream("OTHER", ["other.>"])
    with pytest.raises(TargetError, match="no JetStream stream captures subject 'udp.in'"):
        Publisher(f"{jetstream.url}/udp.in")


def test_a_refused_connection_is_one_line_naming_the_server():
    port = free_tcp_port()  # nobody listens there
    with pytest.raises(TargetError, match=f"cannot connect to nats://127.0.0.1:{port}"):
        Publisher(f"nats://127.0.0.1:{port}/udp.in")


def test_a_batch_larger_than_the_server_takes_goes_as_several_messages(jetstream):
    jetstream.add_stream("UDP", ["udp.>"])
    sent = [bytes([i]) * 30000 for i in range(48)]  # 1.4 MB: past the 1 MiB a message holds
    with Reader("127.0.0.1:0", batch_size=64, max_size=30000, rcvbuf=8 << 20) as reader, \
            Publisher(f"{jetstream.url}/udp.in") as out:
        port = reader.address[1]
        send(("127.0.0.1", port), sent)
        batch = reader.receive_batch()
        assert batch is not None and len(batch) == len(sent)
        out.forward(batch, port)
        assert out.flush(DEADLINE)
        assert out.stats.retried == 0
    messages = jetstream.messages("UDP")
    assert len(messages) >= 2 and all(len(m) <= 1 << 20 for m in messages)
    assert [p.data for m in messages for p in unpack(m).batch] == sent
