"""Fill then drain, multicast against unicast, in a network namespace of its
own (test_drain.py runs it under `unshare -n`: lo's multicast flag and route
must not touch the host).

Usage: multicast_drain.py C_LOOP_SO COUNT ROUNDS. One queue receives
64-byte datagrams sent to 239.255.0.1, joined on lo; the other, unicast
ones on 127.0.0.1. Each round fills and drains each queue with the plain C
loop and with this package per batch, interleaved. Prints the median
seconds of each as JSON: c_loop and per_batch (multicast), c_loop_unicast
and per_batch_unicast.
"""

from __future__ import annotations

import ctypes
import json
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List

from udp_reader.cli import bench as contenders
from udp_reader import sockets
from udp_reader.cli.bench import Queue

GROUP = "239.255.0.1"


def main(library: str, count: int, rounds: int) -> None:
    for command in (["ip", "link", "set", "lo", "up"], ["ip", "link", "set", "lo", "multicast", "on"],
                    ["ip", "route", "add", "224.0.0.0/4", "dev", "lo"]):
        subprocess.run(command, check=True)
    lib = ctypes.CDLL(library)
    lib.drain.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_int]
    lib.drain.restype = ctypes.c_long
    queues = {"": Queue(count, 64, group=GROUP), "_unicast": Queue(count, 64)}

    def c_loop(queue: Queue) -> Callable[[], None]:
        def drain() -> None:
            if lib.drain(queue.sock.fileno(), queue.count, 64) != queue.count:
                raise RuntimeError("the C loop came up short")
        return drain

    times: Dict[str, List[float]] = {}
    try:
        for _ in range(rounds):
            for suffix, queue in queues.items():
                for name, prepare in (("c_loop", c_loop), ("per_batch", contenders.reader_per_batch)):
                    queue.fill()
                    drain = prepare(queue)
                    start = time.perf_counter()
                    drain()
                    times.setdefault(name + suffix, []).append(time.perf_counter() - start)
                    # Each datagram queued once: nothing may be left over.
                    if sockets.discard_queue(queue.sock):
                        raise RuntimeError(f"{name}{suffix}: datagrams left in the queue")
    finally:
        for queue in queues.values():
            queue.close()
    print(json.dumps({name: statistics.median(t) for name, t in times.items()}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
