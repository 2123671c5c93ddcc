"""Where datagrams go: a NATS URL, `nats://HOST:PORT[,HOST:PORT...][/SUBJECT]`,
parsed once, so that a wrong one is one clear line before anything starts."""

from __future__ import annotations

import re
from typing import NamedTuple, Optional, Tuple

SCHEME = "nats"
DEFAULT_PORT = 4222
# A NATS subject: dot-separated tokens, no spaces; wildcards only to consume.
_SUBJECT = re.compile(r"^[^\s.*>]+(\.[^\s.*>]+)*$")


class TargetError(Exception):
    """A stream that cannot be used, said in one line: a wrong URL, a
    refused connection, no stream for the subject."""


class Target(NamedTuple):
    servers: Tuple[str, ...]  # nats://host:port, one per server of the cluster
    subject: Optional[str]

    @classmethod
    def parse(cls, url: str, *, subject: bool = True) -> "Target":
        """`url` as servers and subject; TargetError naming what is wrong.
        With subject=False the URL names servers only (to consume)."""
        scheme, sep, rest = url.partition("://")
        if not sep:
            raise TargetError(f"{url!r} is not a URL: give {SCHEME}://HOST:PORT"
                              + ("/SUBJECT" if subject else ""))
        if scheme != SCHEME:
            raise TargetError(f"unknown scheme {scheme!r} in {url!r}: only {SCHEME}:// "
                              f"(NATS JetStream) is supported")
        hosts, slash, path = rest.partition("/")
        servers = tuple(_server(h, url) for h in hosts.split(","))
        if subject and not path:
            raise TargetError(f"{url!r} names no subject: give {SCHEME}://HOST:PORT/SUBJECT")
        if not subject and path:
            raise TargetError(f"{url!r}: give the servers only ({SCHEME}://HOST:PORT), "
                              f"and the stream with --stream")
        if path and not _SUBJECT.match(path):
            raise TargetError(f"{path!r} in {url!r} is not a subject to publish to "
                              f"(dot-separated tokens, no wildcards)")
        return cls(servers, path or None)


def _server(hostport: str, url: str) -> str:
    host, port = hostport, str(DEFAULT_PORT)
    if hostport.startswith("["):  # [IPv6]:port
        host, _, after = hostport[1:].partition("]")
        host = f"[{host}]"
        port = after[1:] if after.startswith(":") else port
    elif ":" in hostport:
        host, _, port = hostport.rpartition(":")
    if not host or host == "[]":
        raise TargetError(f"{url!r} names no host")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise TargetError(f"{port!r} in {url!r} is not a port (1..65535)")
    return f"{SCHEME}://{host}:{port}"
