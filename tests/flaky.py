"""Handlers for supervisor tests."""

import os


def on_packet(packet):
    """Raises on b"boom"; records everything else in RECORD_DIR."""
    if packet.data == b"boom":
        raise ValueError("boom")
    with open(os.path.join(os.environ["RECORD_DIR"], f"{os.getpid()}.txt"), "ab") as f:
        f.write(packet.data + b"\n")


not_callable = 42
