"""The Reader on real loopback sockets."""

import os
import random
import signal
import socket
import threading

import numpy as np
import pytest

from conftest import (DEADLINE, as_nobody, collect, lo_index, open_fds, rmem, root_only, send,
                      steer, wait_until_bound)
from udp_reader import Reader, ReaderOptions, listen, sockets
from udp_reader.options import DEFAULT_BATCH, DEFAULT_RCVBUF, MAX_PAYLOAD


def test_ipv4_packet_metadata(reader):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.sendto(b"hello", reader.address)
        (packet,) = collect(reader, 1, keep=lambda p: p)
        assert packet.data == b"hello"
        assert len(packet) == 5
        assert packet.src == s.getsockname()
        assert packet.dst == "127.0.0.1"
        assert packet.ifindex == lo_index()
        assert packet.family == socket.AF_INET
        assert bytes(memoryview(packet)) == b"hello"


def test_ipv6_packet_metadata():
    with Reader("[::1]:0") as reader, socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        s.sendto(b"six", reader.address)
        (packet,) = collect(reader, 1, keep=lambda p: p)
        assert (packet.data, packet.dst, packet.family) == (b"six", "::1", socket.AF_INET6)
        assert packet.src == s.getsockname()[:2]
        assert packet.ifindex == lo_index()


def test_dual_stack_reports_ipv4_as_plain_ipv4():
    with Reader("[::]:0") as reader:
        port = reader.address[1]
        send(("127.0.0.2", port), [b"four"], source="127.0.0.1")
        send(("::1", port), [b"six"], family=socket.AF_INET6)
        got = {p.data: (p.src[0], p.dst, p.family)
               for p in collect(reader, 2, keep=lambda p: p)}
    assert got[b"four"] == ("127.0.0.1", "127.0.0.2", socket.AF_INET)
    assert got[b"six"] == ("::1", "::1", socket.AF_INET6)


def test_wildcard_ipv4_socket_tells_destinations_apart():
    with Reader("0.0.0.0:0") as reader:
        port = reader.address[1]
        send(("127.0.0.1", port), [b"a"])
        send(("127.0.0.2", port), [b"b"])
        got = dict(collect(reader, 2, keep=lambda p: (p.data, p.dst)))
    assert got == {b"a": "127.0.0.1", b"b": "127.0.0.2"}


def test_length_boundaries():
    with Reader("127.0.0.1:0", min_size=10, max_size=100) as reader:
        sizes = [9, 10, 100, 101, 0, 65507]
        send(reader.address, [bytes([n % 251]) * n for n in sizes])
        send(reader.address, [b"end-marker"])
        got = collect(reader, 3, keep=len)
        stats = reader.stats
    assert got == [10, 100, 10]
    assert (stats.too_short, stats.too_long, stats.received) == (2, 2, 7)


def test_largest_datagram_delivered_whole():
    with Reader("127.0.0.1:0") as reader:
        payload = os.urandom(65507)
        send(reader.address, [payload])
        assert collect(reader, 1) == [payload]


def test_truncated_datagram_is_never_delivered_cut():
    # max_size smaller than the datagram: the kernel cuts it (MSG_TRUNC),
    # the engine counts it as too long.
    with Reader("127.0.0.1:0", max_size=64) as reader:
        send(reader.address, [b"x" * 65, b"y" * 64, b"z" * 3000])
        send(reader.address, [b"ok"])
        got = collect(reader, 2)
        assert got == [b"y" * 64, b"ok"]
        assert reader.stats.too_long == 2
        assert reader.stats.bytes == 65 + 64 + 3000 + 2


def test_zero_length_datagrams_are_packets():
    with Reader("127.0.0.1:0") as reader:
        send(reader.address, [b"", b"", b"x"])
        assert collect(reader, 3) == [b"", b"", b"x"]
    with Reader("127.0.0.1:0", min_size=1) as reader:
        send(reader.address, [b"", b"x"])
        assert collect(reader, 1) == [b"x"]
        assert reader.stats.too_short == 1


@pytest.mark.parametrize("batches", [False, True])
def test_random_payloads_arrive_intact_across_batches(batches):
    rng = random.Random(7)
    payloads = [rng.randbytes(rng.randrange(0, 1500)) for _ in range(2000)]
    with Reader("127.0.0.1:0", batch_size=16, rcvbuf=8 << 20) as reader:
        send(reader.address, payloads)
        got = collect(reader, len(payloads), batches=batches)
        assert reader.stats.batches >= len(payloads) // 16
    assert got == payloads


def test_batch_columns_agree_with_packets():
    with Reader("127.0.0.1:0") as reader, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        payloads = [bytes([i]) * (i + 1) for i in range(40)]
        for p in payloads:
            s.sendto(p, reader.address)
        checked = []

        def on_batch(batch):
            lengths, offsets, payload = batch.lengths, batch.offsets, batch.payload
            for i, packet in enumerate(batch):
                assert lengths[i] == len(packet)
                start = offsets[i]
                assert payload[start:start + lengths[i]].tobytes() == packet.data
                assert batch.ifindex[i] == packet.ifindex
                assert batch.src_port[i] == packet.src[1] == s.getsockname()[1]
                checked.append(packet.data)
            assert batch[-1].data == batch[len(batch) - 1].data
            with pytest.raises(IndexError):
                batch[len(batch)]
            if len(checked) >= len(payloads):
                reader.stop()

        reader.run_batches(on_batch)
    assert checked == payloads


def test_fixed_width_payload_view():
    with Reader("127.0.0.1:0") as reader:
        send(reader.address, [i.to_bytes(4, "little") + b"tail" for i in range(20)])
        sums = []

        def on_batch(batch):
            counters = batch.payloads(4).view("<u4")[:, 0]
            sums.append(int(counters.sum()))
            with pytest.raises(ValueError):
                batch.payloads(9)
            if sum(reader.stats[1:2]) >= 20:
                reader.stop()

        reader.run_batches(on_batch)
    assert sum(sums) == sum(range(20))


def test_kept_packets_and_views_never_change():
    with Reader("127.0.0.1:0", batch_size=4) as reader:
        kept = []

        def on_batch(batch):
            kept.append((batch, memoryview(batch[0]), batch.lengths, bytes(batch[0])))
            if reader.stats.delivered >= 40:
                reader.stop()

        send(reader.address, [bytes([i]) * (i + 1) for i in range(40)])
        reader.run_batches(on_batch)
        # Keep receiving different bytes into the same reader.
        send(reader.address, [b"\xff" * 200] * 40)
        collect(reader, 40, keep=lambda p: None)
    for batch, view, lengths, copy in kept:
        assert bytes(view) == copy
        assert list(lengths) == [len(p) for p in batch]
        assert all(set(p.data) == {p.data[0]} and len(p) == p.data[0] + 1 for p in batch)


class Guard:
    """Stops `reader` after DEADLINE if what a test waits for never comes,
    so a broken stop fails the test instead of hanging it."""

    def __init__(self, reader):
        self.fired = False
        self._timer = threading.Timer(DEADLINE, self._fire, (reader,))

    def _fire(self, reader):
        self.fired = True
        reader.stop()

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc_info):
        self._timer.cancel()


def test_stop_from_another_thread_without_traffic(reader):
    stopper = threading.Timer(0.2, reader.stop)
    with Guard(reader) as guard:
        stopper.start()
        reader.run(lambda p: None)
    assert not guard.fired
    assert reader.stats.received == 0


def test_stop_from_a_signal_handler(reader):
    calls = []

    def handler(*_):
        calls.append(True)
        reader.stop()

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        with Guard(reader) as guard:
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
            reader.run_batches(lambda b: None)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert calls and not guard.fired


def test_ctrl_c_raises_keyboard_interrupt(reader):
    with Guard(reader):
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt):
            reader.run(lambda p: None)


def test_stop_from_callback_keeps_the_rest_for_the_next_run(reader):
    send(reader.address, [b"%d" % i for i in range(10)])
    first = collect(reader, 3)
    assert first == [b"0", b"1", b"2"]
    assert collect(reader, 7) == [b"%d" % i for i in range(3, 10)]
    assert reader.stats.delivered == reader.stats.received == 10


def test_stop_before_run_returns_at_once(reader):
    reader.stop()
    reader.run(lambda p: None)
    threading.Timer(0.1, reader.stop).start()
    reader.run(lambda p: None)  # the first stop was used up


def test_callback_exception_propagates_and_reader_runs_again(reader):
    send(reader.address, [b"%d" % i for i in range(10)])
    seen = []

    def fragile(packet):
        seen.append(packet.data)
        if packet.data == b"4":
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        reader.run(fragile)
    stats = reader.stats
    assert stats.delivered == len(seen) == 5
    assert stats.received == 10
    assert collect(reader, 5) == [b"%d" % i for i in range(5, 10)]
    assert reader.stats.delivered == reader.stats.received == 10


def test_run_is_not_reentrant(reader):
    send(reader.address, [b"x"])
    errors = []

    def nested(packet):
        try:
            reader.run(lambda p: None)
        except RuntimeError as e:
            errors.append(e)
        reader.stop()

    reader.run(nested)
    assert len(errors) == 1


def test_two_readers_on_one_port_both_receive():
    with Reader("127.0.0.1:0") as a, Reader(a.address) as b:
        to_a, to_b = steer([a, b], 8)  # flows the kernel's hash spreads over both
        try:
            to_a[0].sendto(b"a", a.address)
            to_b[0].sendto(b"b", a.address)
            assert collect(a, 1) == [b"a"]
            assert collect(b, 1) == [b"b"]
        finally:
            for s in to_a + to_b:
                s.close()


def test_port_in_use_without_reuseport():
    with Reader("127.0.0.1:0", reuseport=False) as a:
        with pytest.raises(OSError, match="cannot bind"):
            Reader(a.address, reuseport=False)


@pytest.mark.parametrize("kwargs, words", [
    ({"min_size": 10, "max_size": 5}, "min_size"),
    ({"min_size": -1}, "min_size"),
    ({"max_size": 65536}, "max_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 1025}, "batch_size"),
    ({"rcvbuf": -5}, "rcvbuf"),
])
def test_impossible_options_raise_value_error(kwargs, words):
    before = open_fds()
    with pytest.raises(ValueError, match=words):
        Reader("127.0.0.1:0", **kwargs)
    assert open_fds() == before


def test_option_of_wrong_type_raises_type_error():
    with pytest.raises(TypeError, match="min_size"):
        Reader("127.0.0.1:0", min_size="10")


def test_no_descriptor_leak_over_many_cycles():
    before = open_fds()
    for _ in range(200):
        with Reader("127.0.0.1:0") as r:
            r.stop()
            r.run(lambda p: None)
    for _ in range(50):
        with pytest.raises(OSError):
            Reader("192.0.2.1:0")
    r = Reader("127.0.0.1:0")
    r.close()
    r.close()
    assert r.closed
    with pytest.raises(ValueError, match="closed"):
        r.run(lambda p: None)
    assert open_fds() == before


def test_close_from_callback_closes_after_run():
    reader = Reader("127.0.0.1:0")
    send(reader.address, [b"x"])
    reader.run(lambda p: reader.close())
    assert reader.closed


def test_from_socket_and_fileno_share_the_queue():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        send(sock.getsockname(), [b"one"])
        with Reader.from_socket(sock) as r:
            assert collect(r, 1) == [b"one"]
        send(sock.getsockname(), [b"two"])
        with Reader(fileno=os.dup(sock.fileno())) as r:
            assert collect(r, 1) == [b"two"]
        assert sock.fileno() >= 0  # still the caller's


def test_from_socket_refuses_tcp():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        with pytest.raises(ValueError, match="SOCK_DGRAM"):
            Reader.from_socket(sock)


def test_rcvbuf_is_set_and_reported():
    with Reader("127.0.0.1:0", rcvbuf=1 << 20) as r:
        assert r.rcvbuf >= 1 << 20


@root_only
def test_default_rcvbuf_rides_out_a_stall():
    with Reader("127.0.0.1:0") as r:
        assert r.rcvbuf >= 2 * DEFAULT_RCVBUF


@root_only
def test_a_socket_handed_in_keeps_a_larger_buffer_and_gets_at_least_the_default():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sockets.set_rcvbuf(sock, 2 * DEFAULT_RCVBUF)  # as systemd's ReceiveBuffer= would
        with Reader.from_socket(sock) as r:
            assert r.rcvbuf == 4 * DEFAULT_RCVBUF
        sockets.set_rcvbuf(sock, 1 << 20)
        with Reader(fileno=os.dup(sock.fileno())) as r:
            assert r.rcvbuf == 2 * DEFAULT_RCVBUF


def test_rcvbuf_none_leaves_the_buffer_alone():
    with Reader("127.0.0.1:0", rcvbuf=None) as r:
        assert r.rcvbuf == rmem("rmem_default")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 100_000)
        with Reader.from_socket(sock, rcvbuf=None) as r:
            assert r.rcvbuf == 200_000


@root_only
def test_default_rcvbuf_capped_by_the_kernel_warns_once():
    if rmem("rmem_max") >= DEFAULT_RCVBUF:
        pytest.skip("net.core.rmem_max does not cap the default here")

    def work():
        sizes = []
        for _ in range(2):
            with Reader("127.0.0.1:0") as r:
                sizes.append(r.rcvbuf)
        return {"sizes": sizes}

    result = as_nobody(work)
    assert result["sizes"] == [2 * rmem("rmem_max")] * 2
    (warning,) = result["warnings"]
    assert f"asked for {DEFAULT_RCVBUF} bytes" in warning
    assert "sysctl -w net.core.rmem_max=" in warning


def test_kernel_drops_equal_sent_minus_received():
    with Reader("127.0.0.1:0", rcvbuf=4096) as reader:
        sent = send(reader.address, [b"x" * 100] * 500)
        got = collect(reader, sent, keep=len, deadline=1.0)  # the queue is already full
        assert len(got) < sent
        # The drop count rides on the next packet that gets queued.
        sent += send(reader.address, [b"late"])
        got += collect(reader, 1, keep=len)
        stats = reader.stats
    assert stats.kernel_drops == sent - stats.received


def test_kernel_drops_of_a_burst_are_exact_before_another_datagram_arrives():
    # SO_RXQ_OVFL rides on the next datagram queued: a burst that ends in
    # drops must still be counted, at the time the stats are read.
    with Reader("127.0.0.1:0", rcvbuf=4096) as reader:
        sent = send(reader.address, [b"x" * 100] * 300)
        received = receive_all(reader)
        assert received < sent
        assert reader.stats.kernel_drops == sent - received
        assert reader.stats.kernel_drops == sockets.kernel_drops(reader.socket)


def receive_all(reader: Reader) -> int:
    """Receive everything queued now, without waiting; returns how many."""
    before = reader.stats.received
    while reader.receive_batch() is not None:
        pass
    return reader.stats.received - before


def test_a_queue_stamped_with_older_drop_counts_counts_only_new_drops():
    # Every queued datagram carries the drop count of when it was queued.
    # A reader taking over a queue whose datagrams predate later drops must
    # neither count those (they are not its own) nor wrap to ~2**32.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sockets.enable_metadata(sock)
        sockets.set_rcvbuf(sock, 4096)
        address = sock.getsockname()
        send(address, [b"x" * 100] * 200)  # fills the queue, then drops
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            while True:
                sock.recv(1)
        send(address, [b"x" * 100] * 200)  # queued with the first drop count; more dropped
        taken_over = sockets.kernel_drops(sock)
        with Reader.from_socket(sock, rcvbuf=None) as reader:
            assert receive_all(reader) > 0
            assert reader.stats.kernel_drops == 0
            sent = send(address, [b"x" * 100] * 200)
            received = receive_all(reader)
            sent += send(address, [b"late"])  # carries the count of the new drops
            received += receive_all(reader)
            drops = reader.stats.kernel_drops
        new = sockets.kernel_drops(sock) - taken_over
    assert 0 < new == sent - received
    assert drops == new


def test_counters_add_up():
    with Reader("127.0.0.1:0", min_size=2, max_size=10) as reader:
        send(reader.address, [b"", b"a", b"ab", b"abc", b"x" * 11, b"x" * 10] * 5)
        send(reader.address, [b"end"])
        collect(reader, 16)
        s = reader.stats
    assert s.received == 31
    assert s.delivered == 16
    assert s.too_short == 10 and s.too_long == 5
    assert s.received == s.delivered + s.too_short + s.too_long
    assert s.ctrunc == 0 and s.kernel_drops == 0
    assert s.bytes == 5 * (0 + 1 + 2 + 3 + 11 + 10) + 3


def test_listen_helper_calls_back_with_payloads():
    got = []

    class Done(Exception):
        pass

    def callback(payload):
        got.append(payload)
        if len(got) == 2:
            raise Done

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def sender():
        wait_until_bound(port)  # sent earlier, they would be refused
        send(("127.0.0.1", port), [b"a", b"b"])

    thread = threading.Thread(target=sender)
    thread.start()
    with pytest.raises(Done):
        listen(("127.0.0.1", port), callback)
    thread.join(DEADLINE)
    assert got == [b"a", b"b"]


def test_batch_records_are_read_only_numpy_views():
    with Reader("127.0.0.1:0") as reader:
        send(reader.address, [b"abc", b"de"])
        seen = []

        def on_batch(batch):
            rec = batch.records
            assert isinstance(rec, np.ndarray) and not rec.flags.writeable
            seen.extend(rec["length"].tolist())
            if len(seen) >= 2:
                reader.stop()

        reader.run_batches(on_batch)
    assert seen == [3, 2]


def test_defaults_are_the_readers():
    options = ReaderOptions()
    assert options.as_kwargs() == {
        "min_size": 0, "max_size": MAX_PAYLOAD, "batch_size": DEFAULT_BATCH,
        "rcvbuf": DEFAULT_RCVBUF, "gro": False, "timestamps": False, "ip_fields": False}
    with Reader("127.0.0.1:0", **options.as_kwargs()) as reader:
        assert (reader.min_size, reader.max_size, reader.batch_size) == (0, MAX_PAYLOAD,
                                                                         DEFAULT_BATCH)
