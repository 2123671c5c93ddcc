"""The reply path on real sockets: answers from the address a packet came
to, batching, GSO and its fallback, errors read back, bad input."""

from __future__ import annotations

import errno
import gc
import json
import logging
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from conftest import DEADLINE, collect, needs_namespace, send
from udp_reader import Reader, answering
from udp_reader.options import MAX_PAYLOAD

SO_NO_CHECK = 11  # no UDP checksum: the kernel then refuses GSO
IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2

# (connect to, family): one reader on [::] answers them all.
CLIENTS = [("127.0.0.2", socket.AF_INET), ("127.0.0.3", socket.AF_INET),
           ("::1", socket.AF_INET6)]


def client(host: str, family: int, port: int) -> socket.socket:
    """A socket connected to host:port: the kernel drops whatever comes
    from another address or port."""
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(DEADLINE)
    s.connect((host, port))
    return s


def nothing_queued(s: socket.socket) -> bool:
    timeout = s.gettimeout()
    s.setblocking(False)  # with a timeout, recv would wait for data first
    try:
        s.recv(65535)
    except BlockingIOError:
        return True
    finally:
        s.settimeout(timeout)
    return False


def run_until(reader: Reader, count: int, on_packet=None, on_batch=None) -> None:
    """Run `reader` until `count` packets were delivered (or DEADLINE)."""
    guard = threading.Timer(DEADLINE, reader.stop)
    guard.start()
    try:
        if on_batch is not None:
            def batches(batch):
                on_batch(batch)
                if reader.stats.delivered >= count:
                    reader.stop()
            reader.run_batches(batches)
        else:
            def packets(packet):
                on_packet(packet)
                if reader.stats.delivered >= count:
                    reader.stop()
            reader.run(packets)
    finally:
        guard.cancel()


@pytest.mark.parametrize("batches", [False, True])
def test_every_client_gets_every_reply_from_the_address_it_used(batches):
    per_client = 100
    with Reader(":0") as reader:
        port = reader.address[1]
        clients = [client(host, family, port) for host, family in CLIENTS]
        try:
            for n in range(per_client):
                for i, c in enumerate(clients):
                    c.send(b"%d:%d" % (i, n))
            if batches:
                run_until(reader, 3 * per_client,
                          on_batch=lambda b: b.reply([b"re " + p.data for p in b]))
            else:
                run_until(reader, 3 * per_client,
                          on_packet=lambda p: p.reply(b"re " + p.data))
            for i, (c, (host, _)) in enumerate(zip(clients, CLIENTS)):
                got = []
                for _ in range(per_client):
                    data, source = c.recvfrom(100)
                    assert source[:2] == (host, port)
                    got.append(data)
                assert got == [b"re %d:%d" % (i, n) for n in range(per_client)]
                assert nothing_queued(c)
            stats = reader.stats
            assert (stats.sent, stats.send_errors) == (3 * per_client, 0)
        finally:
            for c in clients:
                c.close()


def test_replies_in_a_callback_wait_for_the_end_of_the_receive():
    with Reader("127.0.0.1:0") as reader, client("127.0.0.1", socket.AF_INET,
                                                  reader.address[1]) as c:
        for n in range(5):
            c.send(b"%d" % n)
        seen_early = []

        def on_packet(packet):
            packet.reply(packet)  # a Packet is bytes-like: an echo
            seen_early.append(not nothing_queued(c))

        run_until(reader, 5, on_packet=on_packet)
        assert seen_early == [False] * 5
        assert [c.recv(10) for _ in range(5)] == [b"%d" % n for n in range(5)]


def test_a_kept_packet_answers_after_its_callback():
    with Reader(":0") as reader, client("127.0.0.2", socket.AF_INET,
                                         reader.address[1]) as c:
        c.send(b"question")
        (packet,) = collect(reader, 1, keep=lambda p: p)
        c.send(b"more traffic")  # the reader moves on to a fresh slab
        collect(reader, 1)
        packet.reply(b"answer")
        assert c.recvfrom(100) == (b"answer", ("127.0.0.2", reader.address[1]))
        # Sent from another thread while the reader runs: sent at once.
        c.send(b"again")
        (later,) = collect(reader, 1, keep=lambda p: p)
        worker = threading.Thread(target=later.reply, args=(b"from a thread",))
        worker.start()
        worker.join()
        assert c.recv(100) == b"from a thread"


def test_a_kept_packet_outlives_its_reader_left_unclosed():
    reader = Reader("127.0.0.1:0")
    with client("127.0.0.1", socket.AF_INET, reader.address[1]) as c:
        c.send(b"question")
        (packet,) = collect(reader, 1, keep=lambda p: p)
        del reader
        gc.collect()
        # The packet holds the socket: it answers on it, not on whatever
        # file took the number of a closed one.
        packet.reply(b"answer")
        assert c.recv(10) == b"answer"


def test_send_from_a_chosen_source():
    with Reader(":0") as reader, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.bind(("127.0.0.1", 0))
        c.settimeout(DEADLINE)
        for source in ("127.0.0.3", "127.0.0.2"):
            reader.send(b"hello", c.getsockname(), source=source)
            assert c.recvfrom(10) == (b"hello", (source, reader.address[1]))
        reader.send(b"mapped", f"127.0.0.1:{c.getsockname()[1]}",
                    source="::ffff:127.0.0.4", ifindex=socket.if_nametoindex("lo"))
        assert c.recvfrom(10) == (b"mapped", ("127.0.0.4", reader.address[1]))
        assert reader.stats.sent == 3


def test_handler_return_values_answer_through_answering():
    def handler(packet):
        if packet.data == b"none":
            return None
        if packet.data == b"two":
            return [b"one", bytearray(b"two")]
        return b"<" + packet.data + b">"

    with Reader("127.0.0.1:0") as reader, client("127.0.0.1", socket.AF_INET,
                                                  reader.address[1]) as c:
        for payload in (b"a", b"none", b"two", b"b"):
            c.send(payload)
        run_until(reader, 4, on_packet=answering(handler))
        assert [c.recv(10) for _ in range(4)] == [b"<a>", b"one", b"two", b"<b>"]
        assert nothing_queued(c)


def merged_receiver() -> Reader:
    return Reader("127.0.0.1:0", gro=True)


@pytest.mark.parametrize("refuse", [False, True])
def test_send_many_merges_equal_sizes_and_falls_back_when_gso_is_refused(refuse, caplog):
    payloads = [bytes([i]) * 100 for i in range(20)] + [b"short"]
    with Reader("127.0.0.1:0") as reader, merged_receiver() as receiver:
        if refuse:
            # A socket without UDP checksums cannot use GSO: the kernel
            # answers EINVAL, as a device without checksum offload does EIO.
            reader.socket.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        with caplog.at_level(logging.WARNING, logger="udp_reader"):
            reader.send_many([(p, receiver.address) for p in payloads])
        got = collect(receiver, len(payloads), keep=lambda p: (p.data, p.segment))
        assert [d for d, _ in got] == payloads
        segments = {s for _, s in got}
        refused = [r for r in caplog.records if "refused GSO" in r.getMessage()]
        if refuse:
            assert segments == {0} and not reader.gso and len(refused) == 1
            # Later sends go apart at once, without another warning.
            reader.send_many([(b"x" * 10, receiver.address)] * 3)
            assert collect(receiver, 3, keep=lambda p: p.segment) == [0, 0, 0]
            assert len([r for r in caplog.records if "refused GSO" in r.getMessage()]) == 1
        else:
            assert segments == {100} and reader.gso and not refused
        assert (reader.stats.sent, reader.stats.send_errors) == (
            len(payloads) + 3 * refuse, 0)


def test_batch_replies_of_one_size_to_one_peer_use_gso():
    with Reader("127.0.0.1:0") as reader, merged_receiver() as peer:
        # From the merging receiver's own socket, so the replies go to it.
        for n in range(8):
            peer.socket.sendto(b"%03d" % n, reader.address)
        run_until(reader, 8, on_batch=lambda b: b.reply([b"r" + p.data for p in b]))
        got = collect(peer, 8, keep=lambda p: (p.data, p.segment))
    assert [d for d, _ in got] == [b"r%03d" % n for n in range(8)]
    assert {s for _, s in got} == {4}


def test_icmp_errors_are_counted_per_destination_and_the_run_goes_on():
    with Reader(":0") as reader:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
            gone.bind(("127.0.0.1", 0))
            dead = gone.getsockname()
        reader.send(b"to nobody", dead)
        reader.send(b"to nobody again", dead)
        send(("127.0.0.1", reader.address[1]), [b"still here"])
        # The pending ICMP error is met by the next receive: read, not raised.
        assert collect(reader, 1) == [b"still here"]
        failures = reader.send_failures()
        assert failures[dead].errno == errno.ECONNREFUSED
        assert failures[dead].datagrams == 2
        assert (reader.stats.sent, reader.stats.send_errors) == (2, 2)
        assert reader.send_failures() == {}


@pytest.mark.parametrize("batches", [False, True])
def test_an_icmp_error_amid_a_batch_of_replies_costs_no_other_reply(batches):
    with Reader("127.0.0.1:0") as reader:
        port = reader.address[1]
        live = client("127.0.0.1", socket.AF_INET, port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
            gone.bind(("127.0.0.1", 0))
            dead = gone.getsockname()
        payloads = [b"x" * n for n in range(1, 11)]  # apart: no GSO run
        for payload in payloads:
            live.send(payload)

        def bounce():
            # Sent at once, it bounces at once (loopback): the kernel leaves
            # the error pending and returns it from the next send, which it
            # does not send; the queued replies go after it.
            if reader.stats.sent == 0:
                reader.send(b"bounce", dead)

        if batches:
            run_until(reader, 10, on_batch=lambda b: (bounce(), b.reply(b)))
        else:
            run_until(reader, 10, on_packet=lambda p: (bounce(), p.reply(p)))
        assert [live.recv(20) for _ in range(10)] == payloads
        assert nothing_queued(live)
        live.close()
        assert reader.send_failures()[dead].errno == errno.ECONNREFUSED
        assert (reader.stats.sent, reader.stats.send_errors) == (11, 1)


# -- bad input: a precise exception, the reader unharmed, nothing sent --------

@pytest.fixture
def pair():
    with Reader("127.0.0.1:0") as reader, client("127.0.0.1", socket.AF_INET,
                                                  reader.address[1]) as c:
        c.send(b"question")
        (packet,) = collect(reader, 1, keep=lambda p: p)
        yield reader, c, packet


def unharmed(reader: Reader, c: socket.socket, packet, sent_before: int) -> None:
    assert nothing_queued(c)
    assert reader.stats.sent == sent_before
    packet.reply(b"fine")
    assert c.recv(10) == b"fine"


@pytest.mark.parametrize("call, error, words", [
    (lambda r, p: p.reply(b"x" * (MAX_PAYLOAD + 1)), ValueError, "data is 65508 bytes"),
    (lambda r, p: p.reply("text"), TypeError, "data must be bytes-like, not str"),
    (lambda r, p: p.reply(None), TypeError, "data must be bytes-like, not NoneType"),
    (lambda r, p: r.send(b"x", ("::1", 9)), ValueError,
     "address '::1' is IPv6, but the reader's socket is IPv4"),
    (lambda r, p: r.send(b"x", ("localhost", 9)), ValueError,
     "address 'localhost' is not a numeric IP address"),
    (lambda r, p: r.send(b"x", 9), ValueError, "address must give a host and a port"),
    (lambda r, p: r.send(b"x", ("127.0.0.1", 70000)), ValueError, "outside 0..65535"),
    (lambda r, p: r.send(b"x", ("127.0.0.1", 9), ifindex=-1), ValueError, "ifindex must be"),
    (lambda r, p: r.send(b"x", ("127.0.0.1", 9), ifindex="lo"), TypeError, "ifindex must be"),
    (lambda r, p: r.send(b"x", ("127.0.0.1", 9), source="::1"), ValueError,
     "source '::1' is IPv6, but address '127.0.0.1' is IPv4"),
    (lambda r, p: r.send_many([(b"ok", p.src), (b"x" * 70000, p.src)]), ValueError,
     "messages[1] is 70000 bytes"),
    (lambda r, p: r.send_many([(b"ok", p.src), b"no pair"]), TypeError,
     "messages[1] must be a (data, address) pair"),
])
def test_bad_input_is_refused_before_anything_is_sent(pair, call, error, words):
    reader, c, packet = pair
    with pytest.raises(error) as raised:
        call(reader, packet)
    assert words in str(raised.value)
    unharmed(reader, c, packet, 0)


def test_bad_batch_replies_send_nothing():
    with Reader("127.0.0.1:0") as reader, client("127.0.0.1", socket.AF_INET,
                                                  reader.address[1]) as c:
        for n in range(3):
            c.send(b"%d" % n)
        errors = []

        def on_batch(batch):
            for replies in ([b"a", b"b"], [b"a", b"x" * 65508, b"c"], [b"a", 5, b"c"]):
                with pytest.raises((ValueError, TypeError)) as raised:
                    batch.reply(replies)
                errors.append(str(raised.value))
            batch.reply([b"a", None, b"c"])

        run_until(reader, 3, on_batch=on_batch)
        assert errors == ["replies must have one entry per packet (3), not 2",
                          "replies[1] is 65508 bytes, more than an IPv4 datagram holds (65507)",
                          "replies[1] must be bytes-like, not int"]
        assert [c.recv(10), c.recv(10)] == [b"a", b"c"]
        assert nothing_queued(c) and reader.stats.sent == 2


def test_a_v6_only_socket_refuses_ipv4_destinations():
    with Reader("[::1]:0") as reader:
        with pytest.raises(ValueError, match="takes IPv6 only"):
            reader.send(b"x", ("127.0.0.1", 9))


def test_a_closed_reader_refuses_to_answer(pair):
    reader, c, packet = pair
    reader.close()
    with pytest.raises(ValueError, match="the reader is closed"):
        packet.reply(b"late")
    with pytest.raises(ValueError, match="the reader is closed"):
        reader.send(b"late", packet.src)
    assert nothing_queued(c)


NAMESPACE_SCRIPT = textwrap.dedent("""
    import errno, json, socket, subprocess
    from udp_reader import Reader
    subprocess.run(["ip", "link", "set", "lo", "up", "mtu", "1280"], check=True)
    out = {}
    with Reader("127.0.0.1:0") as reader, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.bind(("127.0.0.1", 0))
        reader.socket.setsockopt(socket.IPPROTO_IP, %d, %d)  # don't fragment
        try:
            reader.send(b"x" * 2000, c.getsockname())
        except OSError as e:
            out["error"] = [e.errno, str(e)]
        reader.send(b"y" * 1000, c.getsockname())
        out["received"] = len(c.recv(4000))
        out["stats"] = [reader.stats.sent, reader.stats.send_errors]
        out["failure"] = list(reader.send_failures()[c.getsockname()])
    print(json.dumps(out))
""") % (IP_MTU_DISCOVER, IP_PMTUDISC_DO)


@needs_namespace
def test_over_the_path_mtu_with_dont_fragment_is_a_precise_error():
    # In a namespace of its own, where lo can get a small MTU.
    result = subprocess.run(["unshare", "-n", sys.executable, "-c", NAMESPACE_SCRIPT],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["error"][0] == errno.EMSGSIZE
    assert "data: 2000 bytes exceed the path MTU to 127.0.0.1:" in out["error"][1]
    assert "(1280 bytes)" in out["error"][1]
    assert out["received"] == 1000  # nothing half-sent, the reader unharmed
    assert out["stats"] == [1, 1]
    assert out["failure"] == [errno.EMSGSIZE, 1, 1280]


FULL_BUFFER_SCRIPT = textwrap.dedent("""
    import json, socket, subprocess
    from udp_reader import Reader
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # A slow queue on lo holds sent datagrams, and with them the send buffer.
    shaped = subprocess.run(["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate",
                             "100kbit", "burst", "1600", "limit", "10000000"],
                            capture_output=True)
    if shaped.returncode:
        print(json.dumps({"skip": shaped.stderr.decode()}))
        raise SystemExit
    out = {}
    with Reader("127.0.0.1:0") as reader, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.bind(("127.0.0.1", 0))
        reader.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        # Sizes apart, so no GSO message takes them all at once.
        reader.send_many([(b"x" * (1000 + n), c.getsockname()) for n in range(40)])
        out["many"] = [reader.stats.sent, reader.stats.send_errors]
        try:
            reader.send(b"y" * 1000, c.getsockname())
        except OSError as e:
            out["error"] = [e.errno, str(e)]
        out["stats"] = [reader.stats.sent, reader.stats.send_errors]
        out["failure"] = list(reader.send_failures()[c.getsockname()])
    print(json.dumps(out))
""")


@needs_namespace
def test_a_full_send_buffer_is_waited_out_briefly_then_counted():
    result = subprocess.run(["unshare", "-n", sys.executable, "-c", FULL_BUFFER_SCRIPT],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    if "skip" in out:
        pytest.skip(f"no tbf queueing discipline: {out['skip']}")
    sent, failed = out["many"]
    assert sent + failed == 40 and sent >= 1 and failed >= 1
    assert out["error"][0] == errno.EAGAIN and "send to 127.0.0.1:" in out["error"][1]
    assert out["stats"] == [sent, failed + 1]
    assert out["failure"][:2] == [errno.EAGAIN, failed + 1]


def test_aio_batches_answer_at_once():
    with Reader("127.0.0.1:0") as reader, client("127.0.0.1", socket.AF_INET,
                                                  reader.address[1]) as c:
        c.send(b"ping")
        batch = None
        for _ in range(1000):  # loopback queues before send() returns
            batch = reader.receive_batch()
            if batch is not None:
                break
        assert batch is not None and len(batch) == 1
        batch.reply([b"pong"])
        assert c.recv(10) == b"pong"
