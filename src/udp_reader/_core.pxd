# Declarations of udp_reader._core: each part's beside its code in core/,
# gathered here in the order the parts build on each other.

cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from udp_reader.engine cimport *
from udp_reader.replies cimport *

include "core/replies.pxd"
include "core/slab.pxd"
include "core/packet.pxd"
include "core/batch.pxd"
include "core/receive_loop.pxd"
include "core/reader.pxd"
