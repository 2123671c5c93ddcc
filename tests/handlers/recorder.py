"""Handlers for the restart harness: each worker appends the 8-byte sequence
number of every packet it handles to a file named for its slot and pid, so
the harness can check that every number sent arrived exactly once, and
which slot and process handled each flow.

STUCK_SEQ=N makes the handler hang forever on number N; RAISE_AFTER=1
makes it raise after recording each packet (or batch), BUSY_US=U after
U microseconds of work (per packet); SLOW_SLOT=K makes
the worker of slot K sleep SLOW_SECONDS per packet; STALL_IMPORT=FILE makes
the import take 8 s while FILE exists."""

import os
import time

if os.environ.get("STALL_IMPORT") and os.path.exists(os.environ["STALL_IMPORT"]):
    time.sleep(8)

_slot = os.environ.get("UDP_READER_SLOT", "x")
_out = os.open(os.path.join(os.environ["RECORD_DIR"], f"{_slot}.{os.getpid()}.seq"),
               os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
_stuck = int(os.environ.get("STUCK_SEQ", "-1")).to_bytes(8, "little", signed=True)
_pause = float(os.environ.get("SLOW_SECONDS", "0")) if os.environ.get("SLOW_SLOT") == _slot else 0
_raise = bool(os.environ.get("RAISE_AFTER"))
_busy = float(os.environ.get("BUSY_US", "0")) / 1e6


class Recorded(Exception):
    """RAISE_AFTER: raised after every packet (or batch) was recorded."""


def on_batch(batch):
    numbers = batch.payloads(8).tobytes()
    os.write(_out, numbers)
    if _stuck in numbers:
        threading_free_hang()
    if _raise:
        raise Recorded()


def on_packet(packet):
    number = packet.data[:8]
    os.write(_out, number)
    if number == _stuck:
        threading_free_hang()
    if _pause:
        time.sleep(_pause)
    if _busy:
        end = time.perf_counter() + _busy
        while time.perf_counter() < end:
            pass
    if _raise:
        raise Recorded()


def threading_free_hang():
    while True:
        time.sleep(3600)
