"""A NetFlow v9 (RFC 3954) and IPFIX (RFC 7011) collector: templates
learned per exporter, data sets decoded with numpy structured dtypes built
per template, flows written as JSON lines or as binary FLOW records.

An export datagram is a header and a list of sets. A template set says how
the records of later data sets are laid out: a list of (field type,
length), known by the exporter's address, its observation domain (v9: its
source id) and the template id. The data sets of a batch that share a
fixed-length template are read with one np.frombuffer over their bytes
and decoded column by column, with no Python step per flow but the making
of JSON text; a template with IPFIX variable-length fields is read record
by record.
Options templates describe records about the exporter itself; of those the
collector keeps the exporter's boot time (IPFIX systemInitTimeMilliseconds),
which dates flows timed in milliseconds since boot. IPFIX withdraws a
template with a record of no fields; any template may be sent again with
the same or a new layout (refresh).

Exporters send templates only now and then (softflowd every 16 datagrams,
routers every few minutes), so a data set may arrive before its template:
it is counted by (exporter, domain, template id) and reported in the log,
once a second at most and at exit, never dropped silently. The templates
and boot times are the collector's whole state: `save_state()` gives them
as bytes (versioned JSON, bounded) and `restore_state()` takes them back,
so a worker that takes over decodes from its first datagram. Malformed
input (a short header or set, a length past the datagram, a template of no
field or too many) is counted by reason and skipped. At most MAX_TEMPLATES
templates and MAX_BOOTS boot times are kept, the least recently used
forgotten first, so forged datagrams cost bounded memory.

    python examples/netflow_v9.py :2055                         # to stdout
    NETFLOW_OUT=flows.jsonl PYTHONPATH=examples \\
        udp-reader serve netflow_v9:on_batch --bind :2055 --batches

Each flow: exporter, domain, and the fields its template carries, named as
the NetFlow v5 example names them where they mean the same (FIELDS: src,
dst, sport, dport, proto, packets, bytes, tcp_flags, tos, input, output,
nexthop, src_as, dst_as, ...); first and last are Unix milliseconds
whichever way the exporter timed them (TIMES), null when timed since an
IPFIX exporter's boot whose time has not come yet. A field without a name
here comes out as "ie<type>" or "ie<enterprise>.<type>": a number when it
is 1, 2, 4 or 8 bytes long, hex otherwise. Flows go out once a second, at
MAX_HELD flows, and when the worker leaves; each write is whole, so workers
may share one file.

NETFLOW_FORMAT=npy writes binary FLOW records instead, several times
cheaper than JSON text (bench/test_netflow.py): each write appends one
numpy structured array of dtype FLOW in .npy format. FLOW holds the fields
most flows have, addresses as 16 bytes (IPv4 mapped into IPv6), 0 where a
template lacks a field; the others (names, enterprise fields) are JSON's
only. To read them back:

    with open("flows.npy", "rb") as f:
        while f.peek(1):
            flows = np.load(f)  # one write: flows["src"], flows["bytes"], ...
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import struct
import sys
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np

log = logging.getLogger("netflow_v9")

# The kinds of value a field holds.
INT, ADDRESS, TEXT, BYTES = "int", "address", "text", "bytes"

# IPFIX information elements (IANA; NetFlow v9 numbers them the same) this
# collector names. ICMP type and code go in dport, as in NetFlow v5.
FIELDS: Dict[int, Tuple[str, str]] = {
    1: ("bytes", INT), 2: ("packets", INT), 4: ("proto", INT), 5: ("tos", INT),
    6: ("tcp_flags", INT), 7: ("sport", INT), 8: ("src", ADDRESS), 9: ("src_mask", INT),
    10: ("input", INT), 11: ("dport", INT), 12: ("dst", ADDRESS), 13: ("dst_mask", INT),
    14: ("output", INT), 15: ("nexthop", ADDRESS), 16: ("src_as", INT), 17: ("dst_as", INT),
    18: ("bgp_nexthop", ADDRESS), 27: ("src", ADDRESS), 28: ("dst", ADDRESS),
    29: ("src_mask", INT), 30: ("dst_mask", INT), 32: ("dport", INT), 58: ("vlan", INT),
    60: ("ip_version", INT), 61: ("direction", INT), 62: ("nexthop", ADDRESS),
    82: ("interface_name", TEXT), 96: ("application", TEXT), 136: ("end_reason", INT),
    139: ("dport", INT),
}

# Time fields, and how each counts: ms since the exporter's boot, seconds or
# ms since the epoch, NTP timestamps, or microseconds before the export.
UPTIME, SECONDS, MILLISECONDS, NTP, BEFORE_EXPORT = "uptime", "s", "ms", "ntp", "before"
CLOCKS = (UPTIME, SECONDS, MILLISECONDS, NTP, BEFORE_EXPORT)
TIMES: Dict[int, Tuple[str, str]] = {
    22: ("first", UPTIME), 21: ("last", UPTIME), 150: ("first", SECONDS),
    151: ("last", SECONDS), 152: ("first", MILLISECONDS), 153: ("last", MILLISECONDS),
    154: ("first", NTP), 155: ("last", NTP), 156: ("first", NTP), 157: ("last", NTP),
    158: ("first", BEFORE_EXPORT), 159: ("last", BEFORE_EXPORT),
}
# A flow as NETFLOW_FORMAT=npy writes it, 128 bytes: fields of FIELDS and
# TIMES by name, little-endian, 0 where a template has no such field (or
# for a time since a boot not yet known). Addresses take 16 bytes, IPv4
# mapped into IPv6 (::ffff:a.b.c.d); first and last are Unix milliseconds.
FLOW = np.dtype([
    ("exporter", "V16"), ("domain", "<u4"), ("src", "V16"), ("dst", "V16"),
    ("sport", "<u2"), ("dport", "<u2"), ("proto", "u1"), ("packets", "<u8"), ("bytes", "<u8"),
    ("first", "<i8"), ("last", "<i8"), ("tcp_flags", "u1"), ("tos", "u1"),
    ("input", "<u4"), ("output", "<u4"), ("nexthop", "V16"), ("src_as", "<u4"),
    ("dst_as", "<u4"), ("src_mask", "u1"), ("dst_mask", "u1"), ("vlan", "<u2"),
    ("direction", "u1"),
])
IPV4_MAPPED = b"\0" * 10 + b"\xff\xff"  # before an IPv4 address, in 16 bytes

SYSTEM_INIT = 160  # systemInitTimeMilliseconds, in options records: the exporter's boot
NTP_EPOCH = 2_208_988_800  # seconds from 1900 to 1970

V9_HEADER = struct.Struct("!HHIIII")  # version, count, uptime ms, unix secs, sequence, source id
IPFIX_HEADER = struct.Struct("!HHIII")  # version, length, export secs, sequence, domain
SET = struct.Struct("!HH")  # set id, length
PAIR = struct.Struct("!HH")  # template id and field count; field type and length
TEMPLATE_SET = {9: 0, 10: 2}
OPTIONS_SET = {9: 1, 10: 3}
FIRST_DATA_SET = 256
VARIABLE = 65535  # IPFIX: the length comes before each value
ENTERPRISE = 0x8000  # IPFIX: an enterprise number follows the field

MAX_FIELDS = 128  # in one template; real ones have a few dozen
MAX_TEMPLATES = 2_000  # (exporter, domain, template id) remembered
MAX_BOOTS = 2_000  # (exporter, domain) whose boot time is remembered
MAX_UNKNOWN = 1_000  # keys counted apart for data sets without a template
MAX_TEMPLATE_SETS, MAX_TEMPLATE_SET = 1_000, 1_500  # template sets remembered, and bytes
MAX_STATE_BYTES = 8 << 20  # the most MAX_TEMPLATES of MAX_FIELDS fields take, with room
STATE_FORMAT, STATE_VERSION = "udp-reader netflow_v9 templates", 1
MAX_MS = (1 << 63) - 1  # a boot time kept: what an int64 holds
FUTURE_MS = 100_000  # an exporter clock slip, not a 49-day-old flow (as in netflow_v5)
MAX_HELD = 50_000  # flows decoded and not yet written: a write at the latest then

Key = Tuple[str, int, int]  # exporter address, observation domain, template id
Field = Tuple[int, int, int]  # information element, enterprise number (0: IETF), length
Buffer = Union[bytes, np.ndarray]


@dataclass(frozen=True)
class Template:
    """The layout of a record: its fields in order; an options template's
    first `scope` fields say what its records are about."""
    fields: Tuple[Field, ...]
    options: bool = False
    scope: int = 0

    def __hash__(self) -> int:  # once: a batch's data sets are grouped by template
        return self._hash

    @cached_property
    def _hash(self) -> int:
        return hash((self.fields, self.options, self.scope))

    @cached_property
    def names(self) -> List[str]:
        """The JSON name of each field, unique within the record."""
        names: List[str] = []
        for i, (ie, enterprise, _) in enumerate(self.fields):
            if enterprise:
                name = f"ie{enterprise}.{ie}"
            else:
                name = (TIMES.get(ie) or FIELDS.get(ie) or (f"ie{ie}",))[0]
            names.append(name if name not in names else f"{name}_{i}")
        return names

    @cached_property
    def kinds(self) -> List[str]:
        """What each field holds: a time's clock (TIMES), or INT, ADDRESS,
        TEXT or BYTES; a field without a name is a number if it fits one."""
        kinds = []
        for ie, enterprise, length in self.fields:
            known = not enterprise and (TIMES.get(ie) or FIELDS.get(ie))
            kinds.append(known[1] if known else INT if length in (1, 2, 4, 8) else BYTES)
        return kinds

    @cached_property
    def dtype(self) -> Optional[np.dtype]:
        """One record as a numpy structured dtype, numbers as big-endian
        integers and the rest as raw bytes; None with variable-length fields."""
        lengths = [length for _, _, length in self.fields]
        if VARIABLE in lengths:
            return None
        formats = [f">u{length}" if length in (1, 2, 4, 8) and kind in (INT, *CLOCKS)
                   else f"V{length}" for kind, length in zip(self.kinds, lengths)]
        offsets = np.cumsum([0] + lengths).tolist()
        return np.dtype({"names": [f"f{i}" for i in range(len(lengths))], "formats": formats,
                         "offsets": offsets[:-1], "itemsize": offsets[-1]})

    @cached_property
    def size(self) -> int:
        """The bytes of one record; 0 with variable-length fields."""
        return 0 if self.dtype is None else self.dtype.itemsize

    @cached_property
    def smallest(self) -> int:
        """The fewest bytes a record takes: 1 for each variable-length value."""
        return sum(1 if length == VARIABLE else length for _, _, length in self.fields)


# What a template set says: (template id, template) in order, None for a
# withdrawal; and why the rest of the set is unreadable ("" if it is not).
TemplateSet = Tuple[List[Tuple[int, Optional[Template]]], str]


class Templates:
    """Everything a collector learns from exporters and needs to decode: the
    templates by (exporter, domain, template id), and the boot time of IPFIX
    exporters by (exporter, domain), each least recently used first."""

    def __init__(self) -> None:
        self.templates: "OrderedDict[Key, Template]" = OrderedDict()
        self.boots: "OrderedDict[Tuple[str, int], int]" = OrderedDict()  # ms since the epoch
        self.forgotten = 0

    def get(self, key: Key) -> Optional[Template]:
        template = self.templates.get(key)
        if template is not None:
            self.templates.move_to_end(key)
        return template

    def add(self, key: Key, template: Template) -> None:
        known = self.templates.get(key)
        if known is not template and known != template:  # a refresh keeps the decoded dtype
            self.templates[key] = template
        self.templates.move_to_end(key)
        if len(self.templates) > MAX_TEMPLATES:
            self.templates.popitem(last=False)
            self.forgotten += 1

    def withdraw(self, exporter: str, domain: int, template_id: int, options: bool) -> None:
        """IPFIX: template id 2 (3 in an options set) withdraws all of the
        domain's templates (options templates)."""
        every = OPTIONS_SET[10] if options else TEMPLATE_SET[10]
        if template_id == every:
            for key in [k for k, t in self.templates.items()
                        if k[:2] == (exporter, domain) and t.options == options]:
                del self.templates[key]
        else:
            self.templates.pop((exporter, domain, template_id), None)

    def boot(self, exporter: str, domain: int) -> Optional[int]:
        return self.boots.get((exporter, domain))

    def set_boot(self, exporter: str, domain: int, boot_ms: int) -> None:
        self.boots[(exporter, domain)] = boot_ms
        self.boots.move_to_end((exporter, domain))
        if len(self.boots) > MAX_BOOTS:
            self.boots.popitem(last=False)

    def take(self, other: "Templates") -> None:
        """Become `other`: what a predecessor handed over."""
        self.templates, self.boots = other.templates, other.boots

    def dump(self) -> bytes:
        """The state as versioned JSON, each list least recently used first:
        {"format": STATE_FORMAT, "version": 1, "templates": [[exporter,
        domain, template id, options, scope, [[ie, enterprise, length],
        ...]], ...], "boots": [[exporter, domain, ms since the epoch], ...]}."""
        return json.dumps({
            "format": STATE_FORMAT, "version": STATE_VERSION,
            "templates": [[exporter, domain, template_id, t.options, t.scope,
                           [list(field) for field in t.fields]]
                          for (exporter, domain, template_id), t in self.templates.items()],
            "boots": [[exporter, domain, ms] for (exporter, domain), ms in self.boots.items()],
        }, separators=(",", ":")).encode()

    @classmethod
    def load(cls, data: bytes) -> "Templates":
        """What dump() wrote; ValueError, saying why, for anything else."""
        if len(data) > MAX_STATE_BYTES:
            raise ValueError(f"netflow_v9 state refused: {len(data)} bytes, more than "
                             f"{MAX_STATE_BYTES}")
        try:
            state = json.loads(data)
        except ValueError as e:  # JSON and UTF-8 errors both
            raise ValueError(f"netflow_v9 state refused: not JSON ({e})") from None
        _expect(isinstance(state, dict) and state.get("format") == STATE_FORMAT,
                f"not a {STATE_FORMAT!r} document")
        _expect(state.get("version") == STATE_VERSION,
                f"version {state.get('version')!r}, this collector reads {STATE_VERSION}")
        entries, boots = state.get("templates"), state.get("boots")
        _expect(isinstance(entries, list) and len(entries) <= MAX_TEMPLATES,
                f"templates must be a list of at most {MAX_TEMPLATES}")
        _expect(isinstance(boots, list) and len(boots) <= MAX_BOOTS,
                f"boots must be a list of at most {MAX_BOOTS}")
        loaded = cls()
        for entry in entries:
            _expect(isinstance(entry, list) and len(entry) == 6, f"bad template {entry!r:.80}")
            exporter, domain, template_id, options, scope, fields = entry
            _expect(_is_address(exporter) and _is_int(domain, 0, 0xFFFFFFFF)
                    and _is_int(template_id, FIRST_DATA_SET, 0xFFFF)
                    and isinstance(options, bool) and isinstance(fields, list)
                    and 1 <= len(fields) <= MAX_FIELDS and _is_int(scope, 0, len(fields))
                    and all(isinstance(f, list) and len(f) == 3 and _is_int(f[0], 0, 0xFFFF)
                            and _is_int(f[1], 0, 0xFFFFFFFF) and _is_int(f[2], 1, VARIABLE)
                            for f in fields),
                    f"bad template {entry!r:.80}")
            template = Template(tuple(tuple(f) for f in fields), options, scope)
            loaded.add((exporter, domain, template_id), template)
        for entry in boots:
            _expect(isinstance(entry, list) and len(entry) == 3 and _is_address(entry[0])
                    and _is_int(entry[1], 0, 0xFFFFFFFF) and _is_int(entry[2], 0, MAX_MS),
                    f"bad boot time {entry!r:.80}")
            loaded.set_boot(*entry)
        return loaded


def _expect(ok: bool, why: str) -> None:
    if not ok:
        raise ValueError(f"netflow_v9 state refused: {why}")


def _is_int(value, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _is_address(value) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, value)
            return True
        except (OSError, TypeError):
            pass
    return False


# What a datagram's header says about its data sets: (exporter address,
# observation domain, export time in Unix ms, uptime: v9's ms since the
# exporter's boot at export, -1 in IPFIX); a plain tuple, one per datagram.
Export = Tuple[str, int, int, int]


@dataclass
class Pending:
    """A batch's data sets of one template, kept for one decode: whole
    records only when the template has a fixed length."""
    bodies: List[memoryview] = field(default_factory=list)
    exports: List[Export] = field(default_factory=list)
    boots: List[int] = field(default_factory=list)  # IPFIX: the exporter's boot then, or -1
    counts: List[int] = field(default_factory=list)  # records in each, if fixed


class Flows(NamedTuple):
    """The records of one template's data sets in a batch, a column per
    field: numbers and addresses as the datagrams have them (an array for
    a fixed-length template, a list of bytes otherwise), times as Unix ms."""
    template: Template
    counts: List[int]  # of records in each data set
    exporters: Tuple[str, ...]  # of each data set
    domains: Tuple[int, ...]
    columns: list
    undated: Optional[np.ndarray]  # True: timed since a boot not yet known


def read_template_set(version: int, body: memoryview, options: bool) -> TemplateSet:
    """What a template set says; what is left shorter than a template is padding."""
    templates: List[Tuple[int, Optional[Template]]] = []
    head = 6 if options else 4  # options templates say their scope too
    at = 0
    while len(body) - at >= 4:
        template_id, count = PAIR.unpack_from(body, at)
        if version == 10 and count == 0:  # a withdrawal is 4 bytes, even in options sets
            templates.append((template_id, None))
            at += 4
            continue
        if len(body) - at < head:
            return templates, "short template"
        scope = 0
        if options and version == 9:  # scope and option lengths, in bytes
            scope, count = count // 4, (count + PAIR.unpack_from(body, at + 2)[1]) // 4
        elif options:
            scope = PAIR.unpack_from(body, at + 2)[1]
        at += head
        if not 0 < count <= MAX_FIELDS or template_id < FIRST_DATA_SET or scope > count:
            # where the next template starts is unknowable
            return templates, ("template id under 256" if template_id < FIRST_DATA_SET
                               else "template of no field or too many")
        fields, at, malformed = read_fields(version, body, at, count)
        if malformed:
            return templates, malformed
        templates.append((template_id, Template(fields, options, scope)))
    return templates, ""


def read_fields(version: int, body: memoryview, at: int, count: int
                ) -> Tuple[Tuple[Field, ...], int, str]:
    """A template's `count` field specifiers from `at`, where they end, and
    why they are unreadable ("" if they are not)."""
    if len(body) - at >= 4 * count:  # all at once, unless enterprise numbers follow
        specs = struct.unpack_from(f"!{2 * count}H", body, at)
        ies, lengths = specs[::2], specs[1::2]
        if version == 9 or max(ies) < ENTERPRISE:
            if 0 in lengths or (version == 9 and VARIABLE in lengths):
                return (), at, "field of no length"
            return tuple(zip(ies, (0,) * count, lengths)), at + 4 * count, ""
    fields = []
    for _ in range(count):
        if len(body) - at < 4:
            return (), at, "short template"
        ie, length = PAIR.unpack_from(body, at)
        at += 4
        enterprise = 0
        if version == 10 and ie & ENTERPRISE:
            if len(body) - at < 4:
                return (), at, "short template"
            ie, enterprise = ie & ~ENTERPRISE, int.from_bytes(body[at:at + 4], "big")
            at += 4
        if length == 0 or (length == VARIABLE and version == 9):
            return (), at, "field of no length"
        fields.append((ie, enterprise, length))
    return tuple(fields), at, ""


class Collector:
    """Export datagrams in, flows out to `out` or stdout, one JSON line per
    flow or FLOW records (`format`, by default NETFLOW_FORMAT's); what it
    learns goes into `templates`."""

    def __init__(self, out: Optional[str], templates: Templates, interval: float = 1.0,
                 format: Optional[str] = None) -> None:
        format = format or os.environ.get("NETFLOW_FORMAT") or "json"
        if format not in FORMATS:
            raise ValueError(f"NETFLOW_FORMAT must be {' or '.join(FORMATS)}, not {format!r}")
        self.sink = FORMATS[format]()
        # Opened at each flush, so a collector holds no descriptor between
        # (one a second: nothing to close, whoever drops the collector).
        self.out = out
        if out:
            os.close(_append(out))
        self.templates = templates
        self.interval = interval
        self.last = self.reported = time.monotonic()
        self.flows = 0  # written
        self.malformed: "Counter[str]" = Counter()  # datagrams or sets, by reason
        # data sets that came before their template, by (exporter, domain, template id)
        self.unknown: "Counter[Key]" = Counter()
        self.unknown_elsewhere = 0  # past MAX_UNKNOWN keys
        self.unreported = False
        self.pending: Dict[Template, Pending] = {}
        # this batch's data sets' templates, looked up once a batch while they stand
        self.looked_up: Dict[Key, Tuple[Template, Pending]] = {}
        self.template_sets: Dict[Tuple[int, bool, bytes], TemplateSet] = {}  # read, by bytes

    def add(self, batch) -> None:
        for packet in batch:
            self.datagram(packet.src[0], memoryview(packet))
        self.decode_pending()
        now = time.monotonic()
        if self.unreported and now - self.reported >= 1.0:
            self.report()
        if now - self.last >= self.interval or self.sink.held >= MAX_HELD:
            self.flush()

    def datagram(self, exporter: str, data: memoryview) -> None:
        """Learn its templates; keep its data sets for decoding."""
        if len(data) < 2:
            self.malformed["short header"] += 1
            return
        version = data[0] << 8 | data[1]
        if version == 9 and len(data) >= V9_HEADER.size:
            _, _, uptime, secs, _, domain = V9_HEADER.unpack_from(data)
            start, end = V9_HEADER.size, len(data)
            export = (exporter, domain, secs * 1000, uptime)
        elif version == 10 and len(data) >= IPFIX_HEADER.size:
            _, end, secs, _, domain = IPFIX_HEADER.unpack_from(data)
            if not IPFIX_HEADER.size <= end <= len(data):
                self.malformed["length past the datagram"] += 1
                return
            start = IPFIX_HEADER.size
            export = (exporter, domain, secs * 1000, -1)
        else:
            self.malformed["short header" if version in (9, 10) else "not v9 or IPFIX"] += 1
            return
        while start < end:
            if end - start < SET.size:
                self.malformed["short set"] += 1
                return
            set_id, length = SET.unpack_from(data, start)
            if length < SET.size or start + length > end:
                self.malformed["set past the datagram"] += 1
                return
            if set_id >= FIRST_DATA_SET:
                self.data_set(export, set_id, data, start + SET.size, start + length)
            elif set_id == TEMPLATE_SET[version] or set_id == OPTIONS_SET[version]:
                self.template_set(export, version, data[start + SET.size:start + length],
                                  set_id == OPTIONS_SET[version])
            else:
                self.malformed["reserved set id"] += 1
            start += length

    def template_set(self, export: Export, version: int, body: memoryview, options: bool) -> None:
        """Learn (or withdraw) its templates. Exporters send the same sets
        over and over: one seen before is not read again."""
        seen = (version, options, bytes(body))
        parsed = self.template_sets.get(seen)
        if parsed is None:
            parsed = read_template_set(version, body, options)
            if len(self.template_sets) >= MAX_TEMPLATE_SETS:  # forged ones: start over
                self.template_sets.clear()
            if len(body) <= MAX_TEMPLATE_SET:
                self.template_sets[seen] = parsed
        templates, malformed = parsed
        self.looked_up.clear()
        exporter, domain, _, _ = export
        for template_id, template in templates:
            if template is None:
                self.templates.withdraw(exporter, domain, template_id, options)
            else:
                self.templates.add((exporter, domain, template_id), template)
        if malformed:
            self.malformed[malformed] += 1

    def data_set(self, export: Export, template_id: int, data: memoryview, start: int,
                 end: int) -> None:
        """Keep data[start:end], a data set, to decode with the batch's others."""
        exporter, domain, _, uptime = export
        key = (exporter, domain, template_id)
        known = self.looked_up.get(key)
        if known is None:
            template = self.templates.get(key)
            if template is None:
                if key in self.unknown or len(self.unknown) < MAX_UNKNOWN:
                    self.unknown[key] += 1
                else:
                    self.unknown_elsewhere += 1
                self.unreported = True
                return
            if template.options:
                self.options(export, template, data[start:end])
                return
            pending = self.pending.get(template)
            if pending is None:
                pending = self.pending[template] = Pending()
            known = self.looked_up[key] = (template, pending)
        template, pending = known
        boot_ms = None
        if uptime < 0:  # IPFIX: times since boot are dated by the boot time
            boot_ms = self.templates.boot(exporter, domain)
        if template.size:  # whole records: what is left is padding
            count = (end - start) // template.size
            end = start + count * template.size
            pending.counts.append(count)
        pending.bodies.append(data[start:end])
        pending.exports.append(export)
        pending.boots.append(-1 if boot_ms is None else boot_ms)

    def options(self, export: Export, template: Template, body: memoryview) -> None:
        """Options records about the exporter: keep its boot time."""
        for i, (ie, enterprise, _) in enumerate(template.fields):
            if (ie, enterprise) == (SYSTEM_INIT, 0):
                for boot_ms in _ints(_column(self.records(template, body), i)).tolist():
                    if boot_ms > MAX_MS:
                        self.malformed["boot time out of range"] += 1
                        continue
                    self.templates.set_boot(export[0], export[1], boot_ms)

    def records(self, template: Template, body: memoryview):
        """The records of one data set: a structured array for a fixed-length
        template (its padding left out), else a list of tuples of bytes."""
        if template.dtype is not None:
            return np.frombuffer(body, template.dtype, len(body) // template.dtype.itemsize)
        out = []
        at = 0
        while len(body) - at >= template.smallest:  # less is padding
            values = []
            for _, _, length in template.fields:
                if length == VARIABLE:
                    length, at = _variable_length(body, at)
                if at + length > len(body):
                    self.malformed["record past its set"] += 1
                    return out
                values.append(bytes(body[at:at + length]))
                at += length
            out.append(tuple(values))
        return out

    def decode_pending(self) -> None:
        """Decode the data sets kept, one template at a time, into the sink."""
        for template, pending in self.pending.items():
            self.sink.add(self.decode(template, pending))
        self.pending.clear()
        self.looked_up.clear()

    def decode(self, template: Template, pending: Pending) -> Flows:
        """The records of the data sets of one template, a column per field."""
        if template.dtype is not None:  # the records of all sets in one array
            counts = pending.counts
            records = np.frombuffer(b"".join(pending.bodies), template.dtype)
        else:
            parts = [self.records(template, body) for body in pending.bodies]
            counts = [len(part) for part in parts]
            records = [row for part in parts for row in part]
        columns = [_column(records, i) for i in range(len(template.fields))]
        exporters, domains, *clocks = zip(*pending.exports)  # of each set
        undated = None
        if any(kind in CLOCKS for kind in template.kinds):  # each record's export_ms, ...
            export_ms, uptime, boot_ms = (np.repeat(np.array(c, np.int64), counts)
                                          for c in (*clocks, pending.boots))
            for i, kind in enumerate(template.kinds):
                if kind in CLOCKS:
                    columns[i] = _time_ms(kind, _ints(columns[i]), export_ms, uptime, boot_ms)
            if UPTIME in template.kinds:
                unknown = (uptime < 0) & (boot_ms < 0)
                undated = unknown if unknown.any() else None
        return Flows(template, counts, exporters, domains, columns, undated)

    def flush(self) -> None:
        buffers, flows = self.sink.take()
        self.flows += flows
        self.last = time.monotonic()
        if not self.out:
            _write(sys.stdout.fileno(), buffers)
            return
        fd = _append(self.out)
        try:
            _write(fd, buffers)
        finally:
            os.close(fd)

    def report(self) -> None:
        """Log the data sets not decoded for want of a template, largest first."""
        self.reported, self.unreported = time.monotonic(), False
        if not self.unknown:
            return
        top = ", ".join(f"{exporter} domain {domain} template {template_id}: {count}"
                        for (exporter, domain, template_id), count in self.unknown.most_common(10))
        more = len(self.unknown) - 10
        log.warning("%d data sets came before their template (not decoded): %s%s%s",
                    sum(self.unknown.values()) + self.unknown_elsewhere, top,
                    f", and {more} more" if more > 0 else "",
                    f"; {self.unknown_elsewhere} more from other sources"
                    if self.unknown_elsewhere else "")


class JsonLines:
    """One JSON line per flow: exporter, domain and the template's fields by
    name, made with one format string per template from whole columns."""

    def __init__(self) -> None:
        self.lines: List[str] = []
        self.held = 0

    def add(self, flows: Flows) -> None:
        heads = np.array([f'"exporter": "{exporter}", "domain": {domain}'
                          for exporter, domain in zip(flows.exporters, flows.domains)], object)
        parts, values = ["{%s"], [np.repeat(heads, flows.counts).tolist()]
        template = flows.template
        for name, kind, column in zip(template.names, template.kinds, flows.columns):
            part, lists = _json(kind, column, flows.undated if kind == UPTIME else None)
            parts.append(f'"{name}": {part}')
            values += lists
        line = ", ".join(parts) + "}\n"
        lines = [line % row for row in zip(*values)]
        self.lines += lines
        self.held += len(lines)

    def take(self) -> Tuple[List[Buffer], int]:
        """The lines held, as bytes to write, and how many."""
        data, count = "".join(self.lines).encode(), len(self.lines)
        self.lines, self.held = [], 0
        return [data], count


class NpyRecords:
    """FLOW records, each write one numpy array in .npy format. They are
    made in one buffer kept from write to write: memory already mapped and
    warm in the cache, and nothing to join."""

    def __init__(self) -> None:
        self.records = np.zeros(2 * MAX_HELD, FLOW)  # a write at MAX_HELD leaves room
        self.held = 0

    def add(self, flows: Flows) -> None:
        count = sum(flows.counts)
        if self.held + count > len(self.records):  # a batch of more flows than MAX_HELD
            records = np.empty(self.held + count, FLOW)
            records[:self.held].view(np.uint8)[:] = self.records[:self.held].view(np.uint8)
            self.records = records
        elif not self.held and len(self.records) > 2 * MAX_HELD:  # written: back to size
            self.records = np.zeros(2 * MAX_HELD, FLOW)
        out = self.records[self.held:self.held + count]
        out.view(np.uint8)[:] = 0  # 0 for the fields the template does not have
        self.held += count
        if len(set(flows.exporters)) == 1 and len(set(flows.domains)) == 1:  # as a rule
            out["exporter"], out["domain"] = _address16(flows.exporters[0]), flows.domains[0]
        else:
            exporters = np.frombuffer(b"".join(map(_address16, flows.exporters)), "V16")
            out["exporter"] = np.repeat(exporters, flows.counts)
            out["domain"] = np.repeat(np.array(flows.domains, np.uint32), flows.counts)
        template = flows.template
        for name, kind, column in zip(template.names, template.kinds, flows.columns):
            if name not in FLOW.fields:
                continue
            if kind == ADDRESS:
                _put_addresses(out[name], column)
            elif kind == UPTIME and flows.undated is not None:
                out[name] = np.where(flows.undated, 0, column)
            elif isinstance(column, np.ndarray) and column.dtype.kind in "ui":
                out[name] = column
            else:
                out[name] = _ints(column)

    def take(self) -> Tuple[List[Buffer], int]:
        """The records held as one .npy array (header, then data: a view of
        the buffer, to write before the next add), and how many."""
        count, self.held = self.held, 0
        if not count:
            return [], 0
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {
            "descr": np.lib.format.dtype_to_descr(FLOW), "fortran_order": False,
            "shape": (count,)})
        return [header.getvalue(), self.records[:count].view(np.uint8)], count


FORMATS = {"json": JsonLines, "npy": NpyRecords}


def _append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def _write(fd: int, buffers: List[Buffer]) -> None:
    """All of `buffers`, in one writev as a rule: workers appending to one
    file never mix their flushes."""
    views = [memoryview(b) for b in buffers]
    while views:
        written = os.writev(fd, views)
        while views and written >= views[0].nbytes:
            written -= views[0].nbytes
            views.pop(0)
        if views:
            views[0] = views[0][written:]


def _variable_length(body: memoryview, at: int) -> Tuple[int, int]:
    """IPFIX's length before a variable-length value, one byte or 255 and
    two more, and where the value starts; a length past the set if cut."""
    if at < len(body) and body[at] < 255:
        return body[at], at + 1
    if at + 3 <= len(body):
        return body[at + 1] << 8 | body[at + 2], at + 3
    return len(body), at + 1


def _column(records, i: int):
    """Field i of every record: an array column, or a list of bytes."""
    return records[f"f{i}"] if isinstance(records, np.ndarray) else [r[i] for r in records]


def _ints(column) -> np.ndarray:
    """A column of numbers of any length, as uint64 (the last 8 bytes)."""
    if isinstance(column, np.ndarray) and column.dtype.kind == "u":
        return column.astype(np.uint64)
    if isinstance(column, np.ndarray):  # raw bytes of another length: right-aligned in 8
        octets = _words(column)[:, -8:]
        wide = np.zeros((len(column), 8), np.uint8)
        wide[:, 8 - octets.shape[1]:] = octets
        return wide.view(">u8")[:, 0].astype(np.uint64)
    return np.array([int.from_bytes(v[-8:], "big") for v in column], dtype=np.uint64)


def _words(column: np.ndarray, dtype="u1") -> np.ndarray:
    """A column of raw values (a numpy void dtype, as of a structured
    array's field) as rows of `dtype`, bytes by default: the same memory."""
    return column[:, None].view(dtype)


def _json(kind: str, column, undated: Optional[np.ndarray]) -> Tuple[str, List[list]]:
    """A column as JSON: the format of one value, and the lists it takes."""
    if isinstance(column, np.ndarray) and column.dtype.kind in "ui":  # numbers and times
        if undated is None:
            return "%d", [column.tolist()]
        return "%s", [["null" if no else str(ms)
                       for ms, no in zip(column.tolist(), undated.tolist())]]
    if kind == ADDRESS and isinstance(column, np.ndarray) and column.dtype.itemsize == 4:
        return '"%d.%d.%d.%d"', _words(column).T.tolist()  # IPv4: no text per value
    return "%s", [_texts(kind, column)]


def _texts(kind: str, column) -> List[str]:
    """Each value of a column of bytes as JSON text."""
    values = column.tolist() if isinstance(column, np.ndarray) else column  # bytes
    if kind == INT:
        return [str(int.from_bytes(v, "big")) for v in values]
    if kind == ADDRESS:
        return [f'"{_address(v)}"' for v in values]
    if kind == TEXT:  # exporters pad names with NULs
        return [json.dumps(v.rstrip(b"\0").decode("utf-8", "replace")) for v in values]
    return [f'"{v.hex()}"' for v in values]


def _address(value: bytes) -> str:
    if len(value) == 4:
        return socket.inet_ntop(socket.AF_INET, value)
    if len(value) == 16:
        return socket.inet_ntop(socket.AF_INET6, value)
    return value.hex()


@lru_cache(maxsize=4096)
def _address16(address: str) -> bytes:
    """An exporter's address as FLOW keeps it."""
    if ":" in address:
        return socket.inet_pton(socket.AF_INET6, address)
    return IPV4_MAPPED + socket.inet_pton(socket.AF_INET, address)


def _put_addresses(target: np.ndarray, column) -> None:
    """Addresses into a FLOW field: 16 bytes, IPv4 mapped into IPv6
    (::ffff:a.b.c.d), zero for an address of another length; copied as
    4- or 8-byte words, which numpy copies fastest."""
    if not isinstance(column, np.ndarray):  # bytes, one by one
        column = np.array([_mapped(v) for v in column], "V16")
    if column.dtype.itemsize == 4:
        words = _words(target, "<u4")
        words[:, 2] = int.from_bytes(IPV4_MAPPED[8:], "little")
        words[:, 3] = _words(column, "<u4")[:, 0]
    elif column.dtype.itemsize == 16:
        _words(target, "<u8")[:] = _words(column, "<u8")


def _mapped(value: bytes) -> bytes:
    return (IPV4_MAPPED + value if len(value) == 4 else value if len(value) == 16
            else bytes(16))


def _time_ms(clock: str, t: np.ndarray, export_ms: np.ndarray, uptime: np.ndarray,
             boot_ms: np.ndarray) -> np.ndarray:
    """Times (uint64) as Unix milliseconds (int64), by their clock; a time
    since an IPFIX exporter's unknown boot is left as it is."""
    if clock == NTP:  # seconds since 1900, and a binary fraction of one
        return ((t >> 32).astype(np.int64) - NTP_EPOCH) * 1000 \
            + (((t & 0xFFFFFFFF) * 1000) >> 32).astype(np.int64)
    if clock == BEFORE_EXPORT:  # in microseconds
        return export_ms - (t // 1000).astype(np.int64)
    t = t.astype(np.int64)
    if clock == SECONDS:
        return t * 1000
    if clock == MILLISECONDS:
        return t
    v9 = uptime >= 0  # v9 dates times since boot by the header's uptime, IPFIX by the boot time
    if v9.all():  # a batch's sets of one template come from one exporter, as a rule
        return export_ms - _age(uptime, t)
    if not v9.any():
        return boot_ms + t
    return np.where(v9, export_ms - _age(uptime, t), boot_ms + t)


def _age(uptime: np.ndarray, at: np.ndarray) -> np.ndarray:
    """ms from a flow time `at` to the export, both on a v9 exporter's
    wrapping 32-bit uptime clock (as in netflow_v5): their difference mod
    2**32, less 2**32 when within FUTURE_MS of it (a clock slip: the flow
    is from just after the export, not 49 days old)."""
    slip = FUTURE_MS - 1
    return ((uptime - at + slip) & 0xFFFFFFFF) - slip


templates = Templates()  # the state a worker hands to the next
collector: Optional[Collector] = None
merged: Dict[Key, Template] = {}  # templates taken from other slots, not seen here


# The state hooks of `udp-reader serve` (its docs/serve.md, "Handler state"):
# the templates follow a restart (restore_state) and, when the slots change
# (TTIN, TTOU) and an exporter's datagrams go to another worker, the
# exporter (merge_state: every worker learns the others' templates within a
# checkpoint). Templates are never flushed, so a hand-over and a checkpoint
# carry the same. NETFLOW_STATE=off leaves them out, to see what they prevent.


def save_state(final: bool = False) -> bytes:
    """The templates and boot times learned so far, for the next worker."""
    return templates.dump()


def restore_state(data: bytes) -> None:
    """Take on what save_state() gave; ValueError, saying why, if refused."""
    templates.take(Templates.load(data))


def merge_state(data: bytes) -> None:
    """Add another slot's templates: one this worker has not seen itself,
    or took from another slot before (the other slot's is newer), never
    one it learned from the exporter."""
    other = Templates.load(data)
    for key, template in other.templates.items():
        mine = templates.templates.get(key)
        if mine is None or (merged.get(key) is mine and mine != template):
            templates.add(key, template)
            merged[key] = template
    for (exporter, domain), boot_ms in other.boots.items():
        if templates.boot(exporter, domain) is None:
            templates.set_boot(exporter, domain, boot_ms)
    while len(merged) > MAX_TEMPLATES:  # keys forgotten since stay bounded
        merged.pop(next(iter(merged)))


def worker_start() -> None:
    global collector
    collector = Collector(os.environ.get("NETFLOW_OUT"), templates)


def on_batch(batch) -> None:
    assert collector is not None
    collector.add(batch)


def worker_stop() -> None:
    if collector is not None:
        c = collector
        c.flush()
        c.report()
        if c.malformed or templates.forgotten:
            log.warning("malformed and skipped: %s; %d templates forgotten (more than %d)",
                        ", ".join(f"{n} {why}" for why, n in c.malformed.most_common()) or "none",
                        templates.forgotten, MAX_TEMPLATES)


if os.environ.get("NETFLOW_STATE") == "off":
    del save_state, restore_state, merge_state


def main() -> None:
    import signal

    import udp_reader

    logging.basicConfig(format="%(name)s: %(message)s")
    worker_start()
    address = sys.argv[1] if len(sys.argv) > 1 else ":2055"
    with udp_reader.Reader(address) as reader:
        signal.signal(signal.SIGTERM, lambda *_: reader.stop())
        try:
            reader.run_batches(on_batch)  # until Ctrl-C or TERM
        except KeyboardInterrupt:
            pass
        reader.drain(on_batch=on_batch)  # what is queued still counts
    worker_stop()


if __name__ == "__main__":
    main()
