"""What `udp-reader serve` is asked to do: each option declared once, as an
Option in OPTIONS, from which come Config's fields and checks, the
command's flags (cli/serve_flags.py) and the table of
docs/serve-options.md (cli/serve_docs.py)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional, Sequence, Tuple

from udp_reader import multicast, sockets
from udp_reader.options import ReaderOptions
from udp_reader.serve import steering

# A check returns its complaint (one line, naming the flag), or None when
# the value is right; it sees the whole Config for options that go together.
Check = Callable[[Any, Any], Optional[str]]


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of serve: its Config field, flag, help and check."""

    name: str                    # the Config field
    flag: Optional[str]          # None: the positional argument
    help: str
    default: Any = None
    type: Callable[[str], Any] = str  # bool: a switch
    metavar: Optional[str] = None
    choices: Optional[Sequence[str]] = None
    many: bool = False           # may be given again; the field is a tuple
    # The given texts to the field's value; its ValueError starts with the wrong text.
    parse: Optional[Callable[[Tuple[str, ...]], Any]] = None
    check: Optional[Check] = None

    @property
    def shows_default(self) -> bool:
        """Whether the default is worth telling: an option that takes a value
        and has one."""
        return self.type is not bool and not self.many and self.default is not None


def _must(ok: Callable[[Any], bool], complaint: str) -> Check:
    """A check of the value alone: `complaint`, formatted with the value as
    {v}, unless ok(value)."""
    return lambda v, _: None if ok(v) else complaint.format(v=v)


def _once_each(joins: Tuple[multicast.Membership, ...], _: Any) -> Optional[str]:
    for i, m in enumerate(joins):
        if m in joins[:i]:
            return f"--join {m}: given twice"
    return None


def _steer(mode: str, c: Any) -> Optional[str]:
    if mode not in steering.MODES:
        return f"--steer must be one of {', '.join(steering.MODES)}"
    if mode != "hash" and c.shared:
        return f"--steer {mode} needs a socket per worker, not --shared"
    if mode != "hash" and c.join:
        return (f"--steer {mode} needs a socket per worker, but --join serves one shared "
                "socket (every socket on the port would get its own copy of each multicast "
                "datagram)")
    cpus = len(os.sched_getaffinity(0))
    if mode == "cpu" and c.workers > cpus:
        return f"--steer cpu: {c.workers} workers but {cpus} CPU(s)"
    return None


def _with_user(group: Optional[str], c: Any) -> Optional[str]:
    if group is not None and c.user is None:
        return "--group needs --user: without it the workers would keep root"
    return None


def _forward(url: Optional[str], c: Any) -> Optional[str]:
    if url is None:
        return None if c.handler else "give a handler, MODULE:CALLABLE, or --forward URL"
    if c.handler:
        return f"--forward publishes what the workers receive: give no handler ({c.handler})"
    from udp_reader.forward.target import Target, TargetError
    try:
        Target.parse(url)
    except TargetError as e:
        return f"--forward: {e}"
    return None


def _address(address: Optional[str], _: Any) -> Optional[str]:
    if address is not None:
        try:
            sockets.parse_address(address)
        except ValueError as e:
            return f"--metrics: {e}"
    return None


OPTIONS = (
    Option("handler", None, "called with each Packet (or each Batch with --batches); "
           "none with --forward", metavar="MODULE:CALLABLE"),
    Option("bind", "--bind", "address to serve; not needed under socket activation",
           metavar="ADDRESS"),
    Option("workers", "--workers", "worker processes", 1, int, "N",
           check=_must(lambda n: n >= 1, "--workers must be at least 1, not {v}")),
    Option("shared", "--shared", "all workers read one socket instead of one socket each",
           False, bool),
    Option("join", "--join", "join a multicast group, [SOURCE>]GROUP[@INTERFACE] "
           "(239.1.2.3@eth0, '10.0.0.5>232.1.1.1@eth0' quoted, ff15::1@*); repeat for more. "
           "Implies --shared: each datagram is handled once", (), metavar="GROUP", many=True,
           parse=multicast.parse_all, check=_once_each),
    Option("forward", "--forward", "no handler: publish each received batch as one message "
           "to a NATS JetStream subject, done when the stream acknowledges it; a stream "
           "capturing SUBJECT must exist (needs pip install \"udp-reader[forward]\")",
           metavar="nats://HOST:PORT[,HOST:PORT...]/SUBJECT", check=_forward),
    Option("batches", "--batches", "call the handler once per received batch", False, bool),
    Option("grace", "--grace", "a draining socket is done once idle this long, seconds",
           0.05, float, "S", check=_must(lambda s: not s < 0,
                                         "--grace must be 0 or more, not {v:g}")),
    Option("graceful_timeout", "--graceful-timeout",
           "longest a worker may take to leave, seconds", 30.0, float, "S",
           check=_must(lambda s: s > 0, "--graceful-timeout must be positive, not {v:g}")),
    Option("start_timeout", "--start-timeout",
           "longest a new worker may take to be ready, seconds", 30.0, float, "S",
           check=_must(lambda s: s > 0, "--start-timeout must be positive, not {v:g}")),
    # A queue holds seconds of traffic, not tens: a worker stuck 10 s is
    # already losing datagrams, and the master's own pauses are not counted
    # against it (clock.py).
    Option("timeout", "--timeout", "a worker whose handler has not returned for S seconds is "
           "killed (its stack logged) and replaced on the same socket; 0: never", 10.0, float,
           "S", check=_must(lambda s: 0 <= s < float("inf"),
                            "--timeout must be 0 (never) or positive, not {v:g}")),
    Option("max_packets", "--max-packets",
           "replace a worker, without loss, after it handled about N packets", None, int, "N",
           check=_must(lambda n: n is None or n >= 1,
                       "--max-packets must be at least 1, not {v}")),
    Option("max_packets_jitter", "--max-packets-jitter", "add up to J to each worker's "
           "--max-packets, so they do not all restart at once", 0, int, "J",
           check=_must(lambda j: j >= 0, "--max-packets-jitter must be 0 or more, not {v}")),
    Option("steer", "--steer", "which worker gets a datagram: hash keeps each flow on one "
           "worker; spread deals datagrams at random (for few busy sources); cpu prefers "
           "the worker pinned to the receiving CPU", "hash", choices=steering.MODES,
           check=_steer),
    Option("user", "--user", "run the workers as USER (name or id); the master stays root",
           metavar="USER"),
    Option("group", "--group", "run the workers with GROUP (default: USER's group)",
           metavar="GROUP", check=_with_user),
    Option("pid_file", "--pid-file", "write the master's pid here once it serves",
           metavar="FILE"),
    Option("metrics", "--metrics", "serve Prometheus metrics at http://HOST:PORT/metrics "
           '(needs pip install "udp-reader[metrics]")', metavar="HOST:PORT", check=_address),
    Option("handoff_dir", "--handoff", "offer the sockets to another master over a Unix "
           "socket in DIR (made mode 0700)", metavar="DIR"),
    Option("takeover_dir", "--takeover", "read the sockets a running master offers in DIR "
           "(--handoff), alongside it; then TERM that master", metavar="DIR"),
    Option("state_dir", "--state-dir", "keep the handlers' state (save_state) in DIR, "
           "private to the server, across full stops too; default: a private directory "
           "made at start, carried across USR2, removed at the final stop", metavar="DIR",
           check=_must(lambda d: d is None or os.path.isdir(d),
                       "--state-dir {v}: no such directory")),
    Option("checkpoint", "--checkpoint", "seconds between checkpoints of a handler's state, "
           "what a worker that dies is replaced from; 0: only when a worker hands on",
           1.0, float, "S", check=_must(lambda s: 0 <= s < float("inf"),
                                        "--checkpoint must be 0 (hand-over only) or "
                                        "positive, not {v:g}")),
)


def _post_init(config: Any) -> None:
    for o in OPTIONS:
        if o.check is not None:
            complaint = o.check(getattr(config, o.name), config)
            if complaint:
                raise ValueError(complaint)


def _from_args(cls: type, args: Any, **fields: Any) -> Any:
    """The Config of parsed flags (an argparse namespace: an attribute per
    option's name); `fields` adds what has no flag of its own: reader, argv.
    A wrong value is a ValueError naming its flag."""
    given = {}
    for o in OPTIONS:
        value = getattr(args, o.name)
        if o.many:
            value = tuple(value or ())
        if o.parse is not None:
            try:
                value = o.parse(value)
            except ValueError as e:
                raise ValueError(f"{o.flag} {e}") from None
        given[o.name] = value
    return cls(**given, **fields)


def _annotation(o: Option) -> Any:
    if o.many:
        return Tuple[Any, ...]
    return o.type if o.default is not None or o.flag is None else Optional[o.type]


# A field per option (the positional one first: it has no default), then
# what the command line does not set directly.
Config = dataclasses.make_dataclass(
    "Config",
    [(o.name, _annotation(o)) if o.flag is None else
     (o.name, _annotation(o), dataclasses.field(default=o.default)) for o in OPTIONS] + [
        ("argv", Sequence[str], dataclasses.field(default=())),  # to run again at USR2
        ("reader", ReaderOptions, dataclasses.field(default=ReaderOptions(gro=True))),
    ],
    namespace={"__post_init__": _post_init, "from_args": classmethod(_from_args),
               "__doc__": "What serve is asked to do: a field per Option, checked.",
               "__module__": __name__},
    frozen=True)
