"""Soak: a long run at the highest steady rate with a rolling restart every
30 seconds; resident memory, descriptors and processes must stay flat, and
nothing may be lost. Not part of CI; run it with

    python -m pytest bench/test_soak.py --soak-seconds 600 -s
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "serve"))
from restart_harness import run_in_namespace, sustained_rate  # noqa: E402


def test_soak(request, benchmark):
    seconds = request.config.getoption("--soak-seconds")
    if not seconds:
        pytest.skip("give --soak-seconds to run the soak")
    rate = sustained_rate()
    result = {}

    def soak():
        result.update(run_in_namespace("soak", "--rate", str(rate), "--seconds", str(seconds),
                                       "--every", "30", timeout=seconds + 300))

    benchmark.group = "soak"
    benchmark.pedantic(soak, rounds=1)
    samples = result["samples"]
    first, last = samples[0], samples[-1]
    peak = {k: max(s[k] for s in samples) for k in ("rss_kib", "fds", "processes")}
    summary = {"rate": rate, "seconds": seconds, "restarts": result["restarts"],
               "sent": result["sent"], "lost": result["missing"],
               "duplicates": result["duplicates"], "udp_counters": result["counters"],
               "first": first, "last": last, "peak": peak}
    benchmark.extra_info.update(summary)
    print(f"\nsoak: {seconds:.0f} s at {rate} datagrams/s, {result['restarts']} rolling restarts, "
          f"sent {result['sent']}, lost {result['missing']}, duplicated {result['duplicates']}, "
          f"Udp counters {result['counters']}\n"
          f"  master+workers first sample: {first}\n  last sample: {last}\n  peak: {peak}")
