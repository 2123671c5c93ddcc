"""Why a worker process ended: the causes the master counts (the snapshot's
events exits_<cause>, the metric udp_reader_worker_exits) and the exit
status in words."""

from __future__ import annotations

import enum
import signal
from typing import TYPE_CHECKING

from udp_reader.serve import protocol

from udp_reader.serve.workers import State

if TYPE_CHECKING:
    from udp_reader.options import ReaderOptions
    from udp_reader.serve.workers import WorkerProcess


class ExitCause(enum.Enum):
    LEFT = "left"                  # told to leave, and did
    CRASHED = "crashed"            # ended by itself while reading
    KILLED = "killed"              # stuck past its time (--timeout, a leave too long)
    FAILED_START = "failed_start"  # ended before it was ready
    DISMISSED = "dismissed"        # stopped before it read anything

    @property
    def event(self) -> str:
        return "exits_" + self.value


def cause(worker: "WorkerProcess", code: int, incoming: bool) -> ExitCause:
    """Why `worker` ended with status `code`; `incoming`: it was getting
    ready to take over a slot."""
    if incoming:
        return ExitCause.FAILED_START
    if not worker.reads:
        return ExitCause.DISMISSED
    if code == 0 and worker.state is State.LEAVING:
        return ExitCause.LEFT
    if worker.state is State.KILLED:
        return ExitCause.KILLED
    return ExitCause.CRASHED


def exit_reason(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    if code == protocol.EXIT_START_FAILED:
        return "its handler or socket could not be set up"
    if code == protocol.EXIT_READER_FAILED:
        return "its reader failed"
    return f"exit code {code}"


def may_have_lost(worker: "WorkerProcess", reader: "ReaderOptions") -> str:
    """What a worker that died may have taken from the kernel and not
    handled, for its log line: at most one receive."""
    if not worker.reads:
        return ""
    unit = "merged receive(s)" if reader.gro else "datagram(s)"
    return f"; up to {reader.batch_size} {unit} it had taken but not handled may be lost"


def described(worker: "WorkerProcess", code: int) -> str:
    """A crash in words: its exit status, and the error it reported."""
    return exit_reason(code) + (f": {worker.error}" if worker.error else "")
