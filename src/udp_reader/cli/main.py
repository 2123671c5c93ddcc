"""The udp-reader command."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import sys
import threading
from typing import Callable, NoReturn, Optional, Sequence

from udp_reader import Reader, __version__, multicast, sockets
from udp_reader._constants import GSO_SEGMENTS
from udp_reader.errors import describe
from udp_reader.options import DEFAULT_BATCH, DEFAULT_RCVBUF, MAX_PAYLOAD
from udp_reader.cli import consume, serve_flags
from udp_reader.cli.live import StatusLine
from udp_reader.cli.reader_flags import add_reader_flags, reader_options

log = logging.getLogger("udp_reader")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
MIN_STATUS_INTERVAL = 0.1  # seconds; faster is a flood, not a status


class UsageError(Exception):
    """A wrong input: one line to stderr, exit 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a wrong command line is one line like every other
    wrong input (not the usage block), pointing to --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"udp-reader: error: {message}; see {self.prog} --help\n")


def _add_output_options(p: argparse.ArgumentParser) -> None:
    """What listen and watch show, and when they stop."""
    p.add_argument("--format", choices=["summary", "hex", "jsonl", "raw", "none"],
                   help="what to print per packet (default summary; none with --write)")
    p.add_argument("--write", metavar="FILE.pcap", help="also save packets as pcap")
    p.add_argument("--count", type=int, metavar="N", help="stop after N packets")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--status-interval", type=float, default=None, metavar="S",
                   help="seconds between status lines (default 1 on a terminal, "
                        "10 otherwise; 0: no status) or --top redraws (default 1)")
    p.add_argument("--top", action="store_true",
                   help="instead of packets, a live table: top sources and "
                        "destinations, sizes, rates, drops")


JOIN_HELP = ("join a multicast group, [SOURCE>]GROUP[@INTERFACE]: 239.1.2.3, "
             "239.1.2.3@eth0, '10.0.0.5>232.1.1.1@eth0' (quoted: > redirects in a shell), "
             "ff15::1@* (every interface); repeat for more")


def _open_reader(args: argparse.Namespace, **fields) -> Reader:
    try:
        joins = multicast.parse_all(args.join or ())
    except ValueError as e:
        raise UsageError(f"--join {e}") from None
    try:
        options = reader_options(args, **fields)
        reader = Reader(args.address, reuseport=args.reuseport, **options.as_kwargs())
    except (ValueError, TypeError, OSError) as e:
        raise UsageError(describe(e)) from None
    try:
        for m in joins:
            try:
                reader.join(m.group, interface=m.interface, source=m.source)
            except (ValueError, OSError) as e:
                raise UsageError(f"--join {m}: {describe(e)}") from None
    except BaseException:
        reader.close()
        raise
    return reader


def _open_output(path: str):
    try:
        return open(path, "wb")
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}") from None


def _check_limits(args: argparse.Namespace) -> None:
    """--count and --duration, where a command takes them."""
    if args.count is not None and args.count < 1:
        raise UsageError(f"--count must be at least 1, not {args.count}")
    # inf and nan too: a timer cannot wait forever, and nan compares false.
    if args.duration is not None and not 0 < args.duration <= threading.TIMEOUT_MAX:
        raise UsageError(f"--duration must be a positive number of seconds up to "
                         f"{threading.TIMEOUT_MAX:.0f}, not {args.duration:g}")


def _check_output(args: argparse.Namespace) -> str:
    """The checks listen and watch share; returns the packet format."""
    _check_limits(args)
    if args.status_interval is not None and args.status_interval != 0 \
            and not args.status_interval >= MIN_STATUS_INTERVAL:
        raise UsageError(f"--status-interval must be 0 (off) or at least "
                         f"{MIN_STATUS_INTERVAL} s, not {args.status_interval:g}")
    if args.top and args.format:
        raise UsageError("--top shows a table, not packets: leave out --format")
    return args.format or ("none" if args.write or args.top else "summary")


def _writers(fmt: str, pcap_file, port: int) -> list:
    from udp_reader.cli.formats import FORMATS, Pcap

    writers = [] if fmt == "none" else [FORMATS[fmt](sys.stdout.buffer, port)]
    if pcap_file is not None:
        writers.append(Pcap(pcap_file, port))
    return writers


def _refuse_served(args: argparse.Namespace) -> None:
    """A socket that joins a served port's SO_REUSEPORT group takes some
    of its datagrams: listen does so only when told to (--share)."""
    from udp_reader import served

    try:
        host, port = sockets.parse_address(args.address)
        others = served.serving(host, port)
    except ValueError:
        return  # not a numeric address: the bind says what is wrong with it
    if others:
        where = sockets.format_address(host, port)
        bound = ", ".join(sorted({sockets.format_address(str(s.host), port) for s in others}))
        raise UsageError(
            f"{where} is already served here ({bound}): listen would take some of its "
            f"datagrams; watch without taking any: udp-reader watch {where} (root), "
            f"or share on purpose: --share")


def cmd_listen(args: argparse.Namespace) -> int:
    fmt = _check_output(args)
    if args.share and not args.reuseport:
        raise UsageError("--share joins the port's SO_REUSEPORT group: leave out --no-reuseport")
    if args.reuseport and not args.share:
        _refuse_served(args)
    pcap_file = _open_output(args.write) if args.write else None
    reader = None
    # With --count, never take more in one receive than is still wanted.
    fields = {"batch_size": min(args.batch_size, args.count)} if args.count else {}
    # TTL and TOS cost two control messages a packet: read only when shown.
    fields["ip_fields"] = fmt in ("hex", "jsonl") or pcap_file is not None
    try:
        reader = _open_reader(args, timestamps=True, **fields)
        said = [f"listening on {sockets.format_address(*reader.address)}"]
        said += [f"joined {m.describe()}" for m in reader.memberships]
        return _listen(args, reader, _writers(fmt, pcap_file, reader.address[1]), "listen",
                       said)
    finally:
        if reader is not None:
            reader.close()
        if pcap_file is not None:
            pcap_file.close()


def cmd_watch(args: argparse.Namespace) -> int:
    from udp_reader.watch import Watcher

    fmt = _check_output(args)
    if args.rcvbuf < 1:
        raise UsageError(f"--rcvbuf must be at least 1, not {args.rcvbuf}")
    pcap_file = _open_output(args.write) if args.write else None
    watcher = None
    try:
        try:
            watcher = Watcher(args.address, interface=args.interface, rcvbuf=args.rcvbuf,
                              batch_size=min(DEFAULT_BATCH, args.count or DEFAULT_BATCH))
        except PermissionError as e:
            raise UsageError(describe(e)) from None
        except ValueError as e:
            raise UsageError(str(e)) from None
        host, port = watcher.address
        said = [f"watching {sockets.format_address(host or '*', port)} on "
                f"{args.interface or 'every interface'}"]
        return _listen(args, watcher, _writers(fmt, pcap_file, port), "watch", said,
                       summary=_watch_summary)
    finally:
        if watcher is not None:
            watcher.close()
        if pcap_file is not None:
            pcap_file.close()


def _watch_summary(stats, unshown: int, seconds: float) -> str:
    past = f", {unshown} seen past --count and not shown" if unshown else ""
    return (f"{stats.received} seen, {stats.delivered - unshown} shown{past}, "
            f"{stats.too_long} seen only in part (IP fragments), "
            f"{stats.kernel_drops} dropped by the kernel before the watcher read them "
            f"in {seconds:.1f} s")


def _listen(args: argparse.Namespace, reader, writers: list, command: str, said: list,
            summary: Optional[Callable] = None) -> int:
    """Show what `reader` (a Reader, or a Watcher) takes, until stopped;
    `said` are the lines that tell it is ready, once SIGTERM stops it."""
    signal.signal(signal.SIGTERM, lambda *_: reader.stop())
    left = args.count
    unshown = 0  # delivered past --count: taken from the kernel, not shown
    host, port = reader.address
    where = sockets.format_address(host, port)
    status = StatusLine(lambda: reader.stats, 0 if args.top else args.status_interval)
    if args.top:
        from udp_reader.cli.top import TopView  # numpy: only when asked for
    top = TopView(lambda: reader.stats, f"udp-reader {command} {where}", port,
                  args.status_interval) if args.top else None
    # Packet lines and the status line share the terminal: each batch's
    # lines go out with the status line cleared, and it comes back below.
    aside = status.aside if writers and sys.stdout.isatty() else contextlib.nullcontext

    def on_batch(batch) -> None:
        nonlocal left, unshown
        if left == 0:  # a receive after the stop
            unshown += len(batch)
            return
        if top is not None:
            top.add(batch, left)
        if not writers and left is None:
            return  # counting only: the reader's stats do it
        with aside():
            for i, packet in enumerate(batch):
                for writer in writers:
                    writer.write(packet)
                if left is not None:
                    left -= 1
                    if not left:
                        reader.stop()  # the rest stays unshown: exactly N
                        unshown = len(batch) - i - 1
                        break
            for writer in writers:
                writer.flush()

    for line in said:
        log.info("%s", line)
    if args.duration:
        timer = threading.Timer(args.duration, reader.stop)
        timer.daemon = True
        timer.start()
    with status, (top or contextlib.nullcontext()):
        try:
            reader.run_batches(on_batch)
        except KeyboardInterrupt:
            pass
        except BrokenPipeError:
            # The reading end went away (| head): stop quietly, as cat does.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
    for writer in writers:
        writer.close()
    if summary is None:
        print(status.summary(reader.stats, unshown), file=sys.stderr)
    else:
        print(summary(reader.stats, unshown, status.elapsed()), file=sys.stderr)
    return EXIT_OK


def cmd_send(args: argparse.Namespace) -> int:
    from udp_reader.cli.send import LoadGenerator, parse_sizes

    if args.rate < 0:
        raise UsageError(f"--rate must be 0 or more, not {args.rate}")
    _check_limits(args)
    if args.payload.startswith("@") and args.size is not None:
        raise UsageError("--size does not go with --payload @FILE: the file's length is the size")
    try:
        generator = LoadGenerator(args.address, sizes=parse_sizes(args.size or "64"),
                                  payload=args.payload, flows=args.flows, gso=args.gso)
    except (ValueError, OSError) as e:
        raise UsageError(describe(e)) from None
    if args.count is None and args.duration is None:
        log.info("sending until Ctrl-C (give --count or --duration to stop by itself)")
    # Ctrl-C and TERM end the send the same way: the summary, exit 0.
    stops = {sig: signal.signal(sig, lambda _sig, _frame: generator.stop())
             for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        report = generator.run(rate=args.rate, count=args.count, duration=args.duration)
    finally:
        generator.close()
        for sig, previous in stops.items():
            signal.signal(sig, previous)
    print(report)
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from udp_reader.cli import bench as benchmark

    if args.count < 1 or args.rounds < 1:
        raise UsageError("--count and --rounds must be at least 1")
    if not 1 <= args.size <= MAX_PAYLOAD:
        raise UsageError(f"--size must be within 1..{MAX_PAYLOAD}, not {args.size}")
    try:
        results = benchmark.compare(args.count, args.size, args.rounds)
    except RuntimeError as e:
        raise UsageError(str(e)) from None
    base = results["py_recvfrom"]["packets_per_second"]
    for row in results.values():
        row["vs_py_recvfrom"] = row["packets_per_second"] / base
    if args.json:
        print(json.dumps({"count": args.count, "size": args.size, "rounds": args.rounds,
                          "results": results}, indent=2))
        return EXIT_OK
    print(f"{args.count} datagrams of {args.size} bytes, median of {args.rounds} rounds, "
          f"fill then drain on loopback")
    print(f"{'contender':<12} {'packets/s':>12} {'vs recvfrom':>12}")
    for name, row in sorted(results.items(), key=lambda kv: -kv[1]["packets_per_second"]):
        print(f"{name:<12} {row['packets_per_second']:>12,.0f} {row['vs_py_recvfrom']:>11.2f}x")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from udp_reader.serve import logs
    from udp_reader.serve.arbiter import Arbiter, StartError

    logs.configure(logging.getLogger().getEffectiveLevel(), "udp-reader")

    try:
        config = serve_flags.make_config(args, args.argv)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        return Arbiter(config).run()
    except StartError as e:  # binding, the pid file, the first workers: a wrong input
        raise UsageError(str(e)) from None


def cmd_status(args: argparse.Namespace) -> int:
    from udp_reader.cli import status

    try:
        snapshot = status.load(args.pid_file)
    except status.NotRunning as e:  # exit 1: nothing serves there
        print(f"udp-reader: error: not running: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except status.Unreadable as e:
        raise UsageError(str(e)) from None
    print(status.as_json(snapshot) if args.json else status.render(snapshot))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="udp-reader",
        description="Read UDP datagrams at kernel speed.",
        epilog="examples:\n  udp-reader listen :9000\n"
               "  udp-reader send 127.0.0.1:9000 --rate 10000 --duration 5\n"
               "  udp-reader serve myapp.udp:handle --bind :9000 --workers 2\n"
               "  udp-reader bench",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    listen = sub.add_parser(
        "listen", help="receive and show packets and live statistics",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Receive on ADDRESS and print every packet; a live status line "
                    "goes to stderr.",
        epilog="examples:\n"
               "  udp-reader listen :9000\n"
               "  udp-reader listen 127.0.0.1:9000 --format jsonl --count 100\n"
               "  udp-reader listen :514 --top\n"
               "  udp-reader listen [::]:514 --write syslog.pcap --duration 60\n"
               "  udp-reader listen :5000 --join 239.1.2.3@eth0 --format jsonl\n"
               "  udp-reader listen :5000 --join '10.0.0.5>232.1.1.1@eth0'\n\n"
               "jsonl, hex and --write show each packet's TTL and TOS.")
    listen.add_argument("address", metavar="ADDRESS",
                        help="host:port, :port (all addresses) or [v6]:port")
    _add_output_options(listen)
    listen.add_argument("--join", action="append", metavar="GROUP", help=JOIN_HELP)
    add_reader_flags(listen, ip_fields=False)  # listen reads them when it shows them
    listen.add_argument("--no-reuseport", dest="reuseport", action="store_false",
                        help="refuse to share the port (SO_REUSEPORT off)")
    listen.add_argument("--share", action="store_true",
                        help="listen on a port another socket serves: join its "
                             "SO_REUSEPORT group and take part of its traffic (without "
                             "it, such a port is refused; `watch` takes nothing)")
    listen.set_defaults(func=cmd_listen)

    watch = sub.add_parser(
        "watch", help="show a port's packets without taking them (as tcpdump does)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Show every UDP datagram arriving for ADDRESS, in listen's formats, "
                    "while the sockets serving the port still get each one: a packet "
                    "socket with a kernel filter for the port, as tcpdump uses. Needs "
                    "root or CAP_NET_RAW.",
        epilog="examples:\n"
               "  udp-reader watch :9000\n"
               "  udp-reader watch :514 --top\n"
               "  udp-reader watch 127.0.0.1:9000 --format jsonl --count 100\n"
               "  udp-reader watch [::]:514 --write syslog.pcap --interface eth0\n\n"
               "Datagrams this host sends are not shown unless they come back in "
               "(loopback); IP fragments after the first are not seen.")
    watch.add_argument("address", metavar="ADDRESS",
                       help="host:port, :port (every address, IPv4 and IPv6), "
                            "0.0.0.0:port (IPv4) or [v6]:port")
    _add_output_options(watch)
    watch.add_argument("--interface", metavar="NAME",
                       help="only packets arriving on this interface (default every one)")
    watch.add_argument("--rcvbuf", type=int, default=DEFAULT_RCVBUF, metavar="BYTES",
                       help=f"the watcher's receive buffer (default {DEFAULT_RCVBUF})")
    watch.set_defaults(func=cmd_watch)

    send = sub.add_parser(
        "send", help="generate load with sendmmsg",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Send datagrams to ADDRESS and print the rate achieved.",
        epilog="examples:\n"
               "  udp-reader send 127.0.0.1:9000 --count 1000000\n"
               "  udp-reader send [::1]:9000 --rate 50000 --duration 10 --size 64-1400 --flows 8")
    send.add_argument("address", metavar="ADDRESS", help="host:port or [v6]:port")
    send.add_argument("--rate", type=float, default=0, metavar="PPS",
                      help="datagrams per second; 0 is as fast as possible (default)")
    send.add_argument("--count", type=int, metavar="N", help="stop after N datagrams")
    send.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    send.add_argument("--size", metavar="N|MIN-MAX",
                      help="payload bytes (default 64; an @FILE payload is its own size)")
    send.add_argument("--flows", type=int, default=1, metavar="K",
                      help="distinct source ports, so SO_REUSEPORT spreads them (default 1)")
    send.add_argument("--payload", default="seq", metavar="seq|random|@FILE",
                      help="seq: an 8-byte little-endian sequence number first (default)")
    send.add_argument("--gso", action="store_true",
                      help=f"send {GSO_SEGMENTS} datagrams per system call with UDP_SEGMENT (one --size)")
    send.set_defaults(func=cmd_send)

    bench = sub.add_parser(
        "bench", help="compare this package with other ways to read UDP",
        description="Fill a loopback socket, then time each contender draining it.")
    bench.add_argument("--count", type=int, default=100_000, metavar="N",
                       help="datagrams per round (default 100000)")
    bench.add_argument("--size", type=int, default=64, metavar="N",
                       help="payload bytes (default 64)")
    bench.add_argument("--rounds", type=int, default=5, metavar="R",
                       help="interleaved rounds; medians are reported (default 5)")
    bench.add_argument("--json", action="store_true", help="print JSON")
    bench.set_defaults(func=cmd_bench)

    consume.add_parser(sub)

    serve = serve_flags.add_parser(sub)
    serve.set_defaults(func=cmd_serve)

    status = sub.add_parser(
        "status", help="show what a running `serve` master reports",
        description="Print the workers, counters and queues of the `udp-reader serve` "
                    "master that wrote FILE (--pid-file), from the status it writes beside "
                    "it every second. Exit status: 0 shown, 1 not running, 2 unreadable files.")
    status.add_argument("--pid-file", metavar="FILE", required=True,
                        help="the master's --pid-file")
    status.add_argument("--json", action="store_true", help="print the whole status as JSON")
    status.set_defaults(func=cmd_status)
    return parser


def _stdout_gone() -> bool:
    """True when nobody reads our stdout any more (a pipe's reader exited)."""
    poller = select.poll()
    poller.register(sys.stdout.fileno(), 0)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    level = logging.INFO + 10 * (args.quiet - args.verbose)
    logging.basicConfig(level=level, format="udp-reader: %(message)s", stream=sys.stderr)
    try:
        try:
            code = args.func(args)
            sys.stdout.flush()  # here, so a closed pipe is caught below
            return code
        except BrokenPipeError:
            if not _stdout_gone():
                raise
            # The reader of our output went away (| head): a normal end, as
            # for cat. Later writes (the interpreter's last flush) go nowhere.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
    except UsageError as e:
        print(f"udp-reader: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"udp-reader: error: {describe(e)}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
