"""Faults: a stalling callback, a callback that raises mid-batch, and
running out of descriptors."""

import os
import resource
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import DEADLINE, SANITIZED, collect, send
from server import Server, recorded, serving
from udp_reader import Reader


def test_stalling_callback_overflow_is_counted_exactly():
    with Reader("127.0.0.1:0", rcvbuf=8192) as reader:
        sent = 0
        got = []

        def stall(packet):
            nonlocal sent
            got.append(packet.data)
            if len(got) == 1:
                # The handler stalls while the queue overflows behind it.
                sent += send(reader.address, [b"x" * 200] * 300)
            if len(got) == 2:
                reader.stop()

        sent += send(reader.address, [b"first"])
        reader.run(stall)
        got += collect(reader, sent, keep=lambda p: p.data, deadline=1.0)
        sent += send(reader.address, [b"last"])  # carries the final drop count
        got += collect(reader, 1)
        stats = reader.stats
    assert stats.kernel_drops > 0
    assert stats.kernel_drops == sent - stats.received
    assert stats.received == len(got)


def test_batch_callback_that_raises_loses_nothing_and_repeats_nothing():
    # Policy: a batch handed to on_batch counts as delivered, whatever the
    # callback does with it; the next run goes on with the next receive.
    with Reader("127.0.0.1:0", batch_size=4) as reader:
        send(reader.address, [b"%d" % i for i in range(8)])
        seen = []

        def fragile(batch):
            seen.extend(p.data for p in batch)
            if len(seen) == 4:
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            reader.run_batches(fragile)
        assert reader.stats.delivered == 4
        assert collect(reader, 4, batches=True) == [b"4", b"5", b"6", b"7"]
    assert seen == [b"0", b"1", b"2", b"3"]


EXHAUST = textwrap.dedent("""
    import os, resource
    from udp_reader import Reader
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    before = len(os.listdir("/proc/self/fd"))
    readers = []
    try:
        while True:
            readers.append(Reader("127.0.0.1:0"))
    except OSError as e:
        print("refused:", e.strerror)
    for r in readers:
        r.close()
    print("readers:", len(readers) > 5, "leaked:", len(os.listdir("/proc/self/fd")) - before)
""")


def test_descriptor_exhaustion_is_a_clear_error_and_leaks_nothing():
    result = subprocess.run([sys.executable, "-c", EXHAUST], capture_output=True, text=True,
                            timeout=DEADLINE)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "Too many open files" in lines[0]
    assert lines[1] == "readers: True leaked: 0"


def test_serve_out_of_descriptors_keeps_its_workers(tmp_path):
    server = Server("flaky:on_packet", record_dir=str(tmp_path))
    server.status()
    pid = server.proc.pid
    in_use = len(os.listdir(f"/proc/{pid}/fd"))
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use, in_use))
    server.proc.send_signal(signal.SIGTTIN)
    server.told("cannot start a worker: Too many open files")
    send(("127.0.0.1", server.port), [b"still-served"])
    deadline = time.monotonic() + DEADLINE
    while not recorded(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.proc.poll() is None
    assert server.stop() == 0
    assert recorded(str(tmp_path)) == [b"still-served"]


def test_listen_out_of_descriptors_is_one_line(tmp_path):
    # Five descriptors: the standard three, the pcap file, the socket; the
    # reader's wake-up descriptor is one too many.
    result = subprocess.run(["prlimit", "--nofile=5", sys.executable, "-m", "udp_reader",
                             "listen", "127.0.0.1:0", "--write", str(tmp_path / "x.pcap"),
                             "--duration", "1"], capture_output=True, text=True,
                            timeout=DEADLINE)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "udp-reader: error: Too many open files"


@pytest.mark.skipif(SANITIZED, reason="the sanitizer's allocator reserves its address "
                    "space at start: RLIMIT_AS does not reach it")
def test_a_reader_out_of_memory_is_told_as_one_and_its_worker_replaced(tmp_path):
    # The handler keeps every packet, so each receive needs a new 4 MiB
    # arena; the worker's address space is capped just above what it uses:
    # the reader cannot allocate. That is the reader's failure, not the
    # handler's: the worker leaves, and a new one takes over after a pause.
    with open(tmp_path / "keeper.py", "w") as f:
        f.write(textwrap.dedent("""\
            import os
            kept = []
            def on_packet(packet):
                kept.append(packet)
                with open(os.path.join(os.environ["RECORD_DIR"], f"{os.getpid()}.txt"), "ab") as f:
                    f.write(packet.data + b"\\n")
            """))
    server = Server("keeper:on_packet", record_dir=str(tmp_path))
    [(worker, _)] = server.workers()
    with open(f"/proc/{worker}/status") as f:
        size = next(int(l.split()[1]) for l in f if l.startswith("VmSize:")) * 1024
    resource.prlimit(int(worker), resource.RLIMIT_AS, (size + (1 << 20), size + (1 << 20)))

    def deliver(payload: bytes, total: int) -> None:
        send(("127.0.0.1", server.port), [payload])
        deadline = time.monotonic() + DEADLINE
        while len(recorded(str(tmp_path))) < total and time.monotonic() < deadline:
            time.sleep(0.02)

    deliver(b"first", 1)
    deliver(b"second", 2)  # a receive of its own: the worker fails, the next one has it
    deliver(b"third", 3)
    assert server.stop() == 0
    assert recorded(str(tmp_path)) == [b"first", b"second", b"third"]
    died = [l for l in server.lines if "died" in l]
    assert len(died) == 1 and "its reader failed" in died[0] and "no memory" in died[0], died
    assert "takes over its socket and queue in 1 s" in died[0]
    assert not any("handler raised" in l for l in server.lines)


def test_serve_out_of_descriptors_when_a_worker_dies_keeps_serving(tmp_path):
    # The killed worker's replacement cannot be spawned, and no socket can
    # be opened to take its slot off the port: logged, retried, and the
    # other worker serves on; with descriptors back, the slot is served again.
    server = Server("flaky:on_packet", "--workers", "2", record_dir=str(tmp_path))
    pid = server.proc.pid
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    (victim, victim_slot), _ = server.workers(serving(2))
    # Its three descriptors come free when it is reaped: leave none over.
    in_use = len(os.listdir(f"/proc/{pid}/fd")) - 3
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use, limits[1]))
    os.kill(int(victim), signal.SIGKILL)
    server.told(f"cannot take slot {victim_slot} off the port")
    assert server.proc.poll() is None
    resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
    # The slot has a worker again.
    server.status(lambda s: s["events"].get("exits_crashed") == 1 and serving(2)(s))
    assert server.stop() == 0
