"""`udp-reader consume`: a JetStream stream's datagrams, printed as listen
prints them, from the messages forwarding wrote."""

from __future__ import annotations

import argparse
import asyncio
import sys

FORMATS = ["summary", "hex", "jsonl", "raw", "none"]


def add_parser(sub) -> argparse.ArgumentParser:
    consume = sub.add_parser(
        "consume", help="print the datagrams a stream holds, as listen prints them",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read the messages of a NATS JetStream stream that forwarding wrote, "
                    "oldest first, and print their datagrams in listen's formats. By "
                    "default it follows the stream, like tail -f.",
        epilog="examples:\n"
               "  udp-reader consume nats://127.0.0.1:4222 --stream UDP\n"
               "  udp-reader consume nats://10.0.0.5:4222 --stream UDP --format jsonl "
               "--no-follow\n"
               "  udp-reader consume nats://10.0.0.5:4222 --stream UDP --write flows.pcap "
               "--count 1000")
    consume.add_argument("url", metavar="URL", help="nats://HOST:PORT[,HOST:PORT...]")
    consume.add_argument("--stream", required=True, metavar="NAME", help="the stream to read")
    consume.add_argument("--format", choices=FORMATS,
                         help="what to print per datagram (default summary; none with --write)")
    consume.add_argument("--write", metavar="FILE.pcap", help="also save datagrams as pcap")
    consume.add_argument("--count", type=int, metavar="N", help="stop after N datagrams")
    consume.add_argument("--no-follow", dest="follow", action="store_false",
                         help="stop at the end of what the stream holds")
    consume.set_defaults(func=cmd_consume)
    return consume


def cmd_consume(args: argparse.Namespace) -> int:
    from udp_reader.cli.formats import FORMATS as WRITERS, Pcap
    from udp_reader.cli.main import EXIT_OK, UsageError, _open_output
    from udp_reader.forward.target import TargetError

    if args.count is not None and args.count < 1:
        raise UsageError(f"--count must be at least 1, not {args.count}")
    fmt = args.format or ("none" if args.write else "summary")
    pcap_file = _open_output(args.write) if args.write else None
    # A writer's port is the one a datagram was sent to: set per datagram.
    writers = [] if fmt == "none" else [WRITERS[fmt](sys.stdout.buffer, 0)]
    if pcap_file is not None:
        writers.append(Pcap(pcap_file, 0))
    try:
        asyncio.run(_print(args, writers))
    except TargetError as e:
        raise UsageError(str(e)) from None
    except KeyboardInterrupt:
        pass
    finally:
        for writer in writers:
            writer.close()
    return EXIT_OK


async def _print(args: argparse.Namespace, writers: list) -> None:
    from udp_reader.forward.stream import read_stream

    left = args.count
    async for got in read_stream(args.url, args.stream, follow=args.follow):
        for packet, port in zip(got.batch, got.dst_port.tolist()):
            for writer in writers:
                writer.local_port = port
                writer.write(packet)
            if left is not None:
                left -= 1
                if not left:
                    return
        for writer in writers:
            writer.flush()
