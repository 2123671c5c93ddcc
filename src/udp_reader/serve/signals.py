"""What each signal asks of the serve master, written once: the master logs
a signal's line as it takes it; `udp-reader serve --help` and
docs/serve-options.md show the table. The handlers are the master's
(Arbiter.handlers: one handle_* method per signal)."""

from __future__ import annotations

import dataclasses
import signal
from typing import Dict

# TTIN and TTOU as real-time signals, which the kernel queues: two standard
# signals of one kind merge when they come faster than the master runs.
EXACT_TTIN = signal.SIGRTMIN + 1
EXACT_TTOU = signal.SIGRTMIN + 2


@dataclasses.dataclass(frozen=True)
class Signal:
    name: str     # as kill -s takes it
    number: int
    meaning: str  # one line


SIGNALS = (
    Signal("HUP", signal.SIGHUP, "rolling restart: each slot's socket passes to a new worker "
                                 "(a HUP during one merges into one more)"),
    Signal("TERM", signal.SIGTERM, "graceful stop: each socket this master alone holds is "
                                   "shed and its queue drained"),
    Signal("INT", signal.SIGINT, "graceful stop as TERM (Ctrl-C); a second INT makes it fast"),
    Signal("QUIT", signal.SIGQUIT, "fast stop: workers leave at once (those that linger are "
                                   "killed)"),
    Signal("TTIN", signal.SIGTTIN, "one slot more"),
    Signal("TTOU", signal.SIGTTOU, "one slot fewer: it leaves the port and its worker "
                                   "drains it"),
    Signal("RTMIN+1", EXACT_TTIN, "one slot more, as TTIN, counted exactly however fast they "
                                  "come (the kernel queues real-time signals)"),
    Signal("RTMIN+2", EXACT_TTOU, "one slot fewer, as TTOU, counted exactly however fast they "
                                  "come (the kernel queues real-time signals)"),
    Signal("USR2", signal.SIGUSR2, "upgrade: a new master (the same command) takes over every "
                                   "socket, then this one leaves"),
)

BY_NUMBER: Dict[int, Signal] = {s.number: s for s in SIGNALS}


def signal_line(number: int) -> str:
    """What the master logs as it takes signal `number`."""
    s = BY_NUMBER[number]
    return f"{s.name}: {s.meaning}"

