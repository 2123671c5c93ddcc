"""Why the master cannot start: one line for the operator (written with
udp_reader.errors.describe)."""

from __future__ import annotations


class StartError(Exception):
    """The server cannot start: one line for the operator."""
