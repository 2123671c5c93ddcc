"""Numbers for people, as the live views show them: 1234567 B/s is
"1.2 MB/s"."""

from __future__ import annotations


def human(value: float, unit: str) -> str:
    for prefix in ("", "k", "M", "G"):
        if abs(value) < 1000:
            return f"{value:.1f} {prefix}{unit}" if prefix else f"{value:.0f} {unit}"
        value /= 1000
    return f"{value:.1f} T{unit}"
