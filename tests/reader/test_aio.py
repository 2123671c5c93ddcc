"""Reading from an event loop: the standard asyncio loop and uvloop."""

import asyncio

import pytest
import uvloop

from conftest import DEADLINE, send
from udp_reader import Reader, aio

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request):
    """Run a coroutine to completion on a fresh loop of each kind."""
    def run(coro):
        loop = LOOPS[request.param]()
        try:
            return loop.run_until_complete(asyncio.wait_for(coro, DEADLINE))
        finally:
            loop.close()
    return run


def test_async_iterator_of_batches_does_not_block_the_loop(run):
    payloads = [b"%d" % i for i in range(300)]

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        with Reader("127.0.0.1:0", rcvbuf=4 << 20) as reader:
            tick_task = asyncio.ensure_future(ticker())
            loop = asyncio.get_running_loop()
            # Nothing is queued yet: the iterator must wait on the loop.
            loop.call_later(0.1, send, reader.address, payloads)
            got = []
            async for batch in aio.batches(reader):
                got.extend(p.data for p in batch)
                if len(got) >= len(payloads):
                    break
            tick_task.cancel()
        return got, ticks

    got, ticks = run(main())
    assert got == payloads
    assert ticks >= 5  # the ticker ran while the iterator waited


def test_subscription_calls_back_per_packet_and_per_batch(run):
    async def main():
        with Reader("127.0.0.1:0") as reader:
            packets, sizes = [], []
            done = asyncio.get_running_loop().create_future()

            def on_packet(packet):
                packets.append(packet.data)
                if len(packets) == 50 and not done.done():
                    done.set_result(None)

            sub = aio.subscribe(reader, on_packet=on_packet)
            send(reader.address, [b"x"] * 50)
            await done
            sub.close()

            done2 = asyncio.get_running_loop().create_future()

            def on_batch(batch):
                sizes.append(len(batch))
                if sum(sizes) == 20:
                    done2.set_result(None)

            sub = aio.subscribe(reader, on_batch=on_batch)
            send(reader.address, [b"y"] * 20)
            await done2
            sub.close()
        return packets, sizes

    packets, sizes = run(main())
    assert packets == [b"x"] * 50
    assert sum(sizes) == 20


def test_subscribe_needs_exactly_one_handler(run):
    async def main():
        with Reader("127.0.0.1:0") as reader:
            with pytest.raises(TypeError):
                aio.subscribe(reader)
            with pytest.raises(TypeError):
                aio.subscribe(reader, on_batch=print, on_packet=print)
    run(main())


def test_receive_batch_returns_none_when_empty():
    with Reader("127.0.0.1:0") as reader:
        assert reader.receive_batch() is None
        send(reader.address, [b"a", b"b"])
        batch = reader.receive_batch()
        assert [p.data for p in batch] == [b"a", b"b"]
        assert reader.receive_batch() is None
        assert reader.stats.delivered == 2
