"""`udp-reader listen --top`: who sends to this port, redrawn in place.

Batches are tallied with numpy by whole columns (source address, local
address and interface, length); a thread draws the table every interval:
on a terminal in place, otherwise as text blocks one after another (like
`top -b`).
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, TextIO, Tuple

import numpy as np

from udp_reader import Batch, Stats
from udp_reader.cli.formats.base import interface_name
from udp_reader.cli.ticker import Ticker
from udp_reader.cli.units import human

# Upper bounds of the size histogram's buckets: powers of two, then the
# Ethernet payload (1500) and jumbo frames (9000).
SIZE_EDGES = (64, 128, 256, 512, 1024, 1500, 9000)
FOLD_ROWS = 1 << 14  # rows tallied per numpy pass
HOST_KEY = 24        # key bytes naming a host: family and address, uint64 each
NAME = 28            # width of the name column: 80 columns hold a row
MAX_KEYS = 100_000   # past this, the smallest keys are merged into "others"
HOME, CLEAR_TO_END_OF_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"
CLEAR_SCREEN, HIDE_CURSOR, SHOW_CURSOR = "\x1b[2J", "\x1b[?25l", "\x1b[?25h"


class Tally:
    """Packets and bytes per key, for keys given as rows of uint64 columns.
    Rows wait in a list and are counted FOLD_ROWS at a time, so a batch
    costs one copy, not one numpy.unique."""

    def __init__(self) -> None:
        self.totals: Dict[bytes, List[int]] = {}  # key -> [packets, bytes]
        self.others = [0, 0]
        self._keys: List[np.ndarray] = []
        self._lengths: List[np.ndarray] = []
        self._rows = 0

    def add(self, keys: np.ndarray, lengths: np.ndarray) -> None:
        self._keys.append(keys)
        self._lengths.append(lengths)
        self._rows += len(keys)
        if self._rows >= FOLD_ROWS:
            self.fold()

    def fold(self) -> None:
        if not self._rows:
            return
        keys = np.concatenate(self._keys)
        lengths = np.concatenate(self._lengths).astype(np.int64)
        self._keys, self._lengths, self._rows = [], [], 0
        # One row of k uint64 columns as one opaque value, so unique() sees keys.
        rows = np.ascontiguousarray(keys).view(np.dtype((np.void, keys.itemsize * keys.shape[1])))
        unique, inverse = np.unique(rows.ravel(), return_inverse=True)
        packets = np.bincount(inverse.ravel())
        nbytes = np.bincount(inverse.ravel(), weights=lengths)
        for key, p, b in zip(unique.tolist(), packets.tolist(), nbytes.tolist()):
            entry = self.totals.setdefault(key, [0, 0])
            entry[0] += p
            entry[1] += int(b)
        if len(self.totals) > MAX_KEYS:  # a spoofed flood must not eat memory
            ranked = sorted(self.totals.items(), key=lambda kv: -kv[1][0])
            self.totals = dict(ranked[:MAX_KEYS // 10])
            for _, (p, b) in ranked[MAX_KEYS // 10:]:
                self.others[0] += p
                self.others[1] += b

    def by(self, prefix: int) -> Dict[bytes, List[int]]:
        """Totals per key prefix of `prefix` bytes: [packets, bytes, keys]."""
        self.fold()
        grouped: Dict[bytes, List[int]] = {}
        for key, (p, b) in self.totals.items():
            entry = grouped.setdefault(key[:prefix], [0, 0, 0])
            entry[0] += p
            entry[1] += b
            entry[2] += 1
        return grouped


def top(grouped: Dict[bytes, List[int]], n: int) -> List[Tuple[bytes, List[int]]]:
    return sorted(grouped.items(), key=lambda kv: (-kv[1][0], -kv[1][1]))[:n]


def _address(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    return str(ipaddress.IPv6Address(raw[:16]))


def source_name(key: bytes) -> str:
    """A source host: family, then the 16 address bytes."""
    return _address(int.from_bytes(key[:8], "little"), key[8:24])


def destination_name(key: bytes, port: int) -> str:
    """A destination key: family, the 16 address bytes, then the interface."""
    family = int.from_bytes(key[:8], "little")
    host = _address(family, key[8:24])
    host = f"[{host}]" if family == socket.AF_INET6 else host
    return f"{host}:{port} {interface_name(int.from_bytes(key[24:32], 'little'))}"


def _columns(records: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Source keys (family, address, port) and destination keys (family,
    address, interface) of batch records, as (n, 4) uint64 each."""
    n = len(records)
    src = np.empty((n, 4), dtype=np.uint64)
    src[:, 0] = records["family"]
    src[:, 1:3] = np.ascontiguousarray(records["src_addr"]).view("<u8")
    src[:, 3] = records["src_port"]
    dst = np.empty((n, 4), dtype=np.uint64)
    dst[:, 0] = records["family"]
    dst[:, 1:3] = np.ascontiguousarray(records["dst_addr"]).view("<u8")
    dst[:, 3] = records["ifindex"]
    return src, dst


class TopView:
    """Tallies batches (add(), from the reader's thread) and draws the view
    every `interval` seconds from a thread of its own."""

    def __init__(self, stats: Callable[[], Stats], title: str, port: int,
                 interval: Optional[float] = None, stream: TextIO = sys.stdout) -> None:
        self._stats = stats
        self._title = title
        self._port = port
        self._stream = stream
        self._tty = stream.isatty()
        self._lock = threading.Lock()
        self.sources, self.destinations = Tally(), Tally()
        self.sizes = np.zeros(len(SIZE_EDGES) + 1, dtype=np.int64)
        self._started = time.monotonic()
        self._first: Tuple[float, Stats, Dict[bytes, int]] = (self._started, stats(), {})
        self._last = self._first
        self._average = False  # rates over the whole run, for the last table
        self._ticker = Ticker(1.0 if interval is None else interval, self.draw, "top")

    def add(self, batch: Batch, limit: Optional[int] = None) -> None:
        """Tally a batch, or its first `limit` packets."""
        records = batch.records[:limit]
        src, dst = _columns(records)
        lengths = records["length"]
        buckets = np.searchsorted(SIZE_EDGES, lengths, side="right")
        with self._lock:
            self.sources.add(src, lengths.copy())
            self.destinations.add(dst, lengths.copy())
            self.sizes += np.bincount(buckets, minlength=len(self.sizes))

    def __enter__(self) -> "TopView":
        if self._tty:
            self._stream.write(HIDE_CURSOR + CLEAR_SCREEN)
        self._ticker.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._ticker.stop()
        self._last, self._average = self._first, True
        self.draw()  # the last word stays on screen
        if self._tty:
            self._stream.write("\r\n" + SHOW_CURSOR)
        self._stream.flush()

    def draw(self) -> None:
        size = shutil.get_terminal_size((100, 30))
        lines = self.frame(size.columns, size.lines if self._tty else 1000)
        if self._tty:
            text = HOME + "".join(line + CLEAR_TO_END_OF_LINE + "\r\n" for line in lines[:-1])
            text += lines[-1] + CLEAR_TO_END_OF_LINE + CLEAR_BELOW
        else:
            text = "\n".join(lines) + "\n\n"
        self._stream.write(text)
        self._stream.flush()

    def frame(self, width: int, height: int) -> List[str]:
        """The view as lines of at most `width` characters, `height` lines."""
        now, stats = time.monotonic(), self._stats()
        with self._lock:
            sizes = self.sizes.copy()
            destinations = top(self.destinations.by(HOST_KEY + 8), 3)
            hosts = self.sources.by(HOST_KEY)  # a host's ports summed
            others = list(self.sources.others)
        sources = top(hosts, max(3, height - 14 - int(np.count_nonzero(sizes))))
        then, before, seen = self._last
        seconds = max(now - then, 1e-9)
        self._last = (now, stats, {key: entry[0] for key, entry in hosts.items()})
        total = max(int(sizes.sum()), 1)
        lines = [
            f"{self._title}   up {now - self._started:.0f} s",
            f"{'average ' if self._average else ''}"
            f"{human((stats.received - before.received) / seconds, 'pkt/s')}  "
            f"{human((stats.bytes - before.bytes) / seconds, 'B/s')}   "
            f"total {stats.received} pkt {human(stats.bytes, 'B')}   "
            f"filtered {stats.too_short + stats.too_long}   kernel drops {stats.kernel_drops}",
            "",
            f"{'SOURCE':<{NAME}} {'pkt/s':>9} {'packets':>11} {'%':>6} {'bytes':>10} "
            f"{'ports':>6}",
        ]
        for key, (p, b, ports) in sources:
            rate = (p - seen.get(key, 0)) / seconds
            lines.append(f"{source_name(key):<{NAME}} {rate:>9.0f} {p:>11} "
                         f"{100 * p / total:>6.1f} {human(b, 'B'):>10} {ports:>6}")
        if others[0]:
            lines.append(f"{'(others)':<{NAME}} {'':>9} {others[0]:>11} "
                         f"{100 * others[0] / total:>6.1f} {human(others[1], 'B'):>10}")
        lines += ["", f"{'DESTINATION':<{NAME}} {'':>9} {'packets':>11} {'%':>6} {'bytes':>10}"]
        for key, (p, b, _) in destinations:
            lines.append(f"{destination_name(key, self._port):<{NAME}} {'':>9} {p:>11} "
                         f"{100 * p / total:>6.1f} {human(b, 'B'):>10}")
        lines += ["", f"{'SIZE (bytes)':<14} {'packets':>11}"]
        most = max(int(sizes.max()), 1)
        bounds = (0,) + SIZE_EDGES + (65536,)
        for i, count in enumerate(sizes.tolist()):
            if count:
                label = f"{bounds[i]}-{bounds[i + 1] - 1}"
                bar = "#" * max(1, round(count * max(width - 28, 1) / most))
                lines.append(f"{label:<14} {count:>11}  {bar}")
        return [line[:width] for line in lines[:height]]
