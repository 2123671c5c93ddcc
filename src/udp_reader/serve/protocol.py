"""What the master and a worker say to each other.

The master writes one command per line on the worker's standard input; the
worker answers with JSON lines on a status pipe. End of file on standard
input means the master is gone.

    go        start reading the socket
    retire    stop reading; deliver what was already taken; exit
    drain     read the (shed) socket until it is idle; exit
    quit      exit now

    {"ready": true}     handler imported, reader set up, not reading yet
    {"released": true}  stopped reading, and delivered what it had taken
    {"stats": {...}}    counters, every STATS_INTERVAL seconds and at exit
    {"recycle": true}   handled its --max-packets: reads no more, awaits retire
    {"error": "..."}    why it could not start, or why its reader failed
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

GO, RETIRE, DRAIN, QUIT = "go", "retire", "drain", "quit"
COMMANDS = (GO, RETIRE, DRAIN, QUIT)

CONFIG_ENV = "UDP_READER_WORKER"  # the worker's configuration, as JSON
SLOT_ENV = "UDP_READER_SLOT"      # the handler may read its slot number here
STATS_INTERVAL = 1.0
EXIT_START_FAILED = 3
EXIT_READER_FAILED = 4


def encode(**message: Any) -> bytes:
    return json.dumps(message).encode() + b"\n"


def split_lines(pending: bytes, chunk: bytes) -> Tuple[List[bytes], bytes]:
    """Complete lines in pending + chunk, and the incomplete rest."""
    lines = (pending + chunk).split(b"\n")
    return lines[:-1], lines[-1]


def decode(line: bytes) -> Dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}
