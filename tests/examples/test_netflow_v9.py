"""The NetFlow v9 and IPFIX collector (examples/netflow_v9.py): softflowd
exports flows of a pcap made here, its datagrams are recorded once and
replayed to the collector and to nfcapd alike, and every flow nfdump shows
must come out of the collector the same. Hand-built IPFIX covers what
softflowd never sends: withdrawals, variable-length and enterprise fields,
several observation domains, malformed sets. The templates handed on as
bytes let a fresh collector decode data sets whose template it never saw."""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
from collections import Counter
from typing import List

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import DEADLINE, free_port, wait_until_bound
from external import needs, plain_env, tool, utc_ms, wait_until_queue_empty
from places import EXAMPLES
from server import Server, serving

sys.path.insert(0, EXAMPLES)
import netflow_v9  # noqa: E402
from netflow_v9 import (FLOW, MAX_BOOTS, MAX_FIELDS, MAX_STATE_BYTES,  # noqa: E402
                        MAX_TEMPLATES, VARIABLE, Collector, Template, Templates)

UDP, TCP, ICMP, ICMP6 = 17, 6, 1, 58
# The traffic softflowd turns into flows: (src, dst, proto, sport, dport,
# packets, payload bytes); an ICMP flow's dport is type << 8 | code.
FLOWS = [("10.0.0.1", "10.0.0.2", UDP, 1000, 53, 10, 50),
         ("10.0.0.3", "10.0.0.4", TCP, 40000, 80, 7, 500),
         ("10.0.0.1", "10.0.0.9", UDP, 1001, 514, 3, 100),
         ("192.0.2.7", "198.51.100.1", UDP, 5353, 5353, 25, 20),
         ("10.0.0.5", "10.0.0.6", ICMP, 0, 8 << 8, 4, 56),
         ("2001:db8::1", "2001:db8::2", UDP, 4000, 4001, 6, 30)]
START = 1_700_000_000  # the pcap's first second


# -- what the tests are made of ----------------------------------------------

def _frame(src: str, dst: str, proto: int, sport: int, dport: int, payload: bytes) -> bytes:
    """An Ethernet frame with IPv4 or IPv6 and UDP, TCP (ACK|PSH) or an ICMP
    echo around payload."""
    if proto == UDP:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    elif proto == TCP:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, 0x18, 65535, 0, 0) + payload
    else:
        l4 = struct.pack("!BBHHH", dport >> 8, dport & 255, 0, 1, 1) + payload
    if ":" in src:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(l4), ICMP6 if proto == ICMP else proto, 64,
                         socket.inet_pton(socket.AF_INET6, src),
                         socket.inet_pton(socket.AF_INET6, dst))
        return b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + ip + l4
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + l4


def write_pcap(path: str, flows) -> None:
    """A pcap of `flows`, each sending one packet a second from START."""
    with open(path, "wb") as f:
        f.write(struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))  # Ethernet
        for second in range(max(flow[5] for flow in flows)):
            for src, dst, proto, sport, dport, packets, size in flows:
                if second < packets:
                    frame = _frame(src, dst, proto, sport, dport, b"x" * size)
                    f.write(struct.pack("=IIII", START + second, 0, len(frame), len(frame))
                            + frame)


def many_flows(count: int) -> list:
    """`count` one-packet UDP flows: softflowd fills about 32 to a datagram."""
    return [(f"10.1.{i >> 8}.{i & 255}", "10.2.0.1", UDP, 1024 + i, 53, 1, 20)
            for i in range(count)]


def softflowd_export(pcap: str, *options: str) -> List[bytes]:
    """The datagrams softflowd exports for `pcap`, recorded by a socket of
    our own (loopback: all queued by the time softflowd exits)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as recorder:
        recorder.bind(("127.0.0.1", 0))
        recorder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        tool(["softflowd", "-r", pcap, "-d", "-6", *options,
              "-n", f"127.0.0.1:{recorder.getsockname()[1]}"], check=True, capture_output=True)
        recorder.setblocking(False)
        datagrams = []
        while True:
            try:
                datagrams.append(recorder.recv(65535))
            except BlockingIOError:
                return datagrams


def replay(datagrams: List[bytes], port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as exporter:
        exporter.bind(("127.0.0.1", 0))
        for i, datagram in enumerate(datagrams):
            exporter.sendto(datagram, ("127.0.0.1", port))
            if i % 50 == 49:  # what a receive buffer surely holds
                wait_until_queue_empty(port)
    wait_until_queue_empty(port)


def nfdump_flows(datagrams: List[bytes], record_dir: str) -> List[dict]:
    """What nfcapd makes of `datagrams`, as nfdump's CSV rows (first and
    last in Unix ms)."""
    port = free_port()
    flow_dir = os.path.join(record_dir, "nfcapd")
    os.mkdir(flow_dir)
    nfcapd = subprocess.Popen(["nfcapd", "-b", "127.0.0.1", "-p", str(port), "-w", flow_dir],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=plain_env())
    try:
        wait_until_bound(port)
        replay(datagrams, port)
    finally:
        nfcapd.send_signal(signal.SIGTERM)
        nfcapd.wait(DEADLINE)
    dump = tool(["nfdump", "-R", flow_dir, "-o", "csv"], utc=True, check=True,
                capture_output=True, text=True).stdout
    rows = list(csv.DictReader(io.StringIO(dump.split("\nSummary")[0].strip())))
    # Milliseconds: the CSV has whole seconds only.
    times = tool(["nfdump", "-q", "-R", flow_dir, "-o", "fmt:%ts|%te"], utc=True, check=True,
                 capture_output=True, text=True).stdout
    for row, line in zip(rows, times.splitlines()):
        row["first"], row["last"] = (utc_ms(t.strip()) for t in line.split("|"))
    return rows


PROTOCOLS = {"UDP": UDP, "TCP": TCP, "ICMP": ICMP, "ICMP6": ICMP6}


def nfdump_key(row: dict) -> tuple:
    """A flow's key fields and counts as nfdump prints them; its TCP flags
    are 'CEUAPRSF' with dots for bits not set, its ICMP type.code in dp."""
    flags = sum(1 << (7 - i) for i, c in enumerate(row["flg"]) if c != ".")
    return (row["sa"], row["da"], PROTOCOLS[row["pr"]], int(row["sp"]), int(row["dp"]),
            int(row["ipkt"]), int(row["ibyt"]), flags, int(row["stos"]), int(row["in"]),
            int(row["out"]))


def our_key(flow: dict) -> tuple:
    """The same from a JSON line: ICMP templates carry no ports but the type
    and code, nor TCP flags."""
    return (flow["src"], flow["dst"], flow["proto"], flow.get("sport", 0), flow["dport"],
            flow["packets"], flow["bytes"], flow.get("tcp_flags", 0), flow["tos"],
            flow["input"], flow["output"])


def json_lines(path: str) -> List[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def decode(collector: Collector, datagrams: List[bytes], *, source: str = "127.0.0.1"
           ) -> None:
    """Send `datagrams` through loopback from `source` to a Reader and give
    each received batch to `collector`."""
    from udp_reader import Reader

    with Reader("127.0.0.1:0") as reader, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as exporter:
        exporter.bind((source, 0))
        for start in range(0, len(datagrams), 100):  # what the receive buffer holds
            for d in datagrams[start:start + 100]:
                exporter.sendto(d, reader.address)  # loopback: queued on return
            while (batch := reader.receive_batch()) is not None:
                collector.add(batch)
    collector.flush()


def flows_of(path: str) -> List[dict]:
    return json_lines(path) if os.path.exists(path) else []


# -- softflowd, checked against nfdump ------------------------------------------

@pytest.mark.parametrize("version", ["9", "10"])
def test_softflowd_export_decoded_as_nfdump_reads_it(version, record_dir, monkeypatch):
    needs("softflowd", "nfcapd", "nfdump")
    pcap = os.path.join(record_dir, "traffic.pcap")
    write_pcap(pcap, FLOWS)
    # Times since the exporter's boot (-a: booted at the pcap's start), then
    # absolute milliseconds: the second export redefines the first's
    # template ids with other fields, a template refresh of a new layout.
    datagrams = (softflowd_export(pcap, "-v", version, "-a")
                 + softflowd_export(pcap, "-v", version, "-A", "milli"))
    out = os.path.join(record_dir, "flows.jsonl")
    monkeypatch.setenv("NETFLOW_OUT", out)
    shutil.copy(os.path.join(EXAMPLES, "netflow_v9.py"), record_dir)  # on the server's path
    server = Server("netflow_v9:on_batch", "--batches", record_dir=record_dir)
    server.status(until=serving(1))
    replay(datagrams, server.port)
    assert server.stop() == 0
    ours = json_lines(out)
    theirs = nfdump_flows(datagrams, record_dir)
    assert len(theirs) == 2 * len(FLOWS)
    assert Counter(map(our_key, ours)) == Counter(map(nfdump_key, theirs))
    # Both match the traffic made: IP length = IP header + 8 (UDP), 20 (TCP)
    # or 8 (ICMP) + payload.
    made = Counter()
    for src, dst, proto, sport, dport, packets, size in FLOWS:
        ip = 40 if ":" in src else 20
        made[(src, dst, proto, sport, dport, packets,
              packets * (ip + {UDP: 8, TCP: 20, ICMP: 8}[proto] + size))] += 2
    assert Counter(our_key(f)[:7] for f in ours) == made
    # Every flow's first packet came at START and one a second after.
    assert sorted((f["first"], f["last"]) for f in ours) == sorted(
        (START * 1000, (START + packets - 1) * 1000) for *_, packets, _ in FLOWS * 2)
    ours_times = Counter((our_key(f), f["first"], f["last"]) for f in ours)
    if version == "9":
        assert ours_times == Counter((nfdump_key(r), r["first"], r["last"]) for r in theirs)
    else:  # nfdump 1.7 reads IPFIX flowStartSysUpTime as the end and the end as the start
        assert ours_times == Counter((nfdump_key(r), min(r["first"], r["last"]),
                                      max(r["first"], r["last"])) for r in theirs)


def template_sets(datagram: bytes) -> int:
    """How many template sets a softflowd datagram carries."""
    version = struct.unpack_from("!H", datagram)[0]
    at, template_ids = (20, (0, 1)) if version == 9 else (16, (2, 3))  # after the header
    count = 0
    while at + 4 <= len(datagram):
        set_id, length = struct.unpack_from("!HH", datagram, at)
        count += set_id in template_ids
        at += length
    return count


@pytest.mark.parametrize("version", ["9", "10"])
def test_data_sets_before_their_template_are_counted_and_reported(version, record_dir):
    needs("softflowd", "nfcapd", "nfdump")
    pcap = os.path.join(record_dir, "traffic.pcap")
    write_pcap(pcap, many_flows(1000))
    datagrams = softflowd_export(pcap, "-v", version, "-a")
    # softflowd sends its templates with its first datagram and every 16th.
    assert [i for i, d in enumerate(datagrams) if template_sets(d)] == [0, 16]
    late = datagrams[1:]  # as if the collector started after the first
    port = free_port()
    collector = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, "netflow_v9.py"),
                                  f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    try:
        wait_until_bound(port)
        replay(late, port)
    finally:
        collector.send_signal(signal.SIGTERM)
        out, err = collector.communicate(timeout=DEADLINE)
    assert collector.returncode == 0, err
    ours = [json.loads(line) for line in out.splitlines()]
    theirs = nfdump_flows(late, record_dir)
    assert Counter(map(our_key, ours)) == Counter(map(nfdump_key, theirs))
    assert 0 < len(ours) < 1000
    assert ("15 data sets came before their template (not decoded): 127.0.0.1 domain 0 "
            "template 1024: 15") in err


# -- the state a worker hands on -------------------------------------------------

@pytest.mark.parametrize("version", ["9", "10"])
def test_a_collector_started_from_handed_on_state_decodes_at_once(version, tmp_path,
                                                                   monkeypatch):
    needs("softflowd")
    pcap = str(tmp_path / "traffic.pcap")
    write_pcap(pcap, many_flows(1000))
    datagrams = softflowd_export(pcap, "-v", version, "-a")
    everything = Collector(str(tmp_path / "all.jsonl"), Templates())
    decode(everything, datagrams[:16])
    # The worker that leaves saw the templates (and IPFIX's boot time) ...
    monkeypatch.setattr(netflow_v9, "templates", Templates())
    leaving = Collector(str(tmp_path / "leaving.jsonl"), netflow_v9.templates)
    decode(leaving, datagrams[:1])
    state = netflow_v9.save_state()
    # ... the one that takes over starts empty, takes the state and gets
    # only data sets.
    monkeypatch.setattr(netflow_v9, "templates", Templates())
    netflow_v9.restore_state(state)
    taking_over = Collector(str(tmp_path / "taking_over.jsonl"), netflow_v9.templates)
    decode(taking_over, datagrams[1:16])
    assert not taking_over.unknown and not taking_over.malformed
    taken_over = flows_of(str(tmp_path / "taking_over.jsonl"))
    assert len(taken_over) == 15 * 32  # softflowd's full data sets
    handed_on = flows_of(str(tmp_path / "leaving.jsonl")) + taken_over
    assert handed_on == flows_of(str(tmp_path / "all.jsonl"))
    assert {(f["first"], f["last"]) for f in handed_on} == {(START * 1000, START * 1000)}
    # Without it, the same data sets are lost to a missing template.
    empty = Collector(str(tmp_path / "empty.jsonl"), Templates())
    decode(empty, datagrams[1:16])
    assert empty.unknown == {("127.0.0.1", 0, 1024): 15}
    assert flows_of(str(tmp_path / "empty.jsonl")) == []


def test_state_round_trip_and_refusal_of_corrupt_or_oversized_state(monkeypatch):
    state = Templates()
    state.add(("127.0.0.1", 0, 256), Template(((8, 0, 4), (96, 0, VARIABLE), (1, 29305, 4))))
    state.add(("2001:db8::1", 7, 257), Template(((149, 0, 4), (160, 0, 8)), True, 1))
    state.set_boot("2001:db8::1", 7, START * 1000)
    data = state.dump()
    back = Templates.load(data)
    assert back.templates == state.templates and back.boots == state.boots
    assert back.dump() == data

    def document(**change) -> bytes:
        doc = json.loads(data)
        doc.update(change)
        return json.dumps(doc).encode()

    good = json.loads(data)["templates"][0]
    refused = [
        (data[:-1], "not JSON"), (b"\xff\xfe", "not JSON"),
        (b" " * (MAX_STATE_BYTES + 1), f"more than {MAX_STATE_BYTES}"),
        (b"[]", "not a 'udp-reader netflow_v9 templates' document"),
        (document(version=2), "version 2, this collector reads 1"),
        (document(templates={}), "templates must be a list"),
        (document(templates=[good] * (MAX_TEMPLATES + 1)), f"at most {MAX_TEMPLATES}"),
        (document(templates=[[*good[:5], []]]), "bad template"),  # no field
        (document(templates=[[*good[:5], [[8, 0, 4]] * (MAX_FIELDS + 1)]]), "bad template"),
        (document(templates=[[*good[:5], [[8, 0, 0]]]]), "bad template"),  # no length
        (document(templates=[["nowhere", *good[1:]]]), "bad template"),
        (document(templates=[[good[0], 0, 7, *good[3:]]]), "bad template"),  # id under 256
        (document(boots=[["127.0.0.1", 0, -1]]), "bad boot time"),
    ]
    for blob, why in refused:
        with pytest.raises(ValueError, match="netflow_v9 state refused: .*" + re.escape(why)):
            Templates.load(blob)
    # A refused state leaves the collector's own as it was.
    monkeypatch.setattr(netflow_v9, "templates", back)
    with pytest.raises(ValueError):
        netflow_v9.restore_state(document(version=2))
    assert netflow_v9.save_state() == data
    # The largest state the caps allow is within the size that load() takes.
    widest = (0xFFFF, 0xFFFFFFFF, VARIABLE)
    exporter = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    full = Templates()
    for i in range(MAX_TEMPLATES):
        full.add((exporter, 0xFFFFFFFF, 0xFFFF - i), Template((widest,) * MAX_FIELDS))
    for i in range(MAX_BOOTS):
        full.set_boot(exporter, i, 1 << 62)
    assert len(full.dump()) <= MAX_STATE_BYTES
    assert len(Templates.load(full.dump()).templates) == MAX_TEMPLATES


# -- hand-built IPFIX ------------------------------------------------------------

def ipfix(domain: int, *sets: bytes) -> bytes:
    body = b"".join(sets)
    return struct.pack("!HHIII", 10, 16 + len(body), START + 60, 0, domain) + body


def ipfix_set(set_id: int, *records: bytes, padding: int = 0) -> bytes:
    body = b"".join(records) + bytes(padding)
    return struct.pack("!HH", set_id, 4 + len(body)) + body


def fields(*specs: tuple) -> bytes:
    """Field specifiers: (type, length) or (type, length, enterprise number)."""
    return b"".join(struct.pack("!HH", kind | (0x8000 if pen else 0), length)
                    + (struct.pack("!I", pen[0]) if pen else b"")
                    for kind, length, *pen in specs)


def template(template_id: int, *specs: tuple) -> bytes:
    return struct.pack("!HH", template_id, len(specs)) + fields(*specs)


def options_template(template_id: int, scope: int, *specs: tuple) -> bytes:
    return struct.pack("!HHH", template_id, len(specs), scope) + fields(*specs)


def withdrawal(template_id: int) -> bytes:
    return struct.pack("!HH", template_id, 0)


def varlen(value: bytes) -> bytes:
    """IPFIX's variable length: one byte, or 255 and two more."""
    head = bytes([len(value)]) if len(value) < 255 else b"\xff" + struct.pack("!H", len(value))
    return head + value


def ip(address: str) -> bytes:
    return socket.inet_aton(address)


def test_ipfix_variable_length_and_enterprise_fields(tmp_path):
    # applicationName, a number of enterprise 29305, bytes of enterprise 9:
    # all three unknown to nfdump and softflowd.
    layout = template(300, (8, 4), (12, 4), (2, 8), (152, 8), (153, 8), (96, VARIABLE),
                      (1, 4, 29305), (12235, VARIABLE, 9))
    at = START * 1000
    records = [ip("10.9.0.1") + ip("10.9.0.2") + struct.pack("!QQQ", 5, at, at + 500)
               + varlen(b"dns") + struct.pack("!I", 7) + varlen(b"\x01\x02"),
               ip("10.9.0.3") + ip("10.9.0.4") + struct.pack("!QQQ", 1 << 40, at, at)
               + varlen("é".encode() * 150) + struct.pack("!I", 8) + varlen(b"")]
    out = str(tmp_path / "flows.jsonl")
    collector = Collector(out, Templates())
    decode(collector, [ipfix(1, ipfix_set(2, layout)),
                       ipfix(1, ipfix_set(300, *records, padding=3))])
    common = {"exporter": "127.0.0.1", "domain": 1}
    assert json_lines(out) == [
        dict(common, src="10.9.0.1", dst="10.9.0.2", packets=5, first=at, last=at + 500,
             application="dns", **{"ie29305.1": 7, "ie9.12235": "0102"}),
        dict(common, src="10.9.0.3", dst="10.9.0.4", packets=1 << 40, first=at, last=at,
             application="é" * 150, **{"ie29305.1": 8, "ie9.12235": ""})]
    assert not collector.malformed and not collector.unknown


def test_ipfix_withdrawal_refresh_exporters_and_domains(tmp_path):
    out = str(tmp_path / "flows.jsonl")
    collector = Collector(out, Templates())
    # Times since boot; the boot time comes in an options record (scope:
    # the observation domain, then systemInitTimeMilliseconds).
    uptime_layout = template(256, (8, 4), (12, 4), (2, 4), (22, 4), (21, 4))
    boot = options_template(257, 1, (149, 4), (160, 8))

    def flow(i: int) -> bytes:
        return ip(f"10.8.0.{i}") + ip("10.8.1.1") + struct.pack("!III", i, 1000 * i, 1000 * i + 10)

    def step(*datagrams: bytes, source: str = "127.0.0.1") -> List[tuple]:
        before = len(flows_of(out))
        decode(collector, list(datagrams), source=source)
        return [(f["exporter"], f["domain"], f["src"], f.get("first"), f.get("packets"))
                for f in flows_of(out)[before:]]

    # Two domains with a template 256 each; only domain 1 says when it booted.
    assert step(ipfix(1, ipfix_set(2, uptime_layout), ipfix_set(3, boot),
                      ipfix_set(257, struct.pack("!IQ", 1, START * 1000))),
                ipfix(2, ipfix_set(2, uptime_layout)),
                ipfix(1, ipfix_set(256, flow(1))), ipfix(2, ipfix_set(256, flow(2)))) == [
        ("127.0.0.1", 1, "10.8.0.1", START * 1000 + 1000, 1),
        ("127.0.0.1", 2, "10.8.0.2", None, 2)]  # null: a time since an unknown boot
    # Another exporter's domain 1 is not this one's.
    assert step(ipfix(1, ipfix_set(256, flow(3))), source="127.0.0.2") == []
    assert collector.unknown == {("127.0.0.2", 1, 256): 1}
    # Template 256 withdrawn in domain 1: its data sets are counted, domain 2 decodes.
    assert step(ipfix(1, ipfix_set(2, withdrawal(256))),
                ipfix(1, ipfix_set(256, flow(4))), ipfix(2, ipfix_set(256, flow(5)))) == [
        ("127.0.0.1", 2, "10.8.0.5", None, 5)]
    assert collector.unknown[("127.0.0.1", 1, 256)] == 1
    # A refresh with a new layout for the same id (8-byte packets now) ...
    wide = template(256, (8, 4), (12, 4), (2, 8))
    assert step(ipfix(2, ipfix_set(2, wide)),
                ipfix(2, ipfix_set(256, ip("10.8.0.6") + ip("10.8.1.1")
                                   + struct.pack("!Q", 6)))) == [
        ("127.0.0.1", 2, "10.8.0.6", None, 6)]
    # ... and every template of domain 2 withdrawn at once (template id 2),
    # while domain 1 keeps its options template and boot time.
    assert step(ipfix(2, ipfix_set(2, withdrawal(2))), ipfix(2, ipfix_set(256, flow(7))),
                ipfix(1, ipfix_set(2, uptime_layout)), ipfix(1, ipfix_set(256, flow(8)))) == [
        ("127.0.0.1", 1, "10.8.0.8", START * 1000 + 8000, 8)]
    assert collector.unknown[("127.0.0.1", 2, 256)] == 1
    assert ("127.0.0.1", 1, 257) in collector.templates.templates
    assert not collector.malformed


def test_malformed_datagrams_are_counted_and_skipped_and_memory_stays_bounded(
        tmp_path, monkeypatch):
    monkeypatch.setattr(netflow_v9, "MAX_TEMPLATES", 50)
    monkeypatch.setattr(netflow_v9, "MAX_UNKNOWN", 20)
    out = str(tmp_path / "flows.jsonl")
    collector = Collector(out, Templates())
    pair = template(256, (8, 4), (12, 4))
    v9_header = struct.pack("!HHIIII", 9, 1, 0, START, 0, 0)
    malformed = {
        "short header": [b"\x00", struct.pack("!HH", 9, 1), struct.pack("!HH", 10, 16)],
        "not v9 or IPFIX": [struct.pack("!HH", 5, 1) + bytes(70)],
        "length past the datagram": [struct.pack("!HHIII", 10, 1000, START, 0, 0)],
        "short set": [struct.pack("!HHIII", 10, 18, START, 0, 0) + b"\x00\x02"],
        "set past the datagram": [ipfix(0, struct.pack("!HH", 2, 100) + pair),
                                  ipfix(0, struct.pack("!HH", 256, 2))],
        "template of no field or too many": [
            v9_header + struct.pack("!HHHH", 0, 8, 256, 0),  # v9 has no withdrawal
            ipfix(0, ipfix_set(2, struct.pack("!HH", 256, 1000)))],
        "short template": [ipfix(0, ipfix_set(2, struct.pack("!HH", 256, 100) + fields((8, 4))))],
        "template id under 256": [ipfix(0, ipfix_set(2, template(7, (8, 4))))],
        "field of no length": [ipfix(0, ipfix_set(2, template(258, (8, 0))))],
        "reserved set id": [ipfix(0, ipfix_set(5, b"\x00" * 8))],
    }
    datagrams = [d for group in malformed.values() for d in group]
    # A variable-length value longer than what is left of its set.
    datagrams += [ipfix(0, ipfix_set(2, template(259, (8, 4), (96, VARIABLE)))),
                  ipfix(0, ipfix_set(259, ip("10.7.0.1") + b"\x05dns"))]
    malformed["record past its set"] = [datagrams[-1]]
    decode(collector, datagrams)  # nothing raised
    assert collector.malformed == {why: len(group) for why, group in malformed.items()}
    # What was well formed still decodes.
    decode(collector, [ipfix(0, ipfix_set(2, pair)),
                       ipfix(0, ipfix_set(256, ip("10.7.0.1") + ip("10.7.0.2")))])
    assert [(f["src"], f["dst"]) for f in json_lines(out)] == [("10.7.0.1", "10.7.0.2")]
    # Forged templates from 200 domains: the latest 50 are kept.
    decode(collector, [ipfix(domain, ipfix_set(2, pair)) for domain in range(1000, 1200)])
    assert len(collector.templates.templates) == 50
    assert collector.templates.forgotten == 200 + 2 - 50
    assert ("127.0.0.1", 1199, 256) in collector.templates.templates
    # Data sets for 100 unknown templates: 20 counted apart, the rest together.
    decode(collector, [ipfix(domain, ipfix_set(300, bytes(8))) for domain in range(100)])
    assert len(collector.unknown) == 20 and collector.unknown_elsewhere == 80


def v9(*sets: bytes) -> bytes:
    return struct.pack("!HHIIII", 9, len(sets), 60_000, START + 60, 0, 0) + b"".join(sets)


# Datagrams with sets of every kind, for the cuts and byte flips below.
SAMPLES = {
    "ipfix": (lambda *sets: ipfix(1, *sets), [
        ipfix_set(2, template(300, (8, 4), (1, 4, 29305), (22, 4), (96, VARIABLE),
                              (12235, VARIABLE, 9))),
        ipfix_set(3, options_template(301, 1, (149, 4), (160, 8))),
        ipfix_set(301, struct.pack("!IQ", 1, START * 1000)),
        ipfix_set(300, ip("10.9.0.1") + struct.pack("!II", 7, 5) + varlen(b"dns")
                  + varlen(b"x" * 300), padding=1),
        ipfix_set(2, withdrawal(300), withdrawal(2))]),
    "v9": (v9, [
        ipfix_set(0, template(256, (8, 4), (12, 4), (2, 4), (21, 4), (22, 4))),
        ipfix_set(1, struct.pack("!HHH", 257, 4, 4) + fields((1, 4), (34, 4))),
        ipfix_set(257, struct.pack("!II", 0, 10)),
        ipfix_set(256, ip("10.9.0.1") + ip("10.9.0.2") + struct.pack("!III", 3, 2000, 1000),
                  padding=2)]),
}


def cut_set(whole: bytes, keep: int) -> bytes:
    """A set of only the first `keep` bytes of its body, its length saying so."""
    body = whole[4:4 + keep]
    return whole[:2] + struct.pack("!H", 4 + len(body)) + body


@settings(max_examples=1000, deadline=None)
@given(name=st.sampled_from(sorted(SAMPLES)), which=st.integers(0, 4), keep=st.integers(0, 24),
       flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=3),
       cut=st.one_of(st.none(), st.integers(0, 600)))
def test_no_datagram_makes_the_collector_raise_or_write_anything_but_json(name, which, keep,
                                                                          flips, cut):
    """One set cut short where its structure is (its first 24 bytes, the
    lengths of its values), bytes flipped, the datagram cut."""
    make, sets = SAMPLES[name]
    data = bytearray(make(*(cut_set(s, keep) if i == which % len(sets) else s
                            for i, s in enumerate(sets))))
    for at, byte in flips:
        data[at % len(data)] = byte
    collector = Collector(os.devnull, Templates())
    collector.datagram("127.0.0.1", memoryview(bytes(data[:cut])))
    collector.decode_pending()
    for line in collector.sink.lines:
        assert json.loads(line)["exporter"] == "127.0.0.1"
    # Whatever was learned can be handed on.
    assert Templates.load(collector.templates.dump()).templates == collector.templates.templates


def test_the_samples_decode_whole():
    """The datagrams cut and flipped above, as they are."""
    collector = Collector(os.devnull, Templates())
    for make, sets in SAMPLES.values():
        collector.datagram("127.0.0.1", memoryview(make(*sets)))
    collector.decode_pending()
    flows = [json.loads(line) for line in collector.sink.lines]
    assert [(f["src"], f.get("dst"), f["first"]) for f in flows] == [
        ("10.9.0.1", None, START * 1000 + 5), ("10.9.0.1", "10.9.0.2", START * 1000 + 1000)]
    assert flows[0]["ie9.12235"] == "78" * 300 and flows[1]["last"] == START * 1000 + 2000
    assert not collector.malformed and not collector.unknown
    # IPFIX's template 300 withdrawn, then all its data templates (not options)
    assert set(collector.templates.templates) == {
        ("127.0.0.1", 1, 301), ("127.0.0.1", 0, 256), ("127.0.0.1", 0, 257)}


# -- the binary format -------------------------------------------------------------

def npy_records(path: str) -> np.ndarray:
    """Every array an NETFLOW_FORMAT=npy collector wrote, read as its docstring says."""
    arrays = []
    with open(path, "rb") as f:
        while f.peek(1):
            arrays.append(np.load(f))
    return np.concatenate(arrays)


def record_in_flow_fields(record: np.void) -> tuple:
    """A FLOW record's values, addresses as text."""
    values = []
    for name in FLOW.names:
        if FLOW.fields[name][0].kind == "V":
            address = ipaddress.IPv6Address(bytes(record[name]))
            values.append(str(address.ipv4_mapped or address))
        else:
            values.append(int(record[name]))
    return tuple(values)


def json_in_flow_fields(flow: dict) -> tuple:
    """A JSON line's values of FLOW's fields: 0 (an address: ::) for a field
    its template has not, and for a null time."""
    return tuple(str(ipaddress.ip_address(flow.get(name) or "::"))
                 if FLOW.fields[name][0].kind == "V" else flow.get(name) or 0
                 for name in FLOW.names)


@pytest.mark.parametrize("version", ["9", "10"])
def test_npy_records_are_the_flows_of_the_json_lines(version, tmp_path):
    needs("softflowd")
    pcap = str(tmp_path / "traffic.pcap")
    write_pcap(pcap, FLOWS)
    # Two layouts of each template (see the nfdump test), IPv4 and IPv6.
    exported = (softflowd_export(pcap, "-v", version, "-a")
                + softflowd_export(pcap, "-v", version, "-A", "milli"))
    # Variable-length fields, IPv4 in a record read value by value, and a
    # time since a boot not yet known (null in JSON, 0 in FLOW).
    make, sets = SAMPLES["ipfix" if version == "10" else "v9"]
    built = [make(*sets), ipfix(2, ipfix_set(2, template(256, (8, 4), (22, 4))),
                                ipfix_set(256, ip("10.9.0.5") + struct.pack("!I", 7)))]
    outputs = {}
    for format in ("json", "npy"):
        outputs[format] = str(tmp_path / f"flows.{format}")
        collector = Collector(outputs[format], Templates(), format=format)
        decode(collector, exported)  # one write each
        decode(collector, built)
        assert not collector.unknown and not collector.malformed
    records, flows = npy_records(outputs["npy"]), json_lines(outputs["json"])
    assert records.dtype == FLOW
    assert len(records) == len(flows) == 2 * len(FLOWS) + 2
    assert Counter(map(record_in_flow_fields, records)) == Counter(map(json_in_flow_fields, flows))
    assert sum(f["src"] == "2001:db8::1" for f in flows) == 2
    assert [f["first"] for f in flows if f["domain"] == 2] == [None]
