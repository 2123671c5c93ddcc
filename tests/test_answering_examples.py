"""The answering examples against clients no one here wrote: dig asks the
DNS responder, socat talks to the echo server, both on a wildcard socket and
each connected to the address it asked, so a reply from another address
would be dropped."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time

import pytest

from conftest import DEADLINE

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


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
