"""The Reader's options, declared once: limits, defaults, checks and the
command-line flags that set them."""

from __future__ import annotations

import argparse
import dataclasses
import re
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

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser, *, gro: bool = True,
                      ip_fields: bool = True) -> None:
        """Add --min-size, --max-size, --batch-size, --rcvbuf, (with `gro`)
        --no-gro and (with `ip_fields`) --ip-fields; from_args() checks them."""
        parser.add_argument("--min-size", type=int, default=0, metavar="N",
                            help="drop datagrams shorter than N bytes (default 0)")
        parser.add_argument("--max-size", type=int, default=MAX_PAYLOAD, metavar="N",
                            help=f"drop datagrams longer than N bytes (default {MAX_PAYLOAD})")
        parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, metavar="N",
                            help=f"datagrams per recvmmsg call, 1..{MAX_BATCH} "
                                 f"(default {DEFAULT_BATCH})")
        parser.add_argument("--rcvbuf", type=int, default=DEFAULT_RCVBUF, metavar="BYTES",
                            help="socket receive buffer size, forced past net.core.rmem_max "
                                 f"where permitted (default {DEFAULT_RCVBUF})")
        if gro:
            parser.add_argument("--no-gro", dest="gro", action="store_false",
                                help="do not ask the kernel for merged receives (UDP_GRO)")
        if ip_fields:
            parser.add_argument("--ip-fields", action="store_true",
                                help="read every packet's TTL (hop limit) and TOS (traffic "
                                     "class): packet.ttl, .tos, .ecn")

    @classmethod
    def from_args(cls, args: argparse.Namespace, **fields: Any) -> "ReaderOptions":
        """The options parsed by add_arguments(); `fields` adds what has no
        flag (timestamps=True). A wrong value is a ValueError in the flags'
        own spelling, one line for the command to print."""
        given = {"min_size": args.min_size, "max_size": args.max_size,
                 "batch_size": args.batch_size, "rcvbuf": args.rcvbuf,
                 "gro": getattr(args, "gro", False),
                 "ip_fields": getattr(args, "ip_fields", False), **fields}
        try:
            return cls(**given)
        except (TypeError, ValueError) as e:
            # The command line has no None: drop the API's "or None".
            text = str(e).replace(" or None", "")
            raise ValueError(_FLAG_NAMES.sub(lambda m: "--" + m[0].replace("_", "-"),
                                             text)) from None


# The options that have a flag of their own, as checks name them.
_FLAG_NAMES = re.compile(r"\b(min_size|max_size|batch_size|rcvbuf)\b")
