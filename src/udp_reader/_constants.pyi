"""Type stub for the shared constants (src/udp_reader/_constants.pyx)."""

from typing import FrozenSet

MAX_PAYLOAD: int
MAX_PAYLOAD_V6: int
MAX_LENGTH: int
MAX_BATCH: int
CONTROL_SIZE: int
GRO_BUFFER: int
GSO_SEGMENTS: int
ASYNC_ERRORS: FrozenSet[int]
SO_RXQ_OVFL: int
UDP_SEGMENT: int
UDP_GRO: int
