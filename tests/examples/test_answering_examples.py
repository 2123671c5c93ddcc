"""The answering examples against clients no one here wrote: dig asks the
DNS responder, socat talks to the echo server, both on a wildcard socket and
each connected to the address it asked, so a reply from another address
would be dropped."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time

import pytest

from conftest import DEADLINE
from places import EXAMPLES



class Example:
    """An example script bound to [::]:0; it prints where it listens."""

    def __init__(self, script: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(EXAMPLES, script), ":0", *args],
            stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line, f"{script} did not start"
        self.port = int(line.rsplit(":", 1)[1])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(DEADLINE)
        self.proc.stdout.close()


@pytest.fixture
def dns():
    example = Example("dns_responder.py", "192.0.2.7")
    yield example
    example.close()


@pytest.fixture
def echo():
    example = Example("echo_server.py")
    yield example
    example.close()


def dig(server: str, port: int, *query: str) -> str:
    result = subprocess.run(
        ["dig", f"@{server}", "-p", str(port), *query, "+tries=1", f"+time={int(DEADLINE)}"],
        capture_output=True, text=True, timeout=3 * DEADLINE)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.skipif(shutil.which("dig") is None, reason="needs dig (dnsutils)")
@pytest.mark.parametrize("server", ["127.0.0.2", "127.0.0.1", "::1"])
def test_dig_gets_its_answer_from_the_address_it_asked(dns, server):
    out = dig(server, dns.port, "example.com", "A")
    assert "status: NOERROR" in out and "flags: qr aa rd" in out
    assert "example.com.\t\t60\tIN\tA\t192.0.2.7" in out
    assert f"SERVER: {server}#{dns.port}" in out
    assert dig(server, dns.port, "example.com", "A", "+short").split() == ["192.0.2.7"]


@pytest.mark.skipif(shutil.which("dig") is None, reason="needs dig (dnsutils)")
def test_dig_other_types_get_no_data(dns):
    out = dig("127.0.0.3", dns.port, "example.com", "AAAA")
    assert "status: NOERROR" in out and "ANSWER: 0" in out


def socat_echo(target: str, lines: list) -> list:
    """Lines through `socat - UDP:target` (a connected socket), each echo
    read back before the next is sent."""
    proc = subprocess.Popen(["socat", "-", target], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    got = []
    try:
        for line in lines:
            proc.stdin.write(line)
            proc.stdin.flush()
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline:
                ready, _, _ = select.select([proc.stdout], [], [], 0.1)
                if ready:
                    got.append(os.read(proc.stdout.fileno(), 65536))
                    break
    finally:
        proc.kill()
        proc.wait()
    return got


@pytest.mark.skipif(shutil.which("socat") is None, reason="needs socat")
@pytest.mark.parametrize("target", ["UDP4:127.0.0.2:{port}", "UDP4:127.0.0.3:{port}",
                                    "UDP6:[::1]:{port}"])
def test_socat_gets_every_echo(echo, target):
    lines = [b"hello\n", b"x" * 1400 + b"\n", b"bye\n"]
    assert socat_echo(target.format(port=echo.port), lines) == lines


ECHO_LOOP_SCRIPT = """
import json, signal, socket, struct, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)

def udp():
    with open("/proc/net/snmp") as f:
        names, values = [line.split()[1:] for line in f if line.startswith("Udp:")]
    return {k: int(v) for k, v in zip(names, values)}

echo = subprocess.Popen([sys.executable, sys.argv[1], "127.0.0.1:0"], stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True)
port = int(echo.stdout.readline().rsplit(":", 1)[1])
before = udp()
# One datagram forged to come from the server's own address and port.
with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP) as raw:
    raw.sendto(struct.pack("!HHHH", port, port, 12, 0) + b"loop", ("127.0.0.1", 0))
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
    client.settimeout(10)
    client.sendto(b"hello", ("127.0.0.1", port))  # queued after the forged one
    answer = client.recv(100).decode()
after = udp()
echo.send_signal(signal.SIGTERM)
_, err = echo.communicate(timeout=10)
print(json.dumps({"answer": answer, "err": err,
                  "in": after["InDatagrams"] - before["InDatagrams"],
                  "out": after["OutDatagrams"] - before["OutDatagrams"]}))
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root for a raw socket and `unshare -n`")
def test_echo_never_answers_a_datagram_forged_from_its_own_address():
    # In a namespace of its own, so the Udp counters are this test's alone.
    result = subprocess.run(["unshare", "-n", sys.executable, "-c", ECHO_LOOP_SCRIPT,
                             os.path.join(EXAMPLES, "echo_server.py")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["answer"] == "hello"
    # In: the forged one, hello, its echo. Out: hello, its echo. No loop.
    assert (out["in"], out["out"]) == (3, 2)
    assert "echo: 1 datagram(s) from port" in out["err"]
