"""asyncio integration: read a Reader from an event loop (the standard one
or uvloop) without blocking it, through the loop's own add_reader()."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable, Optional

from udp_reader import Batch, Packet, Reader

# Batches handled per wake-up before other tasks get their turn.
FAIRNESS = 16


async def batches(reader: Reader) -> AsyncIterator[Batch]:
    """Yield batches as they arrive; waits on the loop when the queue is empty.

        async for batch in udp_reader.aio.batches(reader):
            ...
    """
    loop = asyncio.get_running_loop()
    fd = reader.fileno()
    streak = 0
    while True:
        batch = reader.receive_batch()
        if batch is not None:
            yield batch
            streak += 1
            if streak == FAIRNESS:
                streak = 0
                await asyncio.sleep(0)
            continue
        streak = 0
        readable = loop.create_future()

        def wake(future: asyncio.Future = readable) -> None:
            if not future.done():
                future.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await readable
        finally:
            loop.remove_reader(fd)


class Subscription:
    """Calls a handler from the loop for every batch or packet that arrives;
    close() stops it. Exceptions go to the loop's exception handler."""

    def __init__(self, reader: Reader, on_batch: Optional[Callable[[Batch], Any]] = None,
                 on_packet: Optional[Callable[[Packet], Any]] = None,
                 loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        if (on_batch is None) == (on_packet is None):
            raise TypeError("give on_batch or on_packet")
        self.reader = reader
        self.loop = loop or asyncio.get_running_loop()
        self._on_batch = on_batch
        self._on_packet = on_packet
        self._fd = reader.fileno()
        self.loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        for _ in range(FAIRNESS):
            batch = self.reader.receive_batch()
            if batch is None:
                return
            if self._on_batch is not None:
                self._on_batch(batch)
            else:
                for packet in batch:
                    self._on_packet(packet)  # type: ignore[misc]

    def close(self) -> None:
        self.loop.remove_reader(self._fd)


def subscribe(reader: Reader, *, on_batch: Optional[Callable[[Batch], Any]] = None,
              on_packet: Optional[Callable[[Packet], Any]] = None) -> Subscription:
    """Call on_batch (or on_packet) from the running loop as traffic arrives."""
    return Subscription(reader, on_batch=on_batch, on_packet=on_packet)
