"""An error as one line for the operator: the command and the serve master
print every error the same way."""

from __future__ import annotations


def describe(error: BaseException) -> str:
    """`error` as one line, without "[Errno N]": an OSError is its reason,
    after the file it concerns; anything else is its message."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return str(error)
