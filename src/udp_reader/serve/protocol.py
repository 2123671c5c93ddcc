"""What the master and a worker say to each other.

The master writes one command per line on the worker's standard input; the
worker answers with JSON lines on a status pipe. End of file on standard
input means the master is gone.

    go        start reading the socket
    retire    stop reading; deliver what was already taken; exit
              (a worker follows on the slot: hand the handler's state on)
    drain     read the socket until it is idle if it was shed, else deliver
              what was taken; exit (nobody follows: the handler flushes)
    quit      exit now

    {"ready": true}     handler imported, reader set up, not reading yet
    {"released": true}  stopped reading, and delivered what it had taken
    {"stats": {...}}    counters, every STATS_INTERVAL seconds and at exit
    {"recycle": true}   handled its --max-packets: reads no more, awaits retire
    {"error": "..."}    why it could not start, or why its reader failed
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

GO, RETIRE, DRAIN, QUIT = "go", "retire", "drain", "quit"
COMMANDS = (GO, RETIRE, DRAIN, QUIT)

CONFIG_ENV = "UDP_READER_WORKER"  # the worker's configuration, as JSON
SLOT_ENV = "UDP_READER_SLOT"      # the handler may read its slot number here
STATS_INTERVAL = 1.0
EXIT_START_FAILED = 3
EXIT_READER_FAILED = 4
MAX_LINE = 1 << 20  # bytes; a status line is a few KiB, more is a worker gone wrong


def encode(**message: Any) -> bytes:
    return json.dumps(message).encode() + b"\n"


class Lines:
    """Complete lines from the chunks a pipe gives, each at most `limit`
    bytes: a longer one (a worker gone wrong) is dropped whole and counted,
    and the lines after it go on. What waits for its newline is kept as
    parts, never copied again on each read."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self.dropped = 0           # lines dropped for being longer than limit
        self._parts: List[bytes] = []
        self._size = 0
        self._skipping = False     # inside a line already dropped

    def feed(self, chunk: bytes) -> List[bytes]:
        lines = []
        start = 0
        while start < len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not self._skipping:
                self._parts.append(piece)
                self._size += len(piece)
                if self._size > self.limit:
                    self.dropped += 1
                    self._skipping = True
                    self._parts, self._size = [], 0
            if end < 0:
                break
            if not self._skipping:
                lines.append(b"".join(self._parts))
            self._skipping = False
            self._parts, self._size = [], 0
            start = end + 1
        return lines


def decode(line: bytes) -> Dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}
