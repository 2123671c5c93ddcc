"""What the master tells a worker when it starts it: one declared shape,
built by the master, sent as JSON in the worker's environment
(protocol.CONFIG_ENV) and read back by the worker (worker.py)."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence

if TYPE_CHECKING:
    from udp_reader.serve.config import Config


@dataclasses.dataclass(frozen=True)
class WorkerOrders:
    handler: Optional[str]          # MODULE:CALLABLE; None with forward
    batches: bool                   # the handler takes Batches, not Packets
    grace: float                    # seconds a drain waits on an idle socket
    graceful_timeout: float         # longest a drain or a retire lasts
    recycle_at: Optional[int]       # --max-packets, with its jitter: then read no more
    reader: Dict[str, Any]          # Reader(**reader)
    credentials: Optional[Sequence[Any]]  # privileges.Credentials to run as
    cpu: Optional[int]              # --steer cpu: the CPU the worker runs on
    log_level: int
    state_dir: Optional[str] = None  # where the handler's state is kept (state.py)
    checkpoint: float = 0.0         # seconds between checkpoints of it; 0: at hand-over only
    forward: Optional[str] = None   # --forward: publish each batch there, no handler
    fd: int = -1                    # the socket, set by workers.spawn
    status_fd: int = -1             # where the worker reports (protocol.py)

    @classmethod
    def for_slot(cls, config: "Config", credentials: Optional[Sequence[Any]],
                 cpu: Optional[int], state_dir: Optional[str] = None) -> "WorkerOrders":
        recycle_at = (None if config.max_packets is None
                      else config.max_packets + random.randint(0, config.max_packets_jitter))
        return cls(handler=config.handler, batches=config.batches or config.forward is not None,
                   grace=config.grace,
                   graceful_timeout=config.graceful_timeout, recycle_at=recycle_at,
                   # The master sized the socket's buffer: the worker keeps it.
                   reader=dict(config.reader.as_kwargs(), rcvbuf=None),
                   credentials=credentials, cpu=cpu,
                   log_level=logging.getLogger().getEffectiveLevel(),
                   state_dir=state_dir, checkpoint=config.checkpoint, forward=config.forward)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "WorkerOrders":
        return cls(**json.loads(text))
