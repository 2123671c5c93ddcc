"""Capturing a served port to pcap: `udp-reader watch --write` against
`tcpdump -w`, CPU seconds per --watch-count datagrams sent at RATE (watch_capture.py,
under unshare -n: interleaved rounds, medians). Both must write every
datagram; the ratio of their CPU is the report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import HERE, record

RATE = 100_000
ROUNDS = 5


def _can_unshare() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare() or shutil.which("tcpdump") is None,
                    reason="needs `unshare -n` (root) and tcpdump")
def test_watch_against_tcpdump(request):
    count = request.config.getoption("--watch-count")
    result = subprocess.run(["unshare", "-n", sys.executable, str(HERE / "watch_capture.py"),
                             str(count), str(RATE), str(ROUNDS)],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr
    medians = json.loads(result.stdout)
    for name, row in medians.items():
        record("watch pcap", name, row["cpu_seconds"])
        print(f"{name:8} {row['cpu_seconds'] / count * 1e6:8.2f} us CPU/packet  "
              f"drops {row['drops']}  records {row['records']}")
        # Every datagram written, or the kernel's drops for the capture say why not.
        assert all(r + row["drops"] >= count for r in row["records"]), row
