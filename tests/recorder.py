"""A handler for the restart harness: appends each packet's 8-byte sequence
number to a file of its own worker, so the harness can check that every
number sent arrived exactly once."""

import os

_out = os.open(os.path.join(os.environ["RECORD_DIR"], f"{os.getpid()}.seq"),
               os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def on_batch(batch):
    os.write(_out, batch.payloads(8).tobytes())


def on_packet(packet):
    os.write(_out, packet.data[:8])
