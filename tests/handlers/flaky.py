"""Handlers for supervisor tests."""

import os
import time


def on_packet(packet):
    """Raises on b"boom" (and KeyError on b"key"), sleeps a minute on b"sleep"; records everything
    else in RECORD_DIR."""
    if packet.data == b"boom":
        raise ValueError("boom")
    if packet.data == b"key":
        raise KeyError("key")
    if packet.data == b"sleep":
        time.sleep(60)
        return
    with open(os.path.join(os.environ["RECORD_DIR"], f"{os.getpid()}.txt"), "ab") as f:
        f.write(packet.data + b"\n")


not_callable = 42
