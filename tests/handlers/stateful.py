"""A handler that keeps state: a count of packets per source (the packet's
first 8 bytes), handed from worker to worker (save_state, restore_state).

Nothing is written while a worker hands its counts on; a worker that leaves
with nobody to follow (a stop, TTOU) writes what it holds as one JSON line
to STATEFUL_OUT/<pid>.json. Every count sent is then in exactly one line,
whatever restarts came between: the sum of the lines is what was sent.
STATEFUL_FAIL_ONCE=FILE makes the import fail once, while FILE exists.
"""

from __future__ import annotations

import json
import os
from collections import Counter

# STATEFUL_FAIL_ONCE=FILE: the import fails, once, while FILE exists (removed).
if os.path.exists(os.environ.get("STATEFUL_FAIL_ONCE", "/nonexistent")):
    os.unlink(os.environ["STATEFUL_FAIL_ONCE"])
    raise ImportError("told to fail once")

counts: Counter = Counter()
handed = False  # save_state(final=True): the counts are the next worker's now


def on_packet(packet) -> None:
    counts[bytes(packet.data[:8]).hex()] += 1


def save_state(final: bool) -> bytes:
    global handed
    handed = handed or final
    return json.dumps(counts).encode()


def restore_state(state: bytes) -> None:
    counts.update(json.loads(state))


def worker_stop() -> None:
    if handed or not counts:
        return
    path = os.path.join(os.environ["STATEFUL_OUT"], f"{os.getpid()}.json")
    with open(path, "a") as f:
        f.write(json.dumps(counts) + "\n")
    counts.clear()  # flushed: what is left for a later start is nothing
