# cython: language_level=3
"""The limits and Linux values of csrc/constants.h, as Python constants:
declared once in C, read here by everything written in Python."""

from udp_reader cimport constants as c

# The largest payload of one datagram over IPv4 and over IPv6.
MAX_PAYLOAD = c.UR_MAX_PAYLOAD4
MAX_PAYLOAD_V6 = c.UR_MAX_PAYLOAD6
# A UDP length field's limit.
MAX_LENGTH = c.UR_MAX_LENGTH
# Messages per recvmmsg or sendmmsg call at most.
MAX_BATCH = c.UR_MAX_BATCH
# Control bytes per received message; a merged receive's buffer.
CONTROL_SIZE = c.UR_CONTROL_SIZE
GRO_BUFFER = c.UR_GRO_BUFFER
# Datagrams per GSO message.
GSO_SEGMENTS = c.UR_GSO_SEGMENTS
# The errnos an ICMP error for an earlier send leaves for the next receive.
ASYNC_ERRORS = frozenset([c.ur_async_errors[i] for i in range(c.UR_ASYNC_ERROR_COUNT)])

# Linux ABI values the socket module may not name.
SO_RXQ_OVFL = c.SO_RXQ_OVFL
UDP_SEGMENT = c.UDP_SEGMENT
UDP_GRO = c.UDP_GRO
