"""The master's phase, as status and metrics report it, and how it stops.

    STARTING ──all first workers ready──> RUNNING ──TERM, INT, QUIT──> STOPPING
        │                                    ^    ──the USR2 new master ready──^
        └──ready, upgrading from a master──> HANDOVER (until it has left, or
                                             HANDOVER_WAIT)

A stop is graceful (TERM, one INT) or fast (QUIT, a second INT); a graceful
stop may turn fast, never back.
"""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    STARTING = "starting"   # first workers getting ready
    HANDOVER = "handover"   # ready; the master we upgrade from is leaving
    RUNNING = "running"
    STOPPING = "stopping"


class Stop(enum.Enum):
    GRACEFUL = "graceful"   # every worker delivers what its socket holds
    FAST = "fast"           # workers exit now
