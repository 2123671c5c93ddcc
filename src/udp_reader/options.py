"""The Reader's options, declared once: limits, defaults and checks (the
command's flags for them: cli/reader_flags.py)."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

from udp_reader._constants import MAX_BATCH, MAX_LENGTH, MAX_PAYLOAD

DEFAULT_BATCH = 64
# Rides out a worker start on a busy host: at 20 kpps of small datagrams,
# each ~768 bytes of kernel truesize, the kernel's 208 KiB default holds
# ~13 ms, while importing numpy and a handler takes far longer.
DEFAULT_RCVBUF = 32 << 20
# The kernel takes no larger receive buffer (INT_MAX / 2).
_RCVBUF_LIMIT = (1 << 30) - 1


def _int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be within {low}..{high}, not {value}")


def _bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {value!r}")


@dataclasses.dataclass(frozen=True)
class ReaderOptions:
    """What a Reader is opened with, checked once here.

    rcvbuf=None leaves the socket's receive buffer as it is.
    """

    min_size: int = 0
    max_size: int = MAX_PAYLOAD
    batch_size: int = DEFAULT_BATCH
    rcvbuf: Optional[int] = DEFAULT_RCVBUF
    gro: bool = False
    timestamps: bool = False
    ip_fields: bool = False  # TTL and TOS of every packet (two control messages more)

    def __post_init__(self) -> None:
        # The length window may reach a UDP length field's limit: IPv6
        # payloads may exceed MAX_PAYLOAD.
        _int("min_size", self.min_size, 0, MAX_LENGTH)
        _int("max_size", self.max_size, 0, MAX_LENGTH)
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) must not exceed "
                             f"max_size ({self.max_size})")
        _int("batch_size", self.batch_size, 1, MAX_BATCH)
        if self.rcvbuf is not None:
            if not isinstance(self.rcvbuf, int) or isinstance(self.rcvbuf, bool):
                raise TypeError(f"rcvbuf must be a positive int or None, not {self.rcvbuf!r}")
            if self.rcvbuf <= 0:
                raise ValueError(f"rcvbuf must be a positive int or None, not {self.rcvbuf}")
            if self.rcvbuf > _RCVBUF_LIMIT:
                raise ValueError(f"rcvbuf must be at most {_RCVBUF_LIMIT}, not {self.rcvbuf}")
        _bool("gro", self.gro)
        _bool("timestamps", self.timestamps)
        _bool("ip_fields", self.ip_fields)

    def as_kwargs(self) -> Dict[str, Any]:
        """The options as keywords for Reader(**...)."""
        return dataclasses.asdict(self)
