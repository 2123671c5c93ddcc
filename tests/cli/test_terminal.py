"""`udp-reader listen` on a terminal, read off the screen a person sees."""

from __future__ import annotations

import re
import socket
import subprocess

from conftest import DEADLINE, send
from terminal import Terminal
from test_cli import COMMAND, start

PACKET_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{6} 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+ lo ")


def test_packet_lines_never_land_on_the_status_line():
    term = Terminal("listen", "127.0.0.1:0", "--status-interval", "0.1")
    port = term.port()
    assert term.read_until(lambda t: b"pkt/s" in t.raw)  # a status line is on screen
    send(("127.0.0.1", port), [b"packet %d" % i for i in range(5)])
    assert term.read_until(lambda t: t.raw.count(b"|packet ") == 5)
    # And a status line drawn after them.
    assert term.read_until(lambda t: b"pkt/s" in t.raw[t.raw.rindex(b"|packet "):])
    assert term.finish() == 0
    packet_lines = [line for line in term.lines if "->" in line]
    assert len(packet_lines) == 5, term.lines
    assert all(PACKET_LINE.match(line) for line in packet_lines), term.lines
    assert not any("pkt/s" in line for line in packet_lines)
    assert any(line.startswith("5 received, 5 delivered") for line in term.lines), term.lines


def test_status_interval_zero_shows_no_status():
    # Past the 1 s a terminal's status line would take by default.
    term = Terminal("listen", "127.0.0.1:0", "--status-interval", "0", "--duration", "1.5")
    assert term.finish(0) == 0
    assert b"pkt/s" not in term.raw
    assert any(line.startswith("0 received") for line in term.lines), term.lines


def test_status_interval_zero_without_a_terminal_logs_no_status():
    result = subprocess.run([*COMMAND, "listen", "127.0.0.1:0", "--status-interval", "0",
                             "--duration", "0.5"], capture_output=True, text=True,
                            timeout=DEADLINE)
    assert result.returncode == 0
    assert "pkt/s" not in result.stderr and "0 received" in result.stderr


def _row(lines: list[str], name: str) -> list[str]:
    """The columns of the table row that starts with `name`."""
    for line in lines:
        if line.split(" ", 1)[0] == name:
            return line.split()
    return []


def test_top_shows_who_sends_to_the_port():
    term = Terminal("listen", ":0", "--top", "--min-size", "8", "--status-interval", "0.1")
    port = term.port()
    # Three hosts to two local addresses, of three sizes; two runts filtered.
    send(("127.0.0.1", port), [b"a" * 100] * 30, source="127.0.0.2")
    for _ in range(2):  # two source ports
        send(("127.0.0.1", port), [b"b" * 1000] * 5, source="127.0.0.3")
    send(("::1", port), [b"c" * 10] * 5, family=socket.AF_INET6)
    send(("127.0.0.1", port), [b"x"] * 2)
    assert term.read_until(lambda t: _row(t.lines, "[::1]:%d" % port)[2:3] == ["5"]), \
        "\n".join(term.lines)
    lines = term.lines
    sources = [line.split()[0] for line in lines[lines.index(next(
        l for l in lines if l.startswith("SOURCE"))) + 1:][:3]]
    assert sources == ["127.0.0.2", "127.0.0.3", "::1"]  # by packets
    assert _row(lines, "127.0.0.2")[2:7] == ["30", "66.7", "3.0", "kB", "1"]
    assert _row(lines, "127.0.0.3")[2:7] == ["10", "22.2", "10.0", "kB", "2"]
    assert _row(lines, "::1")[2:7] == ["5", "11.1", "50", "B", "1"]
    assert _row(lines, f"127.0.0.1:{port}")[1:4] == ["lo", "40", "88.9"]
    assert _row(lines, f"[::1]:{port}")[1:3] == ["lo", "5"]
    sizes = {line.split()[0]: line.split()[1] for line in lines
             if re.match(r"\d+-\d+ +\d+ +#", line)}
    assert sizes == {"0-63": "5", "64-127": "30", "512-1023": "10"}
    assert re.search(r"total 47 pkt .* filtered 2 +kernel drops 0", "\n".join(lines))
    assert term.finish() == 0
    # The last table stays on screen, the summary below it.
    assert _row(term.lines, "127.0.0.2")[2] == "30"
    assert any(line.startswith("47 received, 45 delivered, 2 too short")
               for line in term.lines), term.lines


def test_top_without_a_terminal_prints_tables():
    proc, (_, port) = start("listen", "127.0.0.1:0", "--top", "--count", "3")
    send(("127.0.0.1", port), [b"hello"] * 3, source="127.0.0.4")
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    text = out.decode()
    assert "\x1b" not in text
    assert _row(text.splitlines(), "127.0.0.4")[2:4] == ["3", "100.0"]
    assert "3 received, 3 delivered" in err.decode()
