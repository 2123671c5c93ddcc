"""A handler that keeps what it handles in memory and writes it out only in
batches of 5,000 and when its worker leaves (worker_stop): nothing reaches
the file unless the lifecycle hooks run on every way out."""

import os

_numbers = []
_out = -1


def worker_start():
    global _out
    slot = os.environ.get("UDP_READER_SLOT", "x")
    _out = os.open(os.path.join(os.environ["RECORD_DIR"], f"{slot}.{os.getpid()}.seq"),
                   os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def on_packet(packet):
    _numbers.append(packet.data[:8])
    if len(_numbers) >= 5000:
        worker_stop()


def worker_stop():
    os.write(_out, b"".join(_numbers))
    _numbers.clear()
