"""Why a worker process ended: the causes the master counts (the snapshot's
events exits_<cause>, the metric udp_reader_worker_exits) and the exit
status in words."""

from __future__ import annotations

import enum
import signal

from udp_reader.serve import protocol


class ExitCause(enum.Enum):
    LEFT = "left"                  # told to leave, and did
    CRASHED = "crashed"            # ended by itself while reading
    KILLED = "killed"              # stuck past its time (--timeout, a leave too long)
    FAILED_START = "failed_start"  # ended before it was ready
    DISMISSED = "dismissed"        # stopped before it read anything

    @property
    def event(self) -> str:
        return "exits_" + self.value


def exit_reason(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    if code == protocol.EXIT_START_FAILED:
        return "its handler or socket could not be set up"
    if code == protocol.EXIT_READER_FAILED:
        return "its reader failed"
    return f"exit code {code}"
