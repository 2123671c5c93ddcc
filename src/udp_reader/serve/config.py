"""What `udp-reader serve` is asked to do: its options, their flags and
their checks, declared once."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Optional, Sequence, Tuple

from udp_reader import multicast, sockets
from udp_reader.options import ReaderOptions
from udp_reader.serve import steering

SIGNALS_HELP = """signals to the master:
  HUP         rolling restart: each slot's socket passes to a new worker
  TERM, INT   graceful stop (a second INT: fast)
  QUIT        fast stop
  TTIN, TTOU  one worker more, one fewer (RTMIN+1, RTMIN+2: the same, counted
              exactly however fast they come: the kernel queues them)
  USR2        upgrade: a new master takes over every socket

the handler finds its slot number (0, 1, ...) in UDP_READER_SLOT.

examples:
  udp-reader serve myapp.udp:handle --bind :9000 --workers 2
  udp-reader serve myapp.udp:handle --bind :5000 --workers 2 --join 239.1.2.3@eth0"""


@dataclasses.dataclass(frozen=True)
class Config:
    handler: str
    bind: Optional[str]
    argv: Sequence[str] = ()       # the command line, for an upgrade (USR2)
    reader: ReaderOptions = ReaderOptions(gro=True)
    workers: int = 1
    shared: bool = False
    batches: bool = False
    grace: float = 0.05
    graceful_timeout: float = 30.0
    start_timeout: float = 30.0
    pid_file: Optional[str] = None
    handoff_dir: Optional[str] = None   # offer the sockets to another master here
    takeover_dir: Optional[str] = None  # take the sockets of a running master
    user: Optional[str] = None          # workers run as (name or id)
    group: Optional[str] = None
    # A handler call (or a worker's silence) longer than this kills the
    # worker; 0 never does. A queue holds seconds of traffic, not tens: a
    # worker stuck 10 s is already losing datagrams, and the master's own
    # pauses are not counted against it (clock.py).
    timeout: float = 10.0
    max_packets: Optional[int] = None   # a worker is replaced after about this many
    max_packets_jitter: int = 0
    steer: str = "hash"                 # see steering.py
    metrics: Optional[str] = None       # HOST:PORT for Prometheus (metrics.py)
    join: Tuple[multicast.Membership, ...] = ()  # multicast groups: one shared socket

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, not {self.workers}")
        if self.grace < 0:
            raise ValueError(f"--grace must be 0 or more, not {self.grace:g}")
        for flag, value in (("--graceful-timeout", self.graceful_timeout),
                            ("--start-timeout", self.start_timeout)):
            if not value > 0:
                raise ValueError(f"{flag} must be positive, not {value:g}")
        if not 0 <= self.timeout < float("inf"):
            raise ValueError(f"--timeout must be 0 (never) or positive, not {self.timeout:g}")
        if self.group is not None and self.user is None:
            raise ValueError("--group needs --user: without it the workers would keep root")
        if self.max_packets is not None and self.max_packets < 1:
            raise ValueError(f"--max-packets must be at least 1, not {self.max_packets}")
        if self.steer not in steering.MODES:
            raise ValueError(f"--steer must be one of {', '.join(steering.MODES)}")
        if self.steer != "hash" and self.shared:
            raise ValueError(f"--steer {self.steer} needs a socket per worker, not --shared")
        for i, m in enumerate(self.join):
            if m in self.join[:i]:
                raise ValueError(f"--join {m}: given twice")
        if self.steer != "hash" and self.join:
            raise ValueError(f"--steer {self.steer} needs a socket per worker, but --join "
                             "serves one shared socket (every socket on the port would get "
                             "its own copy of each multicast datagram)")
        cpus = len(os.sched_getaffinity(0))
        if self.steer == "cpu" and self.workers > cpus:
            raise ValueError(f"--steer cpu: {self.workers} workers but {cpus} CPU(s)")
        if self.max_packets_jitter < 0:
            raise ValueError(f"--max-packets-jitter must be 0 or more, "
                             f"not {self.max_packets_jitter}")
        if self.metrics is not None:
            try:
                sockets.parse_address(self.metrics)
            except ValueError as e:
                raise ValueError(f"--metrics: {e}") from None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Config":
        return cls(handler=args.handler, bind=args.bind, argv=args.argv,
                   reader=ReaderOptions.from_args(args), workers=args.workers,
                   shared=args.shared, batches=args.batches, grace=args.grace,
                   graceful_timeout=args.graceful_timeout, start_timeout=args.start_timeout,
                   pid_file=args.pid_file, handoff_dir=args.handoff, takeover_dir=args.takeover,
                   user=args.user, group=args.group, timeout=args.timeout,
                   max_packets=args.max_packets, max_packets_jitter=args.max_packets_jitter,
                   steer=args.steer, metrics=args.metrics, join=parse_joins(args.join))


def parse_joins(specs: Optional[Sequence[str]]) -> Tuple[multicast.Membership, ...]:
    """--join values (serve's and listen's); a wrong one is a ValueError
    naming it."""
    joins = []
    for spec in specs or ():
        try:
            joins.append(multicast.parse(spec))
        except ValueError as e:
            raise ValueError(f"--join {spec}: {e}") from None
    return tuple(joins)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config)}


def add_parser(sub: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    serve = sub.add_parser(
        "serve", help="run a handler in supervised worker processes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run MODULE:CALLABLE on every packet (or batch) in worker processes "
                    "that share one port, with restarts that lose nothing.",
        epilog=SIGNALS_HELP)
    serve.add_argument("handler", metavar="MODULE:CALLABLE",
                       help="called with each Packet (or each Batch with --batches)")
    serve.add_argument("--bind", metavar="ADDRESS",
                       help="address to serve; not needed under socket activation")
    serve.add_argument("--workers", type=int, default=_DEFAULTS["workers"], metavar="N",
                       help="worker processes (default %(default)s)")
    serve.add_argument("--shared", action="store_true",
                       help="all workers read one socket instead of one socket each")
    serve.add_argument("--join", action="append", metavar="GROUP",
                       help="join a multicast group, [SOURCE>]GROUP[@INTERFACE] (239.1.2.3@eth0, "
                            "'10.0.0.5>232.1.1.1@eth0' quoted, ff15::1@*); repeat for more. "
                            "Implies --shared: each datagram is handled once")
    serve.add_argument("--batches", action="store_true",
                       help="call the handler once per received batch")
    ReaderOptions.add_arguments(serve)
    for name, what in (("grace", "a draining socket is done once idle this long"),
                       ("graceful_timeout", "longest a worker may take to leave"),
                       ("start_timeout", "longest a new worker may take to be ready")):
        serve.add_argument("--" + name.replace("_", "-"), type=float, default=_DEFAULTS[name],
                           metavar="S", help=f"{what}, seconds (default %(default)s)")
    serve.add_argument("--timeout", type=float, default=_DEFAULTS["timeout"], metavar="S",
                       help="a worker whose handler has not returned for S seconds is "
                            "killed (its stack logged) and replaced on the same socket; "
                            "0: never (default %(default)s)")
    serve.add_argument("--max-packets", type=int, metavar="N",
                       help="replace a worker, without loss, after it handled about N packets")
    serve.add_argument("--max-packets-jitter", type=int, default=0, metavar="J",
                       help="add up to J to each worker's --max-packets, so they do not "
                            "all restart at once (default 0)")
    serve.add_argument("--steer", choices=steering.MODES, default=_DEFAULTS["steer"],
                       help="which worker gets a datagram: hash keeps each flow on one "
                            "worker; spread deals datagrams at random (for few busy "
                            "sources); cpu prefers the worker pinned to the receiving CPU "
                            "(default %(default)s)")
    serve.add_argument("--user", metavar="USER",
                       help="run the workers as USER (name or id); the master stays root")
    serve.add_argument("--group", metavar="GROUP",
                       help="run the workers with GROUP (default: USER's group)")
    serve.add_argument("--pid-file", metavar="FILE",
                       help="write the master's pid here once it serves")
    serve.add_argument("--metrics", metavar="HOST:PORT",
                       help="serve Prometheus metrics at http://HOST:PORT/metrics "
                            '(needs pip install "udp-reader[metrics]")')
    serve.add_argument("--handoff", metavar="DIR",
                       help="offer the sockets to another master over a Unix socket in DIR "
                            "(made mode 0700)")
    serve.add_argument("--takeover", metavar="DIR",
                       help="read the sockets a running master offers in DIR (--handoff), "
                            "alongside it; then TERM that master")
    return serve

