"""A UDP echo server: every datagram goes back to its sender, from the
address it was sent to, a whole receive at a time in sendmmsg calls.

    python examples/echo_server.py :7007
    socat - UDP:127.0.0.1:7007
"""

from __future__ import annotations

import sys

import udp_reader


def main() -> None:
    address = sys.argv[1] if len(sys.argv) > 1 else ":7007"
    with udp_reader.Reader(address) as reader:
        host, port = reader.address
        print(f"echoing on {udp_reader.sockets.format_address(host, port)}", flush=True)
        try:
            reader.run_batches(lambda batch: batch.reply(batch))  # a Packet is bytes-like
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
