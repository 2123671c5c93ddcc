"""Loss across 100 rolling restarts at the highest steady rate this machine
sustains without restarts (target: 0 lost). Runs in private network
namespaces; see tests/serve/restart_harness.py."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "serve"))
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


@pytest.mark.parametrize("handler", ["packet", "batch"])
def test_chaos(request, benchmark, handler):
    """Minutes of random HUP, TTIN, TTOU, USR2 and SIGKILLed workers under
    20,000 datagrams/s, at the defaults: every datagram arrives once or was
    inside a receive a killed worker held (the bound the master logs)."""
    seconds = request.config.getoption("--chaos-seconds")
    result = {}

    def chaos():
        result.update(run_in_namespace("chaos", "--seconds", str(seconds), "--handler", handler,
                                       timeout=seconds + 300))

    benchmark.group = "chaos"
    benchmark.pedantic(chaos, rounds=1)
    keys = ("sent", "missing", "held_bound", "duplicates", "counters", "actions", "kills",
            "zombies", "leaked_processes", "descriptors_at_start", "descriptors_at_end",
            "stop_seconds")
    benchmark.extra_info.update({k: result[k] for k in keys})
    print(f"\nchaos ({handler} handler): {seconds:.0f} s at 20,000 datagrams/s, actions "
          f"{result['actions']}; sent {result['sent']}, lost {result['missing']} "
          f"(bound from {result['kills']} kills: {result['held_bound']}), duplicated "
          f"{result['duplicates']}, Udp counters {result['counters']}; zombies "
          f"{result['zombies']}, leaked processes {result['leaked_processes']}, master "
          f"descriptors beyond workers {result['descriptors_at_start']} -> "
          f"{result['descriptors_at_end']}; TERM took {result['stop_seconds']} s")
