"""The master's phase, as status and metrics report it, and how it stops.

    STARTING  the first workers get ready       then RUNNING, or HANDOVER when
                                                upgrading from another master
    HANDOVER  the old master leaves             then RUNNING (HANDOVER_WAIT at most)
    RUNNING   serving; HUP, TTIN, TTOU and USR2 act here
    STOPPING  from any phase: TERM, INT, QUIT, or the USR2 new master ready

A stop is graceful (TERM, one INT) or fast (QUIT, a second INT); a graceful
stop may turn fast, never back. Beside its phase the master keeps three
facts of its own (Arbiter): `announced`, once it has said READY (pid file,
handoff socket, service manager; in RUNNING, when every slot has a reader);
`restarting`, from a HUP until every slot's reader is of the new
generation (or the restart aborts); `upgrade_asked`, from a USR2 until no
restart is under way and the new master starts.
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
