"""The publisher: one message per batch to a JetStream subject, each done
when the stream acknowledges it, with a bounded window of unacknowledged
bytes.

Callers are synchronous (a Reader's handler); the NATS client is asyncio,
so it runs on an event loop in a thread of its own. publish() blocks while
the window is full: the handler waits, the Reader stops reading, and the
kernel's queue absorbs (its drops are counted as always). A message whose
acknowledgement does not come is sent again with the same id until it
comes; the stream drops a copy it already holds as a duplicate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from typing import Optional

from udp_reader import Batch
from udp_reader.errors import describe
from udp_reader.forward.ids import Ids
from udp_reader.forward.records import pack, spans
from udp_reader.forward.target import Target, TargetError

log = logging.getLogger("udp_reader.forward")

DEFAULT_WINDOW = 8 << 20  # unacknowledged bytes before publish() waits
DEFAULT_ACK_TIMEOUT = 5.0  # seconds before a message is sent again
CONNECT_TIMEOUT = 5.0
RETRY_PAUSE = 0.2  # between re-sends, so an outage is not a busy loop
RETRY_LOG_INTERVAL = 1.0  # seconds between warnings about re-sends


@dataclasses.dataclass(frozen=True)
class ForwardStats:
    """Counters of a Publisher since it began (messages, one per batch)."""
    forwarded: int = 0      # handed to publish()
    acknowledged: int = 0   # stored by the stream (duplicates included)
    retried: int = 0        # sent again after a missing acknowledgement or an error
    duplicates: int = 0     # acknowledged as copies the stream already held
    in_flight: int = 0      # sent, not yet acknowledged
    in_flight_bytes: int = 0
    datagrams: int = 0      # datagrams in the acknowledged messages

    def counts(self) -> list:
        """(name, value) of every counter."""
        return list(dataclasses.asdict(self).items())


class Publisher:
    """Publishes messages to `url` (nats://HOST:PORT[,HOST:PORT...]/SUBJECT).

    Raises TargetError at once, in one line, for a wrong URL, a server that
    refuses the connection, or no stream capturing the subject. Afterwards
    an outage is logged and retried, never raised: publish() waits.

        with Publisher("nats://127.0.0.1:4222/udp.in") as out:
            reader.run_batches(lambda batch: out.forward(batch, port))
    """

    def __init__(self, url: str, *, window: int = DEFAULT_WINDOW,
                 ack_timeout: float = DEFAULT_ACK_TIMEOUT, tag: str = "") -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1 byte, not {window}")
        self.target = Target.parse(url)
        self.subject: str = self.target.subject  # type: ignore[assignment]
        self.window = window
        self.ack_timeout = ack_timeout
        self.ids = Ids(tag)
        self._stats = ForwardStats()
        self._closing = False
        self._last_told = -RETRY_LOG_INTERVAL  # re-sends: when last logged, how many since
        self._untold = 0
        self._room = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="udp-reader-forward", daemon=True)
        self._thread.start()
        try:
            self.stream = self._call(self._check(), CONNECT_TIMEOUT * 2)
            self._nc = self._call(self._connect(), CONNECT_TIMEOUT * 2)
        except BaseException:
            self._stop_loop()
            raise
        self._js = self._nc.jetstream()

    # -- what callers use --------------------------------------------------

    def forward(self, batch: Batch, dst_port: int) -> None:
        """Publish `batch` (received on `dst_port`) as one message, or as
        several when it is larger than the server takes in one."""
        for start, stop in spans(batch, self._nc.max_payload):
            self.publish(pack(batch, dst_port, start, stop), stop - start)

    def publish(self, message: bytes, datagrams: int = 0) -> None:
        """Send `message` with the next id; returns once it is in flight,
        waiting first while the window is full."""
        size = len(message)
        with self._room:
            # A message larger than the window goes alone.
            self._room.wait_for(lambda: self._stats.in_flight_bytes == 0
                                or self._stats.in_flight_bytes + size <= self.window)
            self._add(forwarded=1, in_flight=1, in_flight_bytes=size)
        asyncio.run_coroutine_threadsafe(
            self._send(message, self.ids.next(), datagrams), self._loop)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every message is acknowledged; False if `timeout`
        seconds passed first."""
        with self._room:
            return self._room.wait_for(lambda: self._stats.in_flight == 0, timeout)

    @property
    def stats(self) -> ForwardStats:
        with self._room:
            return self._stats

    def close(self) -> None:
        """Wait for every acknowledgement, then disconnect."""
        if not self._thread.is_alive():
            return
        self.flush()
        self._closing = True
        self._call(self._nc.close(), CONNECT_TIMEOUT)
        self._stop_loop()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- on the event loop -------------------------------------------------

    async def _connect(self):
        """The connection that publishes: it reconnects without end, each
        outage logged."""
        import nats  # the optional extra 'forward'

        async def on_error(error: Exception) -> None:
            log.warning("forward to %s: %s", self.subject, describe(error) or repr(error))

        async def on_disconnect() -> None:
            if not self._closing:
                log.warning("forward to %s: disconnected; reconnecting", self.subject)

        return await nats.connect(
            servers=list(self.target.servers), connect_timeout=CONNECT_TIMEOUT,
            max_reconnect_attempts=-1, error_cb=on_error, disconnected_cb=on_disconnect)

    async def _check(self) -> str:
        """The stream capturing the subject, asked on a connection of its
        own that tries each server twice: a mistake at start is an error,
        not a reconnecting loop."""
        import nats
        from nats.js.errors import NotFoundError

        where = ",".join(self.target.servers)
        failures: list = []

        async def on_error(error: Exception) -> None:
            failures.append(error)

        try:
            nc = await nats.connect(
                servers=list(self.target.servers), connect_timeout=CONNECT_TIMEOUT,
                max_reconnect_attempts=1, reconnect_time_wait=0.1, error_cb=on_error)
        except Exception as e:
            why = failures[-1] if failures else e
            raise TargetError(f"cannot connect to {where}: "
                              f"{describe(why) or type(why).__name__}") from None
        try:
            return await nc.jetstream().find_stream_name_by_subject(self.subject)
        except NotFoundError:
            raise TargetError(f"no JetStream stream captures subject {self.subject!r} "
                              f"at {where}: create one first") from None
        except Exception as e:
            raise TargetError(f"cannot ask {where} for the stream of {self.subject!r}: "
                              f"{describe(e) or type(e).__name__}") from None
        finally:
            await nc.close()

    async def _send(self, message: bytes, msg_id: str, datagrams: int) -> None:
        headers = {"Nats-Msg-Id": msg_id}
        while True:
            try:
                ack = await self._js.publish(self.subject, message, timeout=self.ack_timeout,
                                             headers=headers)
                break
            except Exception as e:
                with self._room:
                    self._add(retried=1)
                self._tell_retry(msg_id, e)
                await asyncio.sleep(RETRY_PAUSE)
        with self._room:
            self._add(acknowledged=1, duplicates=int(bool(ack.duplicate)), in_flight=-1,
                      in_flight_bytes=-len(message), datagrams=datagrams)
            self._room.notify_all()

    def _tell_retry(self, msg_id: str, error: Exception) -> None:
        """A re-send, logged at most once a second: an outage re-sends
        every message in flight, again and again."""
        now = time.monotonic()
        if now - self._last_told < RETRY_LOG_INTERVAL:
            self._untold += 1
            return
        more = f" (and {self._untold} more re-sends)" if self._untold else ""
        log.warning("forward to %s: %s unacknowledged (%s); sending it again%s",
                    self.subject, msg_id, describe(error) or type(error).__name__, more)
        self._last_told, self._untold = now, 0

    # -- plumbing ----------------------------------------------------------

    def _add(self, **counts: int) -> None:
        s = self._stats
        self._stats = dataclasses.replace(
            s, **{name: getattr(s, name) + n for name, n in counts.items()})

    def _call(self, coroutine, timeout: float):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
