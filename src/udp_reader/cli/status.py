"""`udp-reader status --pid-file FILE`: what a running master published
beside its pid file (statusfile.py), as a table or as JSON.

Exit status: 0 with the status printed; 1 when no master runs there (no pid
file, or one naming a process that is gone) or it has published no status
yet; 2 when the files are not what they should be (unreadable, no pid in
the pid file, no JSON in the status file).
"""

from __future__ import annotations

import json
import os
import time
from typing import List, Optional, Sequence

from udp_reader.serve import statusfile

STALE_AFTER = 5.0  # seconds: the master rewrites its status every second


class NotRunning(Exception):
    """No master serves at this pid file: exit 1."""


class Unreadable(Exception):
    """The pid or status file is not what it should be: exit 2."""


def load(pid_file: str) -> dict:
    """The snapshot of the master named by `pid_file`."""
    try:
        text = statusfile.read_small(pid_file, statusfile.MAX_PID_SIZE).decode(errors="replace")
        text = text.strip()
    except statusfile.NotAFile as e:
        raise Unreadable(str(e)) from None
    except FileNotFoundError:
        raise NotRunning(f"no pid file {pid_file}") from None
    except OSError as e:
        raise Unreadable(f"cannot read {pid_file}: {e.strerror}") from None
    if not text.isdigit() or int(text) <= 0:
        raise Unreadable(f"{pid_file} does not hold a pid")
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise NotRunning(f"{pid_file} names pid {pid}, which is not running "
                         "(a stale pid file)") from None
    except PermissionError:
        pass  # it runs, as another user
    if not _is_serve(pid):
        raise NotRunning(f"{pid_file} names pid {pid}, which is not a udp-reader serve "
                         "master (a stale pid file, its pid reused)")
    try:
        snapshot = statusfile.read(pid_file)
    except statusfile.NotAFile as e:
        raise Unreadable(str(e)) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Unreadable(f"{statusfile.path_for(pid_file)} is not a status file") from None
    except FileNotFoundError:
        raise NotRunning(f"pid {pid} has published no status in "
                         f"{statusfile.path_for(pid_file)} (still starting, or not a "
                         "udp-reader master)") from None
    except OSError as e:
        raise Unreadable(f"cannot read {statusfile.path_for(pid_file)}: {e.strerror}") from None
    except ValueError as e:  # gone meanwhile, or its status is not in place yet
        raise NotRunning(str(e)) from None
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("slots"), list):
        raise Unreadable(f"{statusfile.path_for(pid_file)} is not a status file")
    return snapshot


def _is_serve(pid: int) -> bool:
    """Whether `pid` runs `udp-reader serve` (or `python -m udp_reader
    serve`); True when its command line cannot be read."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return True
    return b"serve" in words and any(b"udp_reader" in w or b"udp-reader" in w for w in words)


def render(snapshot: dict, now: Optional[float] = None) -> str:
    """The snapshot as a header, a table of workers and a line of totals,
    with every character a terminal would act on shown as an escape."""
    now = time.time() if now is None else now
    shared = bool(snapshot.get("shared"))
    slots = snapshot.get("slots", [])
    lines = [f"master {snapshot.get('pid')} {snapshot.get('phase', '?')} on "
             f"{snapshot.get('address') or '?'}: {snapshot.get('workers', '?')} worker(s)"
             + (", one shared socket" if shared else "")]
    age = now - float(snapshot.get("time", now))
    if age > STALE_AFTER:
        lines.append(f"(this status is {_age(age)} old: the master's loop may be stuck)")

    header = ("SLOT", "PID", "STATE", "AGE", "RECEIVED", "DELIVERED", "DROPS", "QUEUED")
    rows: List[Sequence[str]] = []
    shown_socket = False
    for s in sorted(slots, key=lambda s: (s.get("slot", 0), s.get("state") != "draining")):
        # Socket figures once per socket: with --shared every slot reads one.
        socket_figures = ["", ""] if shared and shown_socket else [
            _count(s.get("kernel_drops")), _bytes(s.get("queued_bytes"))]
        shown_socket = True
        slot = str(s.get("slot", "?")) + (" (draining)" if s.get("state") == "draining" else "")
        workers = s.get("workers") or []
        if not workers:
            rows.append([slot, "-", str(s.get("state", "?")), "-", "-", "-", *socket_figures])
        for w in workers:
            stats = w.get("stats") or {}
            rows.append([slot, str(w.get("pid", "?")), str(w.get("state", "?")),
                         _age(now - float(w.get("started", now))),
                         _count(stats.get("received")), _count(stats.get("delivered")),
                         *socket_figures])
            slot, socket_figures = "", ["", ""]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    numeric = {4, 5, 6, 7}
    for row in [header, *rows]:
        cells = [c.rjust(w) if i in numeric else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())

    totals: dict = {}
    seen = set()
    for s in slots:  # a draining slot and its replacement share their totals
        if s.get("slot") not in seen:
            seen.add(s.get("slot"))
            for k, v in (s.get("totals") or {}).items():
                if isinstance(v, int):
                    totals[k] = totals.get(k, 0) + v
    events = snapshot.get("events") or {}
    lines.append(
        f"since start: {_count(totals.get('received'))} received, "
        f"{_count(totals.get('delivered'))} delivered, "
        f"{_count(totals.get('too_short', 0) + totals.get('too_long', 0))} filtered, "
        f"{_count(totals.get('handler_errors'))} handler error(s), "
        f"{_count(snapshot.get('kernel_drops', 0))} kernel drop(s)")
    if "forward_forwarded" in totals:  # serve --forward
        lines.append(
            f"forwarded: {_count(totals['forward_forwarded'])} message(s), "
            f"{_count(totals.get('forward_acknowledged'))} acknowledged "
            f"({_count(totals.get('forward_datagrams'))} datagrams), "
            f"{_count(totals.get('forward_retried'))} re-sent, "
            f"{_count(totals.get('forward_duplicates'))} duplicate(s), "
            f"{_count(totals.get('forward_in_flight'))} in flight")
    exits = ", ".join(f"{events[k]} {k[len('exits_'):].replace('_', ' ')}"
                      for k in sorted(events) if k.startswith("exits_") and events[k])
    lines.append(f"{_count(events.get('worker_starts', 0))} worker(s) started, "
                 f"{_count(events.get('restarts', 0))} rolling restart(s)"
                 + (f"; exits: {exits}" if exits else ""))
    return "\n".join(map(printable, lines))


def as_json(snapshot: dict) -> str:
    """The snapshot as JSON: json.dumps escapes all but DEL (ASCII, not a control for it)."""
    return json.dumps(snapshot, indent=2).replace("\x7f", "\\u007f")


def printable(text: str) -> str:
    """`text` with control, format and separator characters (ESC, C1, DEL,
    U+2028, bidirectional overrides...) written as \\x.. or \\u.... escapes:
    the status file is only as trustworthy as its directory."""
    return "".join(c if c.isprintable() else
                   f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}" for c in text)


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _bytes(value: object) -> str:
    if not isinstance(value, int):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} MiB"


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
