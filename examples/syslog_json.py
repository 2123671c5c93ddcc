"""Syslog over UDP (RFC 5424 and RFC 3164) to JSON lines.

One JSON object per message: when and from where it arrived, facility and
severity by name, the sender's timestamp, host, app, pid, msgid, structured
data ({"id": {"param": "value"}}) and the message. A datagram that is not
syslog is kept whole as the message, so nothing is lost. Control and
bidirectional characters are written as JSON escapes, never raw: a
`tail -f` of the output cannot be steered by a sender.

    python examples/syslog_json.py :5514                        # to stdout
    SYSLOG_OUT=/var/log/syslog.jsonl PYTHONPATH=examples \\
        udp-reader serve syslog_json:on_packet --bind :514 --workers 2

Lines are written in batches, once a second and when the worker leaves
(worker_stop); with several workers give SYSLOG_OUT a file, which they all
append to (each write is whole lines).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Any, Dict, List, Optional

FACILITIES = ["kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp",
              "cron", "authpriv", "ftp", "ntp", "security", "console", "solaris-cron",
              "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7"]
SEVERITIES = ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"]

# RFC 5424: <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD [MSG];
# a param value may hold "]" and escaped quotes.
_VALUE = r'"(?:[^"\\]|\\.)*"'
RFC5424 = re.compile(
    r"<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) "
    r"(-|(?:\[[^\s\]=]+(?: [^\s\]=]+=" + _VALUE + r")*\])+)(?: (.*))?", re.S)
SD_ELEMENT = re.compile(r"\[([^\s\]=]+)((?: [^\s\]=]+=" + _VALUE + r")*)\]")
SD_PARAM = re.compile(r'([^\s\]=]+)="((?:[^"\\]|\\.)*)"')
# RFC 3164: <PRI>Mmm dd hh:mm:ss HOSTNAME TAG[PID]: MSG
RFC3164 = re.compile(r"<(\d{1,3})>([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (\S+) (.*)", re.S)
TAG = re.compile(r"([^\s:\[]{1,48})(?:\[([^\]]*)\])?: ?(.*)", re.S)
BOM = "\ufeff"
# What json.dumps leaves raw that a terminal acts on or that reorders text
# on screen: DEL, C1 controls (CSI, OSC, ST, NEL...), the line and paragraph
# separators, and the bidirectional marks, embeddings, overrides and isolates.
UNSAFE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _nil(field: str) -> Optional[str]:
    return None if field == "-" else field


def _priority(record: Dict[str, Any], pri: str) -> bool:
    value = int(pri)
    if value > 191:
        return False
    record["facility"] = FACILITIES[value >> 3]
    record["severity"] = SEVERITIES[value & 7]
    return True


def parse(text: str) -> Dict[str, Any]:
    """The fields of one syslog message; {"message": text} when it is neither form."""
    record: Dict[str, Any] = {}
    if m := RFC5424.fullmatch(text):
        if _priority(record, m[1]):
            record.update(format="rfc5424", timestamp=_nil(m[2]), host=_nil(m[3]),
                          app=_nil(m[4]), pid=_nil(m[5]), msgid=_nil(m[6]))
            record["sd"] = {e[1]: {k: re.sub(r'\\(["\\\]])', r"\1", v)
                                   for k, v in SD_PARAM.findall(e[2])}
                            for e in SD_ELEMENT.finditer(m[7])}
            record["message"] = (m[8] or "").removeprefix(BOM)
            return record
    if m := RFC3164.fullmatch(text):
        if _priority(record, m[1]):
            record.update(format="rfc3164", timestamp=m[2], host=m[3])
            if tag := TAG.fullmatch(m[4]):
                record.update(app=tag[1], pid=tag[2], message=tag[3])
            else:
                record["message"] = m[4]
            return record
    return {"message": text}


def to_json(record: Dict[str, Any]) -> str:
    """One JSON line, readable UTF-8, with nothing a terminal would obey:
    json.dumps escapes C0 controls (ESC, BEL), UNSAFE is escaped here."""
    return UNSAFE.sub(lambda m: f"\\u{ord(m[0]):04x}", json.dumps(record, ensure_ascii=False))


class Sink:
    """Lines kept in memory and written out together: one write() per flush."""

    def __init__(self, path: Optional[str], interval: float = 1.0) -> None:
        self.fd = (os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                   if path else sys.stdout.fileno())
        self.interval = interval
        self.lines: List[str] = []
        self.last = time.monotonic()

    def add(self, line: str) -> None:
        self.lines.append(line)
        if time.monotonic() - self.last >= self.interval:
            self.flush()

    def flush(self) -> None:
        data = "".join(self.lines).encode()
        self.lines.clear()
        self.last = time.monotonic()
        while data:
            data = data[os.write(self.fd, data):]


sink: Optional[Sink] = None


def worker_start() -> None:
    global sink
    sink = Sink(os.environ.get("SYSLOG_OUT"))


def on_packet(packet) -> None:
    record = {"received": packet.timestamp or time.time(), "from": packet.src[0]}
    record.update(parse(packet.data.decode("utf-8", "replace").rstrip("\r\n\0")))
    assert sink is not None
    sink.add(to_json(record) + "\n")


def worker_stop() -> None:
    if sink is not None:
        sink.flush()


def main() -> None:
    import signal

    import udp_reader

    worker_start()
    address = sys.argv[1] if len(sys.argv) > 1 else ":5514"
    with udp_reader.Reader(address, timestamps=True) as reader:
        signal.signal(signal.SIGTERM, lambda *_: reader.stop())
        try:
            reader.run(on_packet)  # until Ctrl-C or TERM
        except KeyboardInterrupt:
            pass
        reader.drain(on_packet)  # what is queued still counts
    worker_stop()


if __name__ == "__main__":
    main()
