# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled bridge between the C engine and Python callbacks.

Memory of one receive (its records and payload arena) lives in a _Slab.
Packets, batches, memoryviews and numpy arrays handed to callbacks keep
their slab alive; after the callbacks return, the reader reuses its slab
only if nothing kept a reference, and otherwise receives into a new one.
So whatever a callback keeps never changes, and nothing is copied unless
the user asks for bytes.
"""

# One module made of parts, one per idea, each beside its declarations
# (core/*.pxd, gathered by _core.pxd): one module, so every call between
# them stays a direct C call.

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_FillInfo, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_CheckSignals
from cpython.ref cimport Py_REFCNT
from libc.errno cimport EAGAIN, EINTR, EMSGSIZE, ENOMEM
from libc.stdint cimport UINT64_MAX
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

from udp_reader.constants cimport UR_MAX_PAYLOAD4, UR_MAX_PAYLOAD6

cdef extern from "Python.h":
    unsigned long PyThread_get_thread_ident()

import collections
import logging
import os
import socket
import time

from udp_reader import multicast, sockets
from udp_reader.options import ReaderOptions

log = logging.getLogger("udp_reader")

include "core/addresses.pyx"     # IP addresses, packed and as text
include "core/replies.pyx"       # _ReplyPath: answering, sending, the error queue
include "core/slab.pyx"          # _Slab: the memory of one receive
include "core/packet.pyx"        # Packet: one datagram
include "core/batch.pyx"         # Batch: the packets of one receive, numpy columns
include "core/receive_loop.pyx"  # _ReceiveLoop: the engine, run(), the loop
include "core/reader.pyx"        # Reader: its socket, multicast, the API around the loop
include "core/testhook.pyx"      # _engine_feed: the engine's parsing from tests
