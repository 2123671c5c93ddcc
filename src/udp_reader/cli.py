"""The udp-reader command."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from typing import Callable, Optional, Sequence

from udp_reader import Reader, Stats, __version__

log = logging.getLogger("udp_reader")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A wrong input: one line to stderr, exit 2."""


def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is outside 0..65535")
    return value


def _add_reader_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-size", type=_size, default=0, metavar="N",
                   help="drop datagrams shorter than N bytes (default 0)")
    p.add_argument("--max-size", type=_size, default=65507, metavar="N",
                   help="drop datagrams longer than N bytes (default 65507)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N",
                   help="datagrams per recvmmsg call, 1..1024 (default 64)")
    p.add_argument("--rcvbuf", type=int, default=None, metavar="BYTES",
                   help="socket receive buffer size")


def _open_reader(args: argparse.Namespace) -> Reader:
    try:
        return Reader(args.address, min_size=args.min_size, max_size=args.max_size,
                      batch_size=args.batch_size, rcvbuf=args.rcvbuf)
    except (ValueError, TypeError, OSError) as e:
        raise UsageError(str(e)) from None


def _human(value: float, unit: str) -> str:
    for prefix in ("", "k", "M", "G"):
        if abs(value) < 1000:
            return f"{value:.1f} {prefix}{unit}" if prefix else f"{value:.0f} {unit}"
        value /= 1000
    return f"{value:.1f} T{unit}"


class StatusLine:
    """Every `interval` seconds, shows rates from a Stats source on stderr:
    a line redrawn in place on a terminal, a log line otherwise."""

    def __init__(self, stats: Callable[[], Stats], interval: float = 1.0) -> None:
        self._stats = stats
        self._interval = interval
        self._tty = sys.stderr.isatty()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="status", daemon=True)
        self._started = time.monotonic()

    def __enter__(self) -> "StatusLine":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()
        if self._tty:
            sys.stderr.write("\n")

    def _loop(self) -> None:
        last, then = self._stats(), time.monotonic()
        while not self._done.wait(self._interval):
            now_stats, now = self._stats(), time.monotonic()
            line = self.format(last, now_stats, now - then)
            if self._tty:
                sys.stderr.write("\r\x1b[K" + line)
                sys.stderr.flush()
            else:
                log.info("%s", line)
            last, then = now_stats, now

    @staticmethod
    def format(before: Stats, after: Stats, seconds: float) -> str:
        seconds = max(seconds, 1e-9)
        packets = (after.received - before.received) / seconds
        nbytes = (after.bytes - before.bytes) / seconds
        filtered = after.too_short + after.too_long
        return (f"{_human(packets, 'pkt/s')}  {_human(nbytes, 'B/s')}  "
                f"filtered {filtered}  kernel drops {after.kernel_drops}")

    def summary(self, stats: Stats) -> str:
        seconds = time.monotonic() - self._started
        return (f"{stats.received} received, {stats.delivered} delivered, "
                f"{stats.too_short} too short, {stats.too_long} too long, "
                f"{stats.kernel_drops} kernel drops in {seconds:.1f} s")


def cmd_listen(args: argparse.Namespace) -> int:
    reader = _open_reader(args)
    with reader:
        signal.signal(signal.SIGTERM, lambda *_: reader.stop())
        host, port = reader.address
        log.info("listening on %s", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        status = StatusLine(lambda: reader.stats)
        with status:
            try:
                reader.run_batches(lambda batch: None)
            except KeyboardInterrupt:
                pass
        print(status.summary(reader.stats), file=sys.stderr)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from udp_reader.supervisor import Arbiter, Config, StartError

    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, not {args.workers}")
    if args.min_size > args.max_size:
        raise UsageError(f"--min-size ({args.min_size}) must not exceed --max-size ({args.max_size})")
    if not 1 <= args.batch_size <= 1024:
        raise UsageError(f"--batch-size must be within 1..1024, not {args.batch_size}")
    config = Config(
        handler=args.handler, bind=args.bind, argv=args.argv, workers=args.workers,
        shared=args.shared, batches=args.batches, min_size=args.min_size,
        max_size=args.max_size, batch_size=args.batch_size, rcvbuf=args.rcvbuf,
        grace=args.grace, graceful_timeout=args.graceful_timeout,
        start_timeout=args.start_timeout, pid_file=args.pid_file)
    try:
        return Arbiter(config).run()
    except StartError as e:
        raise UsageError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="udp-reader",
        description="Read UDP datagrams at kernel speed.",
        epilog="examples:\n  udp-reader listen :9000\n"
               "  udp-reader listen 127.0.0.1:9000 --min-size 8 --max-size 1500",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    listen = sub.add_parser("listen", help="receive and show live statistics",
                            description="Receive on ADDRESS and show a live status line.")
    listen.add_argument("address", metavar="ADDRESS",
                        help="host:port, :port (all addresses) or [v6]:port")
    _add_reader_options(listen)
    listen.set_defaults(func=cmd_listen)

    serve = sub.add_parser(
        "serve", help="run a handler in supervised worker processes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run MODULE:CALLABLE on every packet (or batch) in worker processes "
                    "that share one port, with restarts that lose nothing.",
        epilog="signals to the master:\n"
               "  HUP         rolling restart; new workers import the handler anew\n"
               "  TERM        graceful stop: every worker drains, then exit 0\n"
               "  INT, QUIT   fast stop\n"
               "  TTIN, TTOU  one worker more, one fewer\n"
               "  USR2        upgrade the master itself\n\n"
               "example:\n  udp-reader serve myapp.udp:handle --bind :9000 --workers 2")
    serve.add_argument("handler", metavar="MODULE:CALLABLE",
                       help="called with each Packet (or each Batch with --batches)")
    serve.add_argument("--bind", metavar="ADDRESS",
                       help="address to serve; not needed under socket activation")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="worker processes (default 1)")
    serve.add_argument("--shared", action="store_true",
                       help="all workers read one socket instead of one socket each")
    serve.add_argument("--batches", action="store_true",
                       help="call the handler once per received batch")
    _add_reader_options(serve)
    serve.add_argument("--grace", type=float, default=0.05, metavar="S",
                       help="a draining socket is done once idle this long (default 0.05)")
    serve.add_argument("--graceful-timeout", type=float, default=30.0, metavar="S",
                       help="longest a worker may take to drain (default 30)")
    serve.add_argument("--start-timeout", type=float, default=30.0, metavar="S",
                       help="longest a new worker may take to be ready (default 30)")
    serve.add_argument("--pid-file", metavar="FILE", help="write the master's pid here")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    level = logging.INFO + 10 * (args.quiet - args.verbose)
    logging.basicConfig(level=level, format="udp-reader: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"udp-reader: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"udp-reader: error: {e}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
