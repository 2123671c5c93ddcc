"""Someone else's programs, as the example tests drive them: softflowd,
nfcapd and nfdump, logger; and the wait for a collector's queue to empty."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import time

import pytest

from conftest import DEADLINE


def needs(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: .ci/run installs it")


def plain_env() -> dict[str, str]:
    """For someone else's tools: without the sanitizer runtime CI preloads
    for our code, whose checks are not meant for theirs."""
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def tool(command: list[str], utc: bool = False, **kwargs):
    """Run it to its end; with `utc`, its times in UTC (nfdump's)."""
    env = dict(plain_env(), TZ="UTC") if utc else plain_env()
    return subprocess.run(command, env=env, timeout=DEADLINE, **kwargs)


def utc_ms(text: str) -> int:
    """nfdump's 'YYYY-MM-DD HH:MM:SS.mmm' (UTC) as ms since the epoch."""
    stamp = datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f")
    return round(stamp.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000)


def wait_until_queue_empty(port: int) -> None:
    """Until the UDP socket bound to `port` has nothing queued (/proc/net/udp)."""
    local = f":{port:04X}"
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        with open("/proc/net/udp") as f:
            rows = [line.split() for line in f.readlines()[1:]]
        if all(int(r[4].split(":")[1], 16) == 0 for r in rows if r[1].endswith(local)):
            return
        time.sleep(0.02)
    pytest.fail(f"the socket on port {port} never emptied its queue")
