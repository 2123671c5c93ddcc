"""Multicast: joining and leaving groups, in the API, `listen` and `serve`.

Traffic runs in private network namespaces (multicast_harness.py under
`unshare -n`): on lo, and across a veth pair from a second namespace. The
checks of wrong input that touch no group run here directly.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections import Counter

import pytest

from conftest import can_unshare
from multicast_harness import COUNT, run_in_namespace
from udp_reader import Membership, Reader, multicast

COMMAND = [sys.executable, "-m", "udp_reader"]


namespaces = pytest.mark.skipif(not can_unshare("nsenter", "ip"),
                                reason="needs `unshare -n`, nsenter and ip (root)")


def counts(got: list) -> Counter:
    """How many of each tag ("source>group", with a round prefix) arrived."""
    return Counter(p["data"].split(" ")[0] for p in got)


# -- traffic ------------------------------------------------------------------------

@namespaces
def test_on_lo_any_source_source_specific_and_only_the_groups_joined():
    r = run_in_namespace("lo")
    first, second = r["first"], r["second"]
    # Any source: both senders; source-specific: only the one listed.
    assert counts(first["a"]) == {"1:10.9.0.1>239.1.2.3": COUNT, "1:10.9.0.2>239.1.2.3": COUNT,
                                  "end": 1}
    assert counts(first["b"]) == {"1:10.9.0.1>232.1.1.1": COUNT, "end": 1}
    # 239.1.2.4 did reach the port: a plain socket with the kernel's default
    # (IP_MULTICAST_ALL on) got it without joining it; the readers did not.
    assert counts([{"data": d} for d in r["first"]["plain"]])["1:10.9.0.1>239.1.2.4"] == COUNT
    for p in first["a"] + first["b"]:
        assert p["dst"] == p["data"].split(">")[-1].split(" ")[0] or p["data"] == "end"
        assert p["ifindex"] == r["lo"]
    # TTL (IP_MULTICAST_TTL), TOS and ECN as each sender set them.
    assert {(p["src"], p["ttl"], p["tos"], p["ecn"]) for p in first["a"] if p["data"] != "end"} \
        == {("10.9.0.1", 5, 0xb9, 1), ("10.9.0.2", 6, 0x2a, 2)}
    # At run time: a left 239.1.2.3 and joined 239.1.2.4; b added a source.
    assert counts(second["a"]) == {"2:10.9.0.1>239.1.2.4": COUNT, "2:10.9.0.2>239.1.2.4": COUNT,
                                   "end": 1}
    assert counts(second["b"]) == {"2:10.9.0.1>232.1.1.1": COUNT, "2:10.9.0.2>232.1.1.1": COUNT,
                                   "end": 1}
    lo = r["lo"]
    assert r["memberships"] == {"a": [["239.1.2.4", None, lo]],
                                "b": [["232.1.1.1", "10.9.0.1", lo], ["232.1.1.1", "10.9.0.2", lo]]}
    assert r["ctrunc"] == [0, 0]


VETH_EXPECTED = {
    # IPv4: by name, by index (source-specific), by address.
    "10.7.0.1>239.2.0.1": COUNT, "10.7.0.3>239.2.0.1": COUNT,
    "10.7.0.1>232.2.0.1": COUNT,                        # not 10.7.0.3>232.2.0.1
    "10.7.0.1>239.2.0.2": COUNT, "10.7.0.3>239.2.0.2": COUNT,
    # IPv6 on the same dual-stack socket.
    "fd07::1>ff15::2:1": COUNT, "fd07::3>ff15::2:1": COUNT,
    "fd07::1>ff35::2:1": COUNT,                         # not fd07::3>ff35::2:1
    "end": 1,                                           # never 239.2.0.9, ff15::2:9
}


@namespaces
def test_across_a_veth_pair_from_another_namespace():
    r = run_in_namespace("veth")
    assert r["ready"] == "joined"
    for who in ("reader", "other"):  # a second process on the same groups gets its own copy
        got = r[who]
        assert counts(got) == VETH_EXPECTED, who
        assert {p["ifindex"] for p in got} == {r["rd0"]}
        for p in got:
            if p["data"] != "end":
                source, group = p["data"].split(" ")[0].split(">")
                assert (p["src"], p["dst"]) == (source, group)
                # TTL/hop limit 9 and TOS/traffic class 0xb9 (ECT(1)), as sent.
                assert (p["ttl"], p["tos"], p["ecn"]) == (9, 0xb9, 1)
    rd0 = r["rd0"]
    assert r["memberships"] == [["239.2.0.1", None, rd0], ["232.2.0.1", "10.7.0.1", rd0],
                                ["239.2.0.2", None, "10.7.0.2"], ["ff15::2:1", None, rd0],
                                ["ff35::2:1", "fd07::1", rd0]]
    assert r["ctrunc"] == 0


@namespaces
def test_every_multicast_interface():
    r = run_in_namespace("every_interface")
    got = r["got"]
    assert counts(got) == {"veth": COUNT, "lo": COUNT, "end": 1}
    assert {p["ifindex"] for p in got if p["data"].startswith("veth")} == {r["rd0"]}
    assert {p["ifindex"] for p in got if p["data"].startswith("lo")} == {r["lo"]}
    assert sorted(r["joined"]) == sorted([["239.4.0.1", None, r["lo"]],
                                          ["239.4.0.1", None, r["rd0"]]])
    assert r["after_leave"] == []


@namespaces
def test_serve_with_two_workers_handles_each_datagram_once_across_an_upgrade():
    r = run_in_namespace("serve")
    assert (r["sent"], r["handled"], r["distinct"]) == (4000, 4000, 4000)
    assert (r["lowest"], r["highest"]) == (0, 3999)
    assert r["workers"] == 4  # two, then two of the new master
    assert (r["old_master_exit"], r["master_exit"]) == (0, 0)
    log = r["log"]
    assert "--join: the workers share one socket" in log
    assert "with 2 worker(s) on one shared socket" in log
    assert "joined 239.5.0.1 on lo\n" in log
    # The new master found the membership on the socket it was handed.
    assert "joined 239.5.0.1 on lo (the socket had it already)" in log


@namespaces
def test_listen_shows_multicast_packets_with_ttl_and_tos():
    r = run_in_namespace("listen")
    assert r["code"] == 0, r["stderr"]
    assert r["joined"] == ["udp-reader: joined 232.6.0.1 from 10.9.0.1 on lo",
                           "udp-reader: joined 239.6.0.1 on lo"]
    records = [json.loads(line) for line in r["lines"]]
    assert [(x["src"], x["dst"], x["ifname"], x["ttl"], x["tos"], x["ecn"]) for x in records] == [
        ("10.9.0.2", "239.6.0.1", "lo", 3, 0x2e, 2)] + [
        ("10.9.0.1", "232.6.0.1", "lo", 4, 0xb9, 1)] * 3  # never the unlisted source


@namespaces
def test_wrong_joins_that_need_a_group_are_one_line_and_exit_2():
    r = run_in_namespace("cli_errors")
    expected = {
        "twice": "--join 239.7.0.1@lo: group 239.7.0.1 is already joined on lo",
        "narrowing": "--join 10.9.0.1>239.7.0.1@lo: source 10.9.0.1: group 239.7.0.1 is joined "
                     "for any source on lo; a source-specific join would narrow it",
        "no_address": "--join 239.7.0.1@10.1.2.3: interface '10.1.2.3': no interface has "
                      "this address",
        "no_route": "--join ff15::7: group ff15::7: no route picks an interface for it",
        "serve_twice": "--join 239.7.0.1@lo: given twice",
    }
    for name, words in expected.items():
        code, stderr = r[name]
        assert code == 2, (name, stderr)
        [line] = stderr.splitlines()
        assert line.startswith("udp-reader: error: ") and words in line, (name, line)


# -- the notation and wrong input ---------------------------------------------------

@pytest.mark.parametrize("text, membership", [
    ("239.1.2.3", Membership("239.1.2.3")),
    ("239.1.2.3@eth0", Membership("239.1.2.3", None, "eth0")),
    ("239.1.2.3@2", Membership("239.1.2.3", None, 2)),
    ("239.1.2.3@10.0.0.1", Membership("239.1.2.3", None, "10.0.0.1")),
    ("10.0.0.5>232.1.1.1@eth0", Membership("232.1.1.1", "10.0.0.5", "eth0")),
    ("fd00::5>ff35::1@*", Membership("ff35::1", "fd00::5", "*")),
    ("[FF15::0001]@lo", Membership("ff15::1", None, "lo")),
])
def test_the_notation(text, membership):
    assert multicast.parse(text) == membership
    assert multicast.parse(str(membership)) == membership


@pytest.mark.parametrize("text, error, words", [
    ("10.1.2.3", ValueError, "group '10.1.2.3' is not a multicast address (224.0.0.0/4)"),
    ("fd00::1", ValueError, "group 'fd00::1' is not a multicast address (ff00::/8)"),
    ("239.1.2.3@", ValueError, "name an interface after '@'"),
    (">239.1.2.3", ValueError, "name a source before '>'"),
    ("10.0.0.5>", ValueError, "no group"),
    ("fd00::5>232.1.1.1", ValueError, "source 'fd00::5' is IPv6, but group '232.1.1.1' is IPv4"),
    ("239.0.0.1>232.1.1.1", ValueError, "source '239.0.0.1' must be a sender's unicast address"),
    ("ff15::1@10.0.0.1", ValueError, "name the interface of an IPv6 group by name or index"),
    ("239.1.2.3@fd00::1", ValueError, "by name or index (or IPv4 address)"),
    ("example.com", ValueError, "group 'example.com' is not a numeric IP address"),
    (42, TypeError, "a membership must be a str like '239.1.2.3@eth0', not 42"),
])
def test_wrong_notation_names_the_part(text, error, words):
    with pytest.raises(error) as info:
        multicast.parse(text)
    assert words in str(info.value)


def test_wrong_joins_raise_naming_the_argument():
    with Reader(":0") as reader:
        cases = [
            (dict(group="10.1.2.3"), ValueError, "group '10.1.2.3' is not a multicast address"),
            (dict(group="239.1.2.3", interface="no-such0"), ValueError,
             "interface 'no-such0' does not exist"),
            (dict(group="239.1.2.3", interface=99999), ValueError,
             "interface 99999 does not exist"),
            (dict(group="239.1.2.3", interface=True), TypeError, "interface must be a name"),
            (dict(group="239.1.2.3", source="fd00::1"), ValueError,
             "source 'fd00::1' is IPv6, but group '239.1.2.3' is IPv4"),
            (dict(group=None), TypeError, "group must be an IP address str, not None"),
        ]
        for kwargs, error, words in cases:
            with pytest.raises(error) as info:
                reader.join(**kwargs)
            assert words in str(info.value), kwargs
        assert reader.memberships == []
        # Leaving what was never joined: the kernel has no such membership.
        with pytest.raises(ValueError, match=r"group 239\.9\.9\.9 is not joined on lo$"):
            reader.leave("239.9.9.9", interface="lo")
        with pytest.raises(ValueError, match=r"group 239\.9\.9\.9 is not joined$"):
            reader.leave("239.9.9.9", interface="*")


@pytest.mark.parametrize("bind, join, words", [
    ("127.0.0.1:0", ["239.1.2.3"], "join[0] '239.1.2.3': group 239.1.2.3: the socket is bound "
                                   "to 127.0.0.1, where no datagram to a group arrives"),
    ("127.0.0.1:0", ["ff15::1"], "group ff15::1 is IPv6, but the socket is IPv4"),
    ("[::1]:0", ["239.1.2.3"], "group 239.1.2.3 is IPv4, but the socket takes IPv6 only"),
    (":0", ["239.1.2.3", "1.2.3.4"], "join[1]: group '1.2.3.4' is not a multicast address"),
])
def test_a_reader_that_cannot_receive_the_group_is_refused(bind, join, words):
    with pytest.raises(ValueError) as info:
        Reader(bind, join=join)
    assert words in str(info.value)


def test_join_takes_a_list():
    with pytest.raises(TypeError, match="join must be a list of memberships, not '239.1.2.3'"):
        Reader(":0", join="239.1.2.3")


def test_sockets_get_only_their_own_groups():
    with Reader(":0") as reader:
        sock = reader.socket
        assert sock.getsockopt(socket.IPPROTO_IP, multicast_all(socket.AF_INET)) == 0
        assert sock.getsockopt(socket.IPPROTO_IPV6, multicast_all(socket.AF_INET6)) == 0


def multicast_all(family: int) -> int:
    from udp_reader import sockets
    return sockets.IP_MULTICAST_ALL if family == socket.AF_INET else sockets.IPV6_MULTICAST_ALL


@pytest.mark.parametrize("args, words", [
    (["listen", ":0", "--join", "10.1.2.3"],
     "--join 10.1.2.3: group '10.1.2.3' is not a multicast address"),
    (["listen", ":0", "--join", "239.1.2.3@no-such0"],
     "--join 239.1.2.3@no-such0: interface 'no-such0' does not exist"),
    (["listen", "127.0.0.1:0", "--join", "239.1.2.3"], "the socket is bound to 127.0.0.1"),
    (["listen", ":0", "--join", "ff15::1@10.0.0.1"], "by name or index"),
    (["serve", "x:y", "--bind", ":0", "--join", "10.1.2.3"],
     "--join 10.1.2.3: group '10.1.2.3' is not a multicast address"),
    (["serve", "x:y", "--bind", ":0", "--join", "239.1.2.3", "--steer", "spread"],
     "--steer spread needs a socket per worker, but --join serves one shared socket"),
    (["serve", "x:y", "--bind", ":0", "--join", "239.1.2.3@no-such0"],
     "--join 239.1.2.3@no-such0: interface 'no-such0' does not exist"),
])
def test_wrong_join_flags_are_one_line_and_exit_2(args, words):
    result = subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result
    [line] = result.stderr.splitlines()
    assert line.startswith("udp-reader: error: ") and words in line, line
