"""The NATS URL a forward names, and the message ids it gives batches."""

from __future__ import annotations

import pytest

from udp_reader.forward.ids import Ids
from udp_reader.forward.target import Target, TargetError


@pytest.mark.parametrize("url, servers, subject", [
    ("nats://127.0.0.1:4222/udp.in", ("nats://127.0.0.1:4222",), "udp.in"),
    ("nats://a:1,b:2,c/udp", ("nats://a:1", "nats://b:2", "nats://c:4222"), "udp"),
    ("nats://[::1]:5000/x.y", ("nats://[::1]:5000",), "x.y"),
])
def test_servers_and_subject(url, servers, subject):
    assert Target.parse(url) == Target(servers, subject)


def test_to_consume_the_url_names_servers_only():
    assert Target.parse("nats://h:9", subject=False) == Target(("nats://h:9",), None)
    with pytest.raises(TargetError, match="--stream"):
        Target.parse("nats://h:9/udp", subject=False)


@pytest.mark.parametrize("url, said", [
    ("127.0.0.1:4222/udp", "not a URL"),
    ("kafka://h:9092/udp", "unknown scheme 'kafka'"),
    ("nats://h:4222", "names no subject"),
    ("nats://h:4222/udp.*", "not a subject"),
    ("nats://h:4222/a..b", "not a subject"),
    ("nats://h:99999/udp", "not a port"),
    ("nats://h:x/udp", "not a port"),
    ("nats://:4222/udp", "names no host"),
])
def test_a_wrong_url_is_one_line_saying_what(url, said):
    with pytest.raises(TargetError, match=said) as e:
        Target.parse(url)
    assert "\n" not in str(e.value)


def test_ids_are_unique_per_batch_and_per_publisher():
    first, second = Ids("slot1"), Ids("slot1")
    ids = [first.next() for _ in range(3)]
    assert len(set(ids)) == 3 and all(i.startswith(first.origin + "/") for i in ids)
    assert "/slot1/" in first.origin
    assert first.origin != second.origin  # another publisher of the same process
