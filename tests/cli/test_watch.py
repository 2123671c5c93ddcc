"""`udp-reader watch` beside a running serve takes nothing and shows every
datagram; `listen` refuses a served port unless --share. Scenarios run in
private network namespaces (watch_harness.py)."""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest

from conftest import DEADLINE, needs_namespace
from test_cli import COMMAND
from udp_reader import served
from watch_harness import run_in_namespace


@needs_namespace
def test_watchers_beside_serve_show_every_datagram_and_take_none():
    r = run_in_namespace("beside_serve", "--count", "4000")
    assert r["handled"] == 4000 and r["handled_exact"], r
    # Every datagram once (loopback is not seen twice), none to another port.
    assert r["jsonl_exit"] == 0 and r["shown"] == 4000 and r["shown_exact"], r
    assert r["dports"] == [7777] and r["ttls"] == [33] and r["sport_known"], r
    assert r["sources"] == ["127.0.0.1", "::1"] and r["ifnames"] == ["lo"], r
    assert r["jsonl_summary"][0].startswith("4000 seen, 4000 shown, 0 seen only in part")
    assert " 0 dropped by the kernel" in r["jsonl_summary"][0]
    # The second watcher, at the same time: --write and --top see them all too.
    assert r["top_exit"] == 0 and r["top_total"] and r["pcap_records"] == 4000, r
    if shutil.which("tcpdump"):
        assert r["tcpdump_read"] == 4000
    assert r["serve_exit"] == 0


@needs_namespace
def test_listen_refuses_a_served_port_with_one_line():
    r = run_in_namespace("beside_serve", "--count", "10")
    assert r["refused_exit"] == 2
    [line] = r["refused_stderr"]
    assert line.startswith("udp-reader: error: :7777 is already served here ([::]:7777): ")
    assert "udp-reader watch :7777" in line and "--share" in line


@needs_namespace
def test_listen_share_joins_the_group_and_takes_part_as_before():
    r = run_in_namespace("share", "--count", "4000")
    assert r["listen_exit"] == 0 and r["serve_exit"] == 0
    assert r["all_once"], r  # together, every number exactly once
    # 32 flows over 3 sockets: listen's share is never none (odds 2e-6).
    assert 0 < r["listen_took"] < 4000 and r["handled"] + r["listen_took"] == 4000


def test_a_more_specific_address_is_served_by_a_wildcard_socket():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        port = s.getsockname()[1]
        result = subprocess.run([*COMMAND, "listen", f"127.0.0.1:{port}", "--count", "1"],
                                capture_output=True, text=True, timeout=DEADLINE)
        assert [x.host.exploded for x in served.serving("127.0.0.1", port)] == ["0.0.0.0"]
        assert served.serving("::1", port) == []  # IPv6 only: not reached by 0.0.0.0
    assert result.returncode == 2
    assert f"127.0.0.1:{port} is already served here (0.0.0.0:{port})" in result.stderr


@pytest.mark.parametrize("ours, theirs, overlap", [
    ("::", "127.0.0.1", True), ("127.0.0.1", "::", True), ("127.0.0.1", "127.0.0.2", False),
    ("127.0.0.1", "::ffff:127.0.0.1", True), ("::1", "0.0.0.0", False), ("::1", "::1", True),
    ("0.0.0.0", "127.0.0.5", True), ("::1", "::2", False),
])
def test_which_bindings_overlap(ours, theirs, overlap):
    import ipaddress
    assert served.overlaps(ipaddress.ip_address(ours), ipaddress.ip_address(theirs)) is overlap


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_watch_without_cap_net_raw_is_one_line_and_exit_2():
    result = subprocess.run(["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw",
                             *COMMAND, "watch", ":9"],
                            capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 2
    assert result.stderr.strip() == "udp-reader: error: watching needs root or CAP_NET_RAW"


def test_a_batch_of_records_from_another_source_is_checked_and_cannot_answer():
    import numpy as np

    from udp_reader._core import _batch_of, _dtype

    records = np.zeros(2, dtype=_dtype())
    records["offset"], records["length"], records["family"] = [0, 5], [5, 3], socket.AF_INET
    batch = _batch_of(records.tobytes(), b"helloabc")
    assert [p.data for p in batch] == [b"hello", b"abc"]
    assert list(batch.records["offset"]) == [0, 5]
    with pytest.raises(ValueError, match="a watched packet cannot answer"):
        batch[0].reply(b"x")
    records["length"][1] = 4  # past the end of the frames
    with pytest.raises(ValueError, match="record 1 points past the end of frames"):
        _batch_of(records.tobytes(), b"helloabc")
    with pytest.raises(ValueError, match="whole records"):
        _batch_of(records.tobytes()[:-1], b"helloabc")
