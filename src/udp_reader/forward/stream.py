"""Reading a stream back: its messages in order from the first, each
unpacked into the datagrams a Reader gave the publisher."""

from __future__ import annotations

import logging
from typing import AsyncIterator

from udp_reader.errors import describe
from udp_reader.forward.records import Unpacked, unpack
from udp_reader.forward.target import Target, TargetError

log = logging.getLogger("udp_reader.forward")

CONNECT_TIMEOUT = 5.0


async def read_stream(url: str, stream: str, *, follow: bool = True
                      ) -> AsyncIterator[Unpacked]:
    """The datagram messages of `stream` at `url` (nats://HOST:PORT[,...]),
    oldest first; with follow=False it ends at the last message the stream
    held when it began, else it waits for more, like `tail -f`. A message
    that is not in the record format is logged and skipped. TargetError, in
    one line, for a wrong URL, a refused connection or no such stream.

        async for got in read_stream("nats://127.0.0.1:4222", "UDP"):
            for packet in got.batch: ...
    """
    import nats  # the optional extra 'forward'
    from nats.js.errors import NotFoundError

    target = Target.parse(url, subject=False)
    where = ",".join(target.servers)
    failures: list = []

    async def on_error(error: Exception) -> None:
        failures.append(error)

    try:
        nc = await nats.connect(servers=list(target.servers), connect_timeout=CONNECT_TIMEOUT,
                                max_reconnect_attempts=1, reconnect_time_wait=0.1,
                                error_cb=on_error)
    except Exception as e:
        why = failures[-1] if failures else e
        raise TargetError(f"cannot connect to {where}: "
                          f"{describe(why) or type(why).__name__}") from None
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            raise TargetError(f"no JetStream stream {stream!r} at {where}") from None
        last = info.state.last_seq
        if not follow and not info.state.messages:
            return
        # An ordered consumer: the server's copy of the stream, in order,
        # no acknowledgements, gone with the connection. "" filters nothing.
        sub = await js.subscribe("", stream=stream, ordered_consumer=True)
        async for msg in sub.messages:
            seq = msg.metadata.sequence.stream
            try:
                yield unpack(msg.data)
            except ValueError as e:
                log.warning("stream %s message %d skipped: %s", stream, seq, e)
            if not follow and seq >= last:
                return
    finally:
        await nc.close()
