"""How the master words a failure for the operator: one line each."""

from __future__ import annotations


class StartError(Exception):
    """The server cannot start: one line for the operator."""


def one_line(error: OSError) -> str:
    """An OSError as one line, without "[Errno N]"."""
    if error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    return error.strerror or str(error)
