"""The collectors in examples/, fed by real senders nobody here wrote:
util-linux `logger` (syslog), the `statsd` Python client, and `softflowd`
exporting a pcap made here (NetFlow v5), cross-checked by nfdump. Each
runs under `udp-reader serve`, and its worker_stop() writes the tail."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys

import statsd

from conftest import DEADLINE, wait_until_bound
from external import needs, plain_env, tool, utc_ms, wait_until_queue_empty
from places import EXAMPLES
from server import Server



def serve_example(name: str, handler: str, record_dir: str, *args: str) -> Server:
    shutil.copy(os.path.join(EXAMPLES, f"{name}.py"), record_dir)  # on the server's PYTHONPATH
    server = Server(f"{name}:{handler}", *args, record_dir=record_dir)
    server.status()
    return server


def json_lines(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_syslog_from_logger_to_json_lines(record_dir, monkeypatch):
    needs("logger")
    out = os.path.join(record_dir, "syslog.jsonl")
    monkeypatch.setenv("SYSLOG_OUT", out)
    server = serve_example("syslog_json", "on_packet", record_dir, "--workers", "2")
    to = ["logger", "--udp", "--server", "127.0.0.1", "--port", str(server.port)]
    lines = os.path.join(record_dir, "lines.txt")
    with open(lines, "w") as f:
        f.write("".join(f"line {i}\n" for i in range(50)))
    for command in (
        [*to, "--rfc5424", "-t", "app", "-p", "local3.warning", "--msgid", "ID47",
         "--sd-id", "ex@32473", "--sd-param", 'k="v\\]x"', "--sd-param", 'q="a b"', "hello 5424"],
        [*to, "--rfc3164", "-t", "app", "-i", "-p", "user.err", "hello 3164"],
        [*to, "--rfc5424", "-t", "bulk", "-f", lines],
    ):
        tool(command, check=True)
    assert server.stop() == 0
    records = json_lines(out)
    assert len(records) == 52
    by_message = {r["message"]: r for r in records}
    new = by_message["hello 5424"]
    assert (new["format"], new["facility"], new["severity"], new["app"], new["msgid"]) == \
        ("rfc5424", "local3", "warning", "app", "ID47")
    assert new["sd"]["ex@32473"] == {"k": "v]x", "q": "a b"}
    assert new["sd"]["timeQuality"]["tzKnown"] == "1"
    assert new["from"] == "127.0.0.1" and new["host"] == socket.gethostname()
    old = by_message["hello 3164"]
    assert (old["format"], old["facility"], old["severity"], old["app"]) == \
        ("rfc3164", "user", "err", "app")
    assert int(old["pid"]) > 0
    assert sorted(r["message"] for r in records if r["app"] == "bulk") == \
        sorted(f"line {i}" for i in range(50))


def test_statsd_client_sums_per_interval(record_dir, monkeypatch):
    out = os.path.join(record_dir, "stats.jsonl")
    monkeypatch.setenv("STATSD_OUT", out)
    monkeypatch.setenv("STATSD_FLUSH", "3600")  # one interval: the stop ends it
    server = serve_example("statsd_aggregator", "on_batch", record_dir, "--batches")
    client = statsd.StatsClient("127.0.0.1", server.port)
    for _ in range(200):
        client.incr("hits")
    client.incr("bytes", 1500)
    client.incr("sampled", 1, rate=1.0)
    for ms in range(1, 101):
        client.timing("latency", ms)
    client.gauge("queue", 5)
    client.gauge("queue", 3, delta=True)
    with client.pipeline() as many:  # several metrics in one datagram
        many.incr("hits", 10)
        many.timing("latency", 1000)
        many.gauge("queue", -1, delta=True)
    assert server.stop() == 0
    [report] = json_lines(out)
    assert report["counters"] == {"hits": 210, "bytes": 1500, "sampled": 1}
    latency = report["timers"]["latency"]
    assert (latency["count"], latency["sum"], latency["min"], latency["max"]) == \
        (101, 5050 + 1000, 1, 1000)
    assert latency["p90"] == 91  # the 91st of 101 sorted values
    assert report["gauges"] == {"queue": 7}


def test_statsd_aggregator_standalone_flushes_every_interval(record_dir):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, STATSD_FLUSH="0.2")
    proc = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, "statsd_aggregator.py"),
                             f"127.0.0.1:{port}"], stdout=subprocess.PIPE, env=env)
    try:
        wait_until_bound(port)
        client = statsd.StatsClient("127.0.0.1", port)
        for _ in range(500):
            client.incr("hits")
        first = proc.stdout.readline()  # an interval's report, before any stop
        for _ in range(500):
            client.incr("hits")
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0
    reports = [json.loads(line) for line in (first + rest).splitlines()]
    assert "hits" in reports[0]["counters"]
    assert sum(r["counters"].get("hits", 0) for r in reports) == 1000


# The traffic softflowd turns into flows: (src, dst, proto, sport, dport, packets, payload).
FLOWS = [("10.0.0.1", "10.0.0.2", 17, 1000, 53, 10, 50),
         ("10.0.0.3", "10.0.0.4", 6, 40000, 80, 7, 500),
         ("10.0.0.1", "10.0.0.9", 17, 1001, 514, 3, 100),
         ("192.0.2.7", "198.51.100.1", 17, 5353, 5353, 25, 20)]


def _frame(src: str, dst: str, proto: int, sport: int, dport: int, payload: bytes) -> bytes:
    """An Ethernet frame with IPv4 and UDP or TCP (ACK|PSH) around payload."""
    if proto == socket.IPPROTO_UDP:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    else:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, 0x18, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + l4


def write_pcap(path: str) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))  # Ethernet
        for second in range(max(flow[5] for flow in FLOWS)):
            for src, dst, proto, sport, dport, packets, size in FLOWS:
                if second < packets:
                    frame = _frame(src, dst, proto, sport, dport, b"x" * size)
                    f.write(struct.pack("=IIII", 1_700_000_000 + second, 0, len(frame),
                                        len(frame)) + frame)


def test_netflow_from_softflowd_matches_nfdump(record_dir, monkeypatch):
    needs("softflowd", "nfcapd", "nfdump")
    pcap = os.path.join(record_dir, "traffic.pcap")
    write_pcap(pcap)
    out = os.path.join(record_dir, "flows.jsonl")
    monkeypatch.setenv("NETFLOW_OUT", out)
    server = serve_example("netflow_v5", "on_batch", record_dir, "--batches")
    # nfdump's own collector gets the same export, for the cross-check.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        nfcapd_port = probe.getsockname()[1]
    flow_dir = os.path.join(record_dir, "nfcapd")
    os.mkdir(flow_dir)
    nfcapd = subprocess.Popen(["nfcapd", "-b", "127.0.0.1", "-p", str(nfcapd_port),
                               "-w", flow_dir], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL,
                              env=plain_env())
    try:
        wait_until_bound(nfcapd_port)
        tool(["softflowd", "-r", pcap, "-v", "5", "-d",
              "-n", f"127.0.0.1:{server.port},127.0.0.1:{nfcapd_port}"],
             check=True, capture_output=True)
        wait_until_queue_empty(nfcapd_port)
    finally:
        nfcapd.send_signal(signal.SIGTERM)
        nfcapd.wait(DEADLINE)
    assert server.stop() == 0
    ours = {(f["src"], f["dst"], f["proto"], f["sport"], f["dport"], f["packets"], f["bytes"])
            for f in json_lines(out)}
    dump = tool(["nfdump", "-R", flow_dir, "-o", "csv"], utc=True, check=True,
                capture_output=True, text=True).stdout
    flows = dump.split("\n\n")[0].split("\nSummary")[0]  # the flow table, not the summary
    rows = list(csv.DictReader(io.StringIO(flows)))
    assert rows
    proto = {"UDP": 17, "TCP": 6}
    theirs = {(r["sa"], r["da"], proto[r["pr"]], int(r["sp"]), int(r["dp"]), int(r["ipkt"]),
               int(r["ibyt"])) for r in rows}
    assert ours == theirs
    # And both match the traffic made: IP length = 20 + 8 (UDP) or 20 (TCP) + payload.
    made = {(s, d, p, sp, dp, n, n * (20 + (8 if p == 17 else 20) + size))
            for s, d, p, sp, dp, n, size in FLOWS}
    assert ours == made
    # softflowd -r exports with an uptime of 0, so every flow started
    # "before boot": its times wrap around 2**32 ms, and must come out as
    # nfdump's (ms since the epoch; nfdump prints them in UTC here).
    ours_times = {(f["src"], f["dst"], f["sport"]): (f["first"], f["last"])
                  for f in json_lines(out)}
    times = tool(["nfdump", "-q", "-R", flow_dir, "-o", "fmt:%sa|%da|%sp|%ts|%te"], utc=True,
                 check=True, capture_output=True, text=True).stdout
    theirs_times = {}
    for line in times.splitlines():
        sa, da, sp, ts, te = (field.strip() for field in line.split("|"))
        theirs_times[(sa, da, int(sp))] = (utc_ms(ts), utc_ms(te))
    assert len(theirs_times) == len(FLOWS)
    assert ours_times == theirs_times


def test_syslog_json_escapes_what_a_terminal_would_obey(record_dir, monkeypatch):
    # C0 (ESC, BEL), C1 (CSI, OSC, ST, NEL), DEL, U+2028/2029 and bidi
    # overrides from a sender reach the output only as JSON escapes.
    hostile = "\x1b]0;owned\x07\x9b31m\x9d0;t\x9c\x85\x7f\u2028\u2029\u202e\u2066\u200f"
    message = f"<13>1 - host app - - - hi {hostile} é"
    out = os.path.join(record_dir, "syslog.jsonl")
    monkeypatch.setenv("SYSLOG_OUT", out)
    server = serve_example("syslog_json", "on_packet", record_dir)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), ("127.0.0.1", server.port))
    wait_until_queue_empty(server.port)
    assert server.stop() == 0
    with open(out, encoding="utf-8") as f:
        text = f.read()
    assert all(c.isprintable() or c == "\n" for c in text)
    assert "é" in text  # still readable UTF-8
    [record] = json_lines(out)
    assert record["message"] == f"hi {hostile} é"


def strict_json(line: str) -> dict:
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(line, parse_constant=refuse)


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def test_statsd_aggregator_refuses_bad_lines_alone_and_bounds_names(record_dir):
    # Attacks from the outside: bad values beside good ones in a datagram,
    # NaN and infinities, 5,000 new gauge names past a cap of 1,000, and
    # 64 KB datagrams whose one long name once sized a numpy array for all.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, STATSD_FLUSH="3600", STATSD_MAX_NAMES="1000")
    proc = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, "statsd_aggregator.py"),
                             f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)
    bad = b"hits:1|c\nbad:1.2.3|c\nrate:1|c|@.\ninf:1e999|g\nhuge:1e300|c\nnan:nan|g\n"
    huge = b"x" * 30000 + b":1|c\n" + b"a:1|c\n" * 5000
    try:
        wait_until_bound(port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(400):
                s.sendto(b"hits:1|c\n" * 50, ("127.0.0.1", port))
                s.sendto(bad, ("127.0.0.1", port))
                if i % 50 == 49:
                    wait_until_queue_empty(port)
            for i in range(0, 5000, 50):
                s.sendto(b"".join(b"g%d:%d|g\n" % (n, n) for n in range(i, i + 50)),
                         ("127.0.0.1", port))
                wait_until_queue_empty(port)
            for _ in range(16):
                s.sendto(huge, ("127.0.0.1", port))
        wait_until_queue_empty(port)
        peak = peak_rss(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    reports = [strict_json(line) for line in out.splitlines()]
    assert sum(r["counters"].get("hits", 0) for r in reports) == 400 * 51
    assert sum(r["counters"].get("a", 0) for r in reports) == 16 * 5000
    refused = {k: sum(r["refused"].get(k, 0) for r in reports)
               for k in ("malformed", "bad_value", "too_many_names")}
    assert refused == {"malformed": 400 + 16, "bad_value": 400 * 4, "too_many_names": 4000}
    assert len(reports[-1]["gauges"]) == 1000
    assert "inf" not in reports[-1]["gauges"]
    assert "refused 6016 StatsD line(s)" in err
    assert peak < 300 << 20


def v5(sequence: int, count: int, engine: int = 0, *, valid: bool = True) -> bytes:
    """A NetFlow v5 export datagram of `count` empty flows (one record short
    when not `valid`, so its length does not match its count)."""
    header = struct.pack(">HHIIIIBBH", 5, count, 0, 0, 0, sequence, engine >> 8, engine & 255, 0)
    return header + bytes(48 * (count if valid else count - 1))


def test_netflow_invalid_datagrams_neither_count_lost_flows_nor_grow_the_exporter_table(
        tmp_path, monkeypatch):
    from udp_reader import Reader

    monkeypatch.syspath_prepend(EXAMPLES)
    import netflow_v5
    monkeypatch.setattr(netflow_v5, "MAX_EXPORTERS", 100, raising=False)
    collector = netflow_v5.Collector(str(tmp_path / "flows.jsonl"))
    with Reader("127.0.0.1:0") as reader, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as exporter:
        def exchange(datagrams) -> None:
            for start in range(0, len(datagrams), 100):  # what the receive buffer holds
                for d in datagrams[start:start + 100]:
                    exporter.sendto(d, reader.address)  # loopback: queued on return
                while (batch := reader.receive_batch()) is not None:
                    collector.add(batch)

        # A gap-free stream with a garbled datagram in the middle: no loss.
        exchange([v5(0, 2), v5(4_000_000_000, 3, valid=False), v5(2, 2), v5(4, 1)])
        assert (collector.invalid, collector.lost, collector.backwards) == (1, 0, 0)
        # 1,000 invalid datagrams as from 1,000 exporters (engine type and id)
        # leave the table as it was.
        exchange([v5(i, 2, engine=1 + i, valid=False) for i in range(1000)])
        assert collector.invalid == 1001 and len(collector.next_sequence) == 1
        # A real gap, and a datagram from the past, are told apart.
        exchange([v5(15, 1), v5(3, 1)])
        assert (collector.lost, collector.backwards) == (10, 1)
        # Valid datagrams from 300 exporters: the table keeps the latest 100.
        exchange([v5(0, 1, engine=1 + i) for i in range(300)])
        assert len(collector.next_sequence) == 100 and collector.forgotten == 201
    collector.flush()
    with open(tmp_path / "flows.jsonl") as f:
        assert sum(1 for _ in f) == 2 + 2 + 1 + 1 + 1 + 300
