"""A UDP echo server: every datagram goes back to its sender, from the
address it was sent to, a whole receive at a time in sendmmsg calls.

    python examples/echo_server.py :7007
    socat - UDP:127.0.0.1:7007

A datagram from the server's own port is never answered: it comes from
the server itself (a forged source: the answer would come back as a new
datagram, for ever) or from another echo server on that port (the two would
answer each other for ever). Those refused are counted and told at exit.
"""

from __future__ import annotations

import signal
import sys

import udp_reader


def main() -> None:
    address = sys.argv[1] if len(sys.argv) > 1 else ":7007"
    refused = 0
    with udp_reader.Reader(address) as reader:
        host, port = reader.address
        print(f"echoing on {udp_reader.sockets.format_address(host, port)}", flush=True)

        def echo(batch: udp_reader.Batch) -> None:
            nonlocal refused
            looping = batch.src_port == port
            if not looping.any():
                batch.reply(batch)  # a Packet is bytes-like
                return
            refused += int(looping.sum())
            batch.reply(None if loop else packet for packet, loop in zip(batch, looping.tolist()))

        signal.signal(signal.SIGTERM, lambda *_: reader.stop())
        try:
            reader.run_batches(echo)
        except KeyboardInterrupt:
            pass
    print(f"echo: {refused} datagram(s) from port {port} not answered (they would loop)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
