"""Loss across 100 rolling restarts at the highest steady rate this machine
sustains without restarts (target: 0 lost). Runs in private network
namespaces; see tests/restart_harness.py."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from restart_harness import run_in_namespace, sustained_rate  # noqa: E402

RESTARTS = 100


def test_loss_across_100_rolling_restarts(benchmark):
    rate = sustained_rate()
    result = {}

    def restarts():
        result.update(run_in_namespace("hup", "--rate", str(rate), "--restarts", str(RESTARTS)))

    benchmark.group = "restarts"
    benchmark.pedantic(restarts, rounds=1)
    times = result["restart_seconds"]
    benchmark.extra_info.update({
        "rate": rate, "restarts": len(times), "sent": result["sent"],
        "lost": result["missing"], "duplicates": result["duplicates"],
        "udp_counters": result["counters"],
        "restart_seconds_median": statistics.median(times),
        "restart_seconds_max": max(times),
    })
    print(f"\nrolling restarts: {len(times)} at {rate} datagrams/s; sent {result['sent']}, "
          f"lost {result['missing']}, duplicated {result['duplicates']}, "
          f"Udp counters {result['counters']}; each restart took median "
          f"{statistics.median(times):.2f} s, max {max(times):.2f} s")
