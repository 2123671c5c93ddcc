"""Shed and drain: handing a port to another socket without loss."""

import socket
import threading

import pytest

from conftest import DEADLINE, collect, send, steer
from udp_reader import Reader
from udp_reader.sockets import is_shed


def seq(start, stop):
    return [i.to_bytes(4, "big") for i in range(start, stop)]


def test_drain_hands_over_to_the_other_socket_without_loss():
    with Reader("127.0.0.1:0") as old, Reader(old.address) as new:
        address = old.address
        # The kernel's hash decides which flows the old socket gets: make
        # sure it gets some, so there is something to drain.
        to_old, to_new = steer([old, new], 16)
        senders = to_old + to_new
        try:
            # Both sockets receive; then the old one sheds mid-stream.
            for i, payload in enumerate(seq(0, 4000)):
                senders[i % 16].sendto(payload, address)
            got_old = []
            drained = old.drain(lambda p: got_old.append(p.data))
            for i, payload in enumerate(seq(4000, 8000)):
                senders[i % 16].sendto(payload, address)
        finally:
            for s in senders:
                s.close()
        assert old.closed
        # Exactly what the old socket's flows sent before the shed.
        assert drained == len(got_old)
        assert sorted(got_old) == [p for i, p in enumerate(seq(0, 4000)) if i % 16 < len(to_old)]
        got_new = collect(new, 8000 - len(got_old))
    assert sorted(got_old + got_new) == seq(0, 8000)


def test_drain_of_the_last_socket_delivers_the_queue_and_refuses_new_datagrams():
    reader = Reader("127.0.0.1:0")
    address = reader.address
    send(address, seq(0, 10))
    reader.shed()
    assert is_shed(reader.socket)
    send(address, seq(10, 20))  # refused by the kernel: no member takes it
    got = []
    assert reader.drain(lambda p: got.append(p.data)) == 10
    assert got == seq(0, 10)


def test_drain_while_another_thread_keeps_sending():
    count = 20000
    # Whatever flows the kernel's hash gives each socket, both queues hold
    # all they get: the default buffer takes the whole run.
    with Reader("127.0.0.1:0") as new:
        old = Reader(new.address)
        got_old, got_new = [], []
        halfway = threading.Event()

        def sender():
            socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
            for i, payload in enumerate(seq(0, count)):
                socks[i % 8].sendto(payload, new.address)
                if i == count // 4:
                    halfway.set()
            for s in socks:
                s.close()

        def run_old():
            old.run(lambda p: got_old.append(p.data))

        t_old = threading.Thread(target=run_old)
        t_old.start()
        t_send = threading.Thread(target=sender)
        t_send.start()
        assert halfway.wait(DEADLINE)
        old.stop()
        t_old.join(DEADLINE)
        old.drain()  # the last run's handler
        t_send.join(DEADLINE)
        got_new = collect(new, count - len(got_old), deadline=DEADLINE)
    assert len(got_old) + len(got_new) == count
    assert sorted(got_old + got_new) == seq(0, count)


def test_drain_without_shed_delivers_only_what_was_taken():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as shared:
        shared.bind(("127.0.0.1", 0))
        send(shared.getsockname(), seq(0, 10))
        old = Reader.from_socket(shared)
        assert collect(old, 3) == seq(0, 3)  # 7 more were taken in that batch
        rest = []
        assert old.drain(lambda p: rest.append(p.data), shed=False) == 7
        assert rest == seq(3, 10)
        assert not is_shed(shared)
        send(shared.getsockname(), seq(10, 11))
        with Reader.from_socket(shared) as successor:
            assert collect(successor, 1) == seq(10, 11)


def test_drain_by_batches():
    reader = Reader("127.0.0.1:0")
    send(reader.address, seq(0, 5))
    sizes = []
    assert reader.drain(on_batch=lambda b: sizes.append(len(b))) == 5
    assert sum(sizes) == 5


def test_drain_needs_a_handler():
    with Reader("127.0.0.1:0") as reader:
        with pytest.raises(TypeError, match="handler"):
            reader.drain()
        with pytest.raises(TypeError):
            reader.drain(print, on_batch=print)
        with pytest.raises(ValueError, match="grace"):
            reader.drain(print, grace=-1)


def test_drain_dual_stack_socket():
    reader = Reader("[::]:0")
    port = reader.address[1]
    send(("127.0.0.1", port), [b"four"])
    send(("::1", port), [b"six"], family=socket.AF_INET6)
    got = []
    reader.drain(lambda p: got.append(p.data))
    assert sorted(got) == [b"four", b"six"]


class Boom(Exception):
    pass


@pytest.mark.parametrize("shed", [False, True])
@pytest.mark.parametrize("batches", [False, True], ids=["packet", "batch"])
def test_a_stop_between_runs_does_not_cut_the_drain(shed, batches):
    # The handler raises on the first packet of a receive of 16; stop()
    # lands while no run is active (as a command from serve's master does);
    # the drain still delivers what the reader holds and, shedding, what the
    # kernel queued.
    with Reader("127.0.0.1:0", batch_size=16) as reader:
        send(reader.address, seq(0, 40))

        def raises(item):
            raise Boom()

        with pytest.raises(Boom):
            (reader.run_batches if batches else reader.run)(raises)
        reader.stop()
        got = []
        if batches:
            reader.drain(on_batch=lambda b: got.extend(bytes(p) for p in b), shed=shed)
        else:
            reader.drain(lambda p: got.append(p.data), shed=shed)
    first = 16 if batches else 1  # a raising batch handler was given its whole batch
    assert got == seq(first, 40 if shed else 16)


@pytest.mark.parametrize("batches", [False, True], ids=["packet", "batch"])
def test_run_with_count_delivers_exactly_that_many(batches):
    with Reader("127.0.0.1:0") as reader:
        send(reader.address, seq(0, 100))
        got = []
        if batches:
            reader.run_batches(lambda b: got.extend(bytes(p) for p in b), count=30)
            assert got == seq(0, 30)
            reader.run_batches(lambda b: got.extend(bytes(p) for p in b), count=70)
        else:
            reader.run(lambda p: got.append(p.data), count=30)
            assert got == seq(0, 30)
            reader.run(lambda p: got.append(p.data), count=70)
        assert got == seq(0, 100)
        assert reader.stats.delivered == 100
        for bad, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)):
            with pytest.raises(error, match="count"):
                reader.run(lambda p: None, count=bad)
