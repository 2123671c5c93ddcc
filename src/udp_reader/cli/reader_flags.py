"""The Reader's options as flags of the command (listen and serve take them),
and the library's complaints about them reworded in the flags' spelling.
The defaults and the checks are ReaderOptions' own."""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any, Optional

from udp_reader.options import MAX_BATCH, ReaderOptions

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ReaderOptions)}


@dataclasses.dataclass(frozen=True)
class ReaderFlag:
    name: str                      # the ReaderOptions field it sets
    flag: str
    help: str
    metavar: Optional[str] = None  # an int flag; None: a switch
    sets: bool = True              # what a switch sets its field to

    @property
    def default(self) -> Any:
        """The value without the flag."""
        return _DEFAULTS[self.name] if self.metavar else not self.sets


FLAGS = (
    ReaderFlag("min_size", "--min-size", "drop datagrams shorter than N bytes", "N"),
    ReaderFlag("max_size", "--max-size", "drop datagrams longer than N bytes", "N"),
    ReaderFlag("batch_size", "--batch-size", f"datagrams per recvmmsg call, 1..{MAX_BATCH}", "N"),
    ReaderFlag("rcvbuf", "--rcvbuf", "socket receive buffer size, forced past "
                                     "net.core.rmem_max where permitted", "BYTES"),
    ReaderFlag("gro", "--no-gro", "do not ask the kernel for merged receives (UDP_GRO)",
               sets=False),
    ReaderFlag("ip_fields", "--ip-fields", "read every packet's TTL (hop limit) and TOS "
                                           "(traffic class): packet.ttl, .tos, .ecn"),
)

# A field named in a complaint, as its flag: "min_size (10)" -> "--min-size (10)".
_FIELD_NAMES = re.compile(r"\b(" + "|".join(f.name for f in FLAGS if f.metavar) + r")\b")
_FLAG_OF = {f.name: f.flag for f in FLAGS}


def add_reader_flags(parser: argparse.ArgumentParser, *, gro: bool = True,
                     ip_fields: bool = True) -> None:
    """Add the Reader's flags; without `gro` or `ip_fields` the command does
    not offer that switch (reader_options() leaves it off)."""
    offered = {"gro": gro, "ip_fields": ip_fields}
    for f in FLAGS:
        if not offered.get(f.name, True):
            continue
        if f.metavar:
            parser.add_argument(f.flag, type=int, default=f.default, metavar=f.metavar,
                                help=f"{f.help} (default {f.default})")
        else:
            parser.add_argument(f.flag, dest=f.name, default=f.default,
                                action="store_true" if f.sets else "store_false", help=f.help)


def reader_options(args: argparse.Namespace, **fields: Any) -> ReaderOptions:
    """The options add_reader_flags() parsed; `fields` adds what has no flag
    (timestamps=True). A wrong value is a ValueError in the flags' own
    spelling, one line for the command to print."""
    # A switch the command does not offer is off.
    given = {f.name: getattr(args, f.name, False) for f in FLAGS}
    try:
        return ReaderOptions(**{**given, **fields})
    except (TypeError, ValueError) as e:
        # The command line has no None: drop the API's "or None".
        text = str(e).replace(" or None", "")
        raise ValueError(_FIELD_NAMES.sub(lambda m: _FLAG_OF[m[0]], text)) from None
