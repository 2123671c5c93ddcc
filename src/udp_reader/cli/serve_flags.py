"""`udp-reader serve`'s command line, made from the declarations: serve's
options (serve/config.py), the Reader's flags and what each signal asks
(serve/signals.py)."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any, Dict, Sequence

from udp_reader.cli.reader_flags import add_reader_flags, reader_options
from udp_reader.serve import protocol
from udp_reader.serve.config import OPTIONS, Config, Option
from udp_reader.serve.signals import SIGNALS

EXAMPLES = """examples:
  udp-reader serve myapp.udp:handle --bind :9000 --workers 2
  udp-reader serve myapp.udp:handle --bind :5000 --workers 2 --join 239.1.2.3@eth0
  udp-reader serve --bind :2055 --workers 2 --forward nats://10.0.0.5:4222/udp.flows"""


def signals_help(width: int = 79) -> str:
    """What each signal asks, as a table for a terminal."""
    lines = ["signals to the master:"]
    for s in SIGNALS:
        lines += textwrap.wrap(s.meaning, width, initial_indent=f"  {s.name:<10}",
                               subsequent_indent=" " * 12)
    return "\n".join(lines)


def add_parser(sub: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    serve = sub.add_parser(
        "serve", help="run a handler in supervised worker processes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run MODULE:CALLABLE on every packet (or batch) in worker processes "
                    "that share one port, with restarts that lose nothing.",
        epilog=f"{signals_help()}\n\nthe handler finds its slot number (0, 1, ...) in "
               f"{protocol.SLOT_ENV}.\n\n{EXAMPLES}")
    for option in OPTIONS:
        _add(serve, option)
    add_reader_flags(serve)
    return serve


def _add(parser: argparse.ArgumentParser, o: Option) -> None:
    text = o.help.replace("%", "%%")  # argparse formats help with %
    if o.shows_default:
        text += f" (default {o.default})"
    if o.flag is None:
        parser.add_argument(o.name, metavar=o.metavar, help=text, nargs="?")
        return
    kwargs: Dict[str, Any] = {"dest": o.name, "help": text}
    if o.type is bool:
        kwargs.update(action="store_true")
    elif o.many:
        kwargs.update(action="append", metavar=o.metavar)  # None when not given
    else:
        kwargs.update(type=o.type, default=o.default, metavar=o.metavar, choices=o.choices)
    parser.add_argument(o.flag, **kwargs)


def make_config(args: argparse.Namespace, argv: Sequence[str]) -> Config:
    """The Config of a parsed serve command line `argv`; a wrong value is a
    ValueError in the flags' spelling."""
    return Config.from_args(args, reader=reader_options(args), argv=argv)
