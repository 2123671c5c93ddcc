"""`udp-reader listen` output formats, `send` and `bench`, as real subprocesses."""

from __future__ import annotations

import base64
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import DEADLINE, collect, send
from test_cli import COMMAND, finish, start
from udp_reader import Reader

PAYLOADS = [b"hello world\n", bytes(range(40)), b"", b"\xff" * 3, b"\0" * 100]


TTL, TOS = 33, 0xb9  # what every packet is sent with: ECN 1, ECT(1)


def listen_and_send(*args: str, family=socket.AF_INET, host="127.0.0.1"):
    """Run `listen` for len(PAYLOADS) packets sent from one socket with TTL
    and TOS; returns (stdout bytes, stderr text, source port)."""
    proc, (_, port) = start("listen", f"[{host}]:0" if ":" in host else f"{host}:0",
                            "--count", str(len(PAYLOADS)), *args)
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        if family == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, TTL)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, TOS)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, TTL)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, TOS)
        for p in PAYLOADS:
            s.sendto(p, (host, port))
        source_port = s.getsockname()[1]
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    return out, err.decode(), source_port, port


def test_jsonl_parses_back():
    out, _, sport, port = listen_and_send("--format", "jsonl")
    records = [json.loads(line) for line in out.decode().splitlines()]
    assert [base64.b64decode(r["payload"]) for r in records] == PAYLOADS
    for r in records:
        assert (r["src"], r["sport"], r["dst"], r["dport"], r["ifname"]) == \
            ("127.0.0.1", sport, "127.0.0.1", port, "lo")
        assert (r["ttl"], r["tos"], r["ecn"]) == (TTL, TOS, 1)
        assert r["length"] == len(base64.b64decode(r["payload"]))
        assert abs(r["time"] - time.time()) < 3600


def test_hex_dump_is_what_hexdump_c_prints():
    # Empty payloads print no dump, repeated rows collapse to "*": exactly
    # what the real `hexdump -C` makes of each payload.
    if shutil.which("hexdump") is None:
        pytest.fail("hexdump is missing: .ci/run installs it (bsdextrautils)")
    out, _, _, _ = listen_and_send("--format", "hex")
    heads = re.findall(r"^\S+ 127\.0\.0\.1:\d+ -> .*$", out.decode(), flags=re.M)
    assert len(heads) == len(PAYLOADS)
    assert all(f" ttl={TTL} tos=0xb9 ecn=1 " in head for head in heads)
    dumps = re.split(r"^\S+ 127\.0\.0\.1:\d+ -> .*$\n", out.decode(), flags=re.M)[1:]
    assert len(dumps) == len(PAYLOADS)
    for dump, payload in zip(dumps, PAYLOADS):
        expected = subprocess.run(["hexdump", "-C"], input=payload, capture_output=True,
                                  timeout=DEADLINE).stdout.decode()
        assert dump == expected


def test_summary_shows_route_and_length():
    out, _, sport, port = listen_and_send()
    lines = out.decode().splitlines()
    assert len(lines) == len(PAYLOADS)
    assert f"127.0.0.1:{sport} -> 127.0.0.1:{port} lo len=12 68 65 6c 6c 6f" in lines[0]
    assert "|hello world.|" in lines[0]
    assert "ttl=" not in lines[0]  # the summary reads no IP fields


def test_raw_is_the_payloads():
    out, _, _, _ = listen_and_send("--format", "raw")
    assert out == b"".join(PAYLOADS)


@pytest.mark.parametrize("host, family", [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)])
def test_pcap_read_by_tcpdump(host, family):
    if shutil.which("tcpdump") is None:
        pytest.fail("tcpdump is missing: .ci/run installs it")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "out.pcap")
        out, _, sport, port = listen_and_send("--write", path, host=host, family=family)
        assert out == b""  # --write alone prints nothing, as tcpdump -w
        result = subprocess.run(["tcpdump", "-r", path, "-nn", "-vv", "-x"],
                                capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 0, result.stderr
    blocks = re.split(r"^(?=\d\d:\d\d:\d\d\.\d+ IP)", result.stdout, flags=re.M)[1:]
    assert len(blocks) == len(PAYLOADS)
    for block, payload in zip(blocks, PAYLOADS):
        assert f"{host}.{sport} > {host}.{port}: " in block
        assert f"length {len(payload)}" in block
        # The TTL (hop limit) and TOS (traffic class) the datagram came with.
        if family == socket.AF_INET6:
            assert f"(class 0xb9, hlim {TTL}," in block
        else:
            assert f"(tos 0xb9,ECT(1), ttl {TTL}," in block
        if family == socket.AF_INET6:
            assert "[udp sum ok]" in block
        else:
            assert "bad cksum" not in block
        hexdata = "".join(re.findall(r"0x[0-9a-f]{4}:\s+((?:[0-9a-f]{2,4}\s?)+)", block))
        frame = bytes.fromhex(hexdata.replace(" ", ""))
        assert frame.endswith(payload)
        assert len(frame) == (28 if family == socket.AF_INET else 48) + len(payload)


def test_send_seq_payloads_arrive_exactly():
    with Reader("127.0.0.1:0", rcvbuf=16 << 20) as reader:
        host, port = reader.address
        result = subprocess.run([*COMMAND, "send", f"{host}:{port}", "--count", "5000",
                                 "--flows", "4", "--size", "8-300"],
                                capture_output=True, text=True, timeout=DEADLINE)
        assert result.returncode == 0, result.stderr
        assert re.search(r"sent 5000 datagrams \(\d+ bytes\) in .* datagrams/s", result.stdout)
        got = collect(reader, 5000, keep=lambda p: (int.from_bytes(p.data[:8], "little"),
                                                     p.src[1], len(p)))
    assert sorted(seq for seq, _, _ in got) == list(range(5000))
    assert len({sport for _, sport, _ in got}) == 4
    assert all(8 <= n <= 300 for _, _, n in got)


def test_send_paces_to_a_rate_and_a_duration():
    with Reader("127.0.0.1:0", rcvbuf=16 << 20) as reader:
        host, port = reader.address
        result = subprocess.run([*COMMAND, "send", f"{host}:{port}", "--rate", "2000",
                                 "--duration", "0.5", "--payload", "random"],
                                capture_output=True, text=True, timeout=DEADLINE)
        sent = int(re.search(r"sent (\d+) datagrams", result.stdout).group(1))
        got = collect(reader, sent)
    # Paced, not flooded: near 2000/s x 0.5 s (generous: machines are shared).
    assert 0 < sent <= 1100
    assert len(got) == sent


def test_send_at_a_rate_for_a_duration_sends_rate_times_duration():
    with Reader("127.0.0.1:0", rcvbuf=16 << 20) as reader:
        host, port = reader.address
        result = subprocess.run([*COMMAND, "send", f"{host}:{port}", "--rate", "20000",
                                 "--duration", "0.5"],
                                capture_output=True, text=True, timeout=DEADLINE)
        assert result.returncode == 0, result.stderr
        assert re.search(r"sent 10000 datagrams", result.stdout), result.stdout
        got = collect(reader, 10000, keep=lambda p: int.from_bytes(p.data[:8], "little"))
    assert sorted(got) == list(range(10000))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_send_stopped_by_a_signal_reports_what_it_sent(sig):
    with Reader("127.0.0.1:0", rcvbuf=16 << 20) as reader:
        host, port = reader.address
        proc = subprocess.Popen([*COMMAND, "send", f"{host}:{port}", "--rate", "1000"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            got = collect(reader, 50)  # it is sending
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=DEADLINE)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        sent = int(re.search(r"sent (\d+) datagrams", out).group(1))
        got += collect(reader, sent - len(got))
    assert len(got) == sent


def test_send_takes_the_ipv6_payload_limit():
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind(("::1", 0))
        s.settimeout(DEADLINE)
        result = subprocess.run([*COMMAND, "send", f"[::1]:{s.getsockname()[1]}", "--size",
                                 "65527", "--count", "1"],
                                capture_output=True, text=True, timeout=DEADLINE)
        assert result.returncode == 0, result.stderr
        assert len(s.recv(70000)) == 65527


def test_a_closed_pipe_is_a_normal_end():
    # `udp-reader ... | head -c 100`: head leaves, the next write fails; the
    # command ends quietly with 0, as cat does.
    read_end, write_end = os.pipe()
    os.close(read_end)
    with Reader("127.0.0.1:0") as reader:
        host, port = reader.address
        result = subprocess.run([*COMMAND, "send", f"{host}:{port}", "--count", "1"],
                                stdout=write_end, stderr=subprocess.PIPE, text=True,
                                timeout=DEADLINE)
        os.close(write_end)
        assert len(collect(reader, 1)) == 1
    assert result.returncode == 0
    assert result.stderr == ""


def test_send_random_payloads_differ_at_a_paced_rate():
    with Reader("127.0.0.1:0", rcvbuf=16 << 20) as reader:
        host, port = reader.address
        result = subprocess.run([*COMMAND, "send", f"{host}:{port}", "--rate", "4000",
                                 "--count", "1000", "--payload", "random"],
                                capture_output=True, text=True, timeout=DEADLINE)
        assert result.returncode == 0, result.stderr
        got = collect(reader, 1000)
    assert len(got) == 1000
    assert len(set(got)) == 1000


def test_count_stops_after_exactly_n_and_the_summary_says_so():
    # The queue holds 300 before the reader looks: with --count 100 it may
    # take only a whole receive too many, and the summary tells them apart.
    proc, (_, port) = start("listen", "127.0.0.1:0", "--count", "100")
    proc.send_signal(signal.SIGSTOP)
    try:
        send(("127.0.0.1", port), [b"%03d" % i for i in range(300)])
    finally:
        proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert len(out.splitlines()) == 100
    assert "128 received, 100 delivered, 28 taken past --count and not shown" in err.decode()


def test_count_of_one_takes_one():
    proc, (_, port) = start("listen", "127.0.0.1:0", "--count", "1", "--format", "raw")
    proc.send_signal(signal.SIGSTOP)
    try:
        send(("127.0.0.1", port), [b"%03d" % i for i in range(10)])
    finally:
        proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=DEADLINE)
    assert out == b"000"
    assert "1 received, 1 delivered, 0 too short" in err.decode()


def test_send_file_payload():
    with tempfile.NamedTemporaryFile() as f, Reader("127.0.0.1:0") as reader:
        f.write(b"from a file")
        f.flush()
        host, port = reader.address
        subprocess.run([*COMMAND, "send", f"{host}:{port}", "--count", "3",
                        "--payload", f"@{f.name}"], check=True, capture_output=True,
                       timeout=DEADLINE)
        assert collect(reader, 3) == [b"from a file"] * 3


def test_status_line_on_a_terminal():
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([*COMMAND, "listen", "127.0.0.1:0", "--format", "none",
                             "--status-interval", "0.2"], stderr=terminal,
                            stdout=subprocess.DEVNULL)
    os.close(terminal)
    seen = b""
    deadline = time.monotonic() + DEADLINE
    try:
        while b"pkt/s" not in seen and time.monotonic() < deadline:
            if select.select([controller], [], [], 0.1)[0]:
                seen += os.read(controller, 4096)
    finally:
        proc.terminate()
        proc.wait(DEADLINE)
        os.close(controller)
    assert b"\r\x1b[K" in seen and b"pkt/s" in seen and b"kernel drops" in seen


def test_status_is_a_log_line_without_a_terminal():
    proc, _ = start("listen", "127.0.0.1:0", "--status-interval", "0.1")
    time.sleep(0.5)
    code, _, err = finish(proc)
    assert code == 0
    assert re.search(r"^udp-reader: \d+ pkt/s", err, flags=re.M)
    assert "\r" not in err


def test_listen_duration_stops_by_itself():
    result = subprocess.run([*COMMAND, "listen", "127.0.0.1:0", "--duration", "0.3"],
                            capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 0
    assert "0 received" in result.stderr


def test_bench_json():
    result = subprocess.run([*COMMAND, "bench", "--count", "2000", "--rounds", "1", "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    names = set(report["results"])
    assert {"per_packet", "per_batch", "py_recvfrom", "asyncio", "uvloop"} <= names
    assert report["results"]["py_recvfrom"]["vs_py_recvfrom"] == 1.0
    assert all(r["packets_per_second"] > 0 for r in report["results"].values())


def _used_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


@pytest.mark.parametrize("args, words", [
    (["listen", "127.0.0.1:0", "--format", "xml"], "invalid choice: 'xml'"),
    (["listen", "127.0.0.1:0", "--write", "/proc/no/such/dir/x.pcap"], "cannot write"),
    (["listen", "127.0.0.1:0", "--count", "0"], "--count"),
    (["send", "127.0.0.1:0"], "needs a host and a port"),
    (["send", ":9"], "needs a host and a port"),
    (["send", "127.0.0.1:9", "--size", "9-3"], "smallest first"),
    (["send", "127.0.0.1:9", "--size", "4"], "at least 8 bytes"),
    (["send", "127.0.0.1:9", "--payload", "zeros"], "seq, random or @FILE"),
    (["send", "127.0.0.1:9", "--payload", "@/no/such/file"], "cannot read payload file"),
    (["send", "127.0.0.1:9", "--flows", "0"], "flows"),
    (["send", "127.0.0.1:9", "--payload", "@/no/such/file", "--size", "10"],
     "--size does not go with --payload @FILE"),
    (["listen", "127.0.0.1:0", "--status-interval", "-1"],
     "--status-interval must be 0 (off) or at least 0.1 s, not -1"),
    (["listen", "127.0.0.1:0", "--top", "--format", "hex"], "--top shows a table"),
    (["bench", "--size", "0"], "--size"),
    (["listen", "127.0.0.1:0", "--duration", "inf"], "--duration must be a positive number"),
    (["listen", "127.0.0.1:0", "--duration", "nan"], "--duration must be a positive number"),
    (["send", "127.0.0.1:9", "--duration", "inf"], "--duration must be a positive number"),
    (["listen", "127.0.0.1:0", "--rcvbuf", "0"], "--rcvbuf must be a positive int, not 0"),
    (["send", "127.0.0.1:9", "--size", "65508"], "size 65508 is over 65507 bytes"),
    (["send", "[::1]:9", "--size", "65528"], "must be within 0..65527"),
    (["watch", ":0"], "needs the port to watch"),
    (["watch", "localhost:9"], "numeric IP address"),
    (["watch", ":9", "--interface", "no-such-if0"], "interface 'no-such-if0' does not exist"),
    (["watch", ":9", "--rcvbuf", "0"], "--rcvbuf must be at least 1"),
    (["watch", ":9", "--top", "--format", "hex"], "--top shows a table"),
    (["listen", ":9", "--share", "--no-reuseport"], "leave out --no-reuseport"),
])
def test_wrong_input_gives_one_line_and_exit_2(args, words):
    result = subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 2, result
    [line] = result.stderr.splitlines()
    assert line.startswith("udp-reader: error: ") and words in line


def test_port_in_use_without_reuseport():
    with _used_port() as taken:
        port = taken.getsockname()[1]
        result = subprocess.run([*COMMAND, "listen", f"127.0.0.1:{port}", "--no-reuseport"],
                                capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 2
    assert result.stderr.strip() == \
        f"udp-reader: error: cannot bind 127.0.0.1:{port}: Address already in use"


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_privileged_port_without_permission():
    # Root without CAP_NET_BIND_SERVICE is refused a port below 1024.
    result = subprocess.run(["setpriv", "--bounding-set=-net_bind_service",
                             "--inh-caps=-net_bind_service", *COMMAND, "listen", "127.0.0.1:1"],
                            capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 2
    assert result.stderr.strip() == "udp-reader: error: cannot bind 127.0.0.1:1: Permission denied"


