"""The udp-reader command, run as a real subprocess."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import DEADLINE, send
from udp_reader import ReaderOptions
from udp_reader.cli.main import build_parser
from udp_reader.cli.reader_flags import reader_options

COMMAND = [sys.executable, "-m", "udp_reader"]


def start(*args: str) -> tuple[subprocess.Popen, tuple[str, int]]:
    """Start a command that logs 'listening on HOST:PORT' and return it with the address."""
    proc = subprocess.Popen([*COMMAND, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    line = proc.stderr.readline().decode()
    match = re.search(r"listening on \[?([^\]]+?)\]?:(\d+)$", line.strip())
    if not match:
        proc.kill()
        proc.wait()
        pytest.fail(f"unexpected first line: {line!r}")
    return proc, (match.group(1), int(match.group(2)))


def finish(proc: subprocess.Popen, sig: int = signal.SIGINT) -> tuple[int, str, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=DEADLINE)
    return proc.returncode, out.decode(), err.decode()


def test_listen_counts_and_exits_zero_on_ctrl_c():
    proc, address = start("listen", "127.0.0.1:0", "--min-size", "2")
    send(address, [b"a", b"bb", b"ccc"])
    wait_until_read(proc.pid)
    code, out, err = finish(proc)
    assert code == 0
    assert "3 received, 2 delivered, 1 too short" in err


def wait_until_read(pid: int) -> None:
    """Wait, bounded, until no UDP socket in pid's namespace has bytes queued."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/net/udp") as f:
            next(f)
            if all(int(line.split()[4].split(":")[1], 16) == 0 for line in f):
                return
        time.sleep(0.02)


def test_listen_exits_zero_on_term():
    proc, _ = start("listen", "[::1]:0")
    code, _, err = finish(proc, signal.SIGTERM)
    assert code == 0
    assert "0 received" in err


@pytest.mark.parametrize("args, words", [
    (["listen", "127.0.0.1:70000"], "outside 0..65535"),
    (["listen", "127.0.0.1"], "no port"),
    (["listen", "127.0.0.1:0", "--min-size", "9", "--max-size", "3"],
     "--min-size (9) must not exceed --max-size (3)"),
    (["listen", "127.0.0.1:0", "--max-size", "70000"], "--max-size must be within 0..65535"),
    (["listen", "127.0.0.1:0", "--batch-size", "0"], "--batch-size must be within 1..1024"),
    (["listen", "127.0.0.1:0", "--rcvbuf", "0"], "--rcvbuf must be a positive int"),
    (["listen", "192.0.2.1:0"], "cannot bind 192.0.2.1:0"),
    (["listen", "no-such-host.invalid:1"], "cannot resolve"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["listen"], "the following arguments are required: ADDRESS; see udp-reader listen --help"),
    (["listen", ":0", "--count", "many"], "argument --count: invalid int value: 'many'"),
    (["send", ":9", "--no-such-option"], "unrecognized arguments: --no-such-option"),
])
def test_wrong_input_gives_one_line_and_exit_2(args, words):
    # Every wrong input, the command line's too: one line, as README says.
    result = subprocess.run([*COMMAND, *args], capture_output=True, text=True,
                            timeout=DEADLINE)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("udp-reader: error: ") and words in line


def test_listen_opens_the_reader_with_its_defaults():
    args = build_parser().parse_args(["listen", ":0"])
    assert reader_options(args) == ReaderOptions(gro=True)


def test_version():
    result = subprocess.run([*COMMAND, "--version"], capture_output=True, text=True,
                            timeout=DEADLINE)
    assert result.returncode == 0 and re.match(r"udp-reader \d+\.\d+", result.stdout)
