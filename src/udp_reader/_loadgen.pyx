# cython: language_level=3, boundscheck=False, wraparound=False
"""The load generator's compiled send path (`udp-reader send` and bench):
sendmmsg batches."""

from cpython.buffer cimport PyBuffer_FillInfo
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport malloc, free

from udp_reader.constants cimport UR_MAX_BATCH
from udp_reader.loadgen cimport *

import os


cdef class BatchSender:
    """Sends up to `batch` datagrams per sendmmsg call from one connected
    socket (connected, so the kernel routes once, not per datagram).

    Payload slot i is writable through the buffer protocol (`slot` bytes
    each, `batch` of them, back to back); with seq=True, send() stamps each
    datagram's first 8 bytes with its sequence number.
    """
    cdef ur_loadgen _s
    cdef bint _ready
    cdef object _sock
    cdef uint32_t *_lengths

    def __init__(self, sock, unsigned batch, size_t slot):
        if not 1 <= batch <= UR_MAX_BATCH:
            raise ValueError(f"batch must be within 1..{UR_MAX_BATCH}, not {batch}")
        if ur_loadgen_init(&self._s, batch, slot) < 0:
            raise MemoryError()
        self._ready = True
        self._lengths = <uint32_t *>malloc(batch * sizeof(uint32_t))
        if self._lengths == NULL:
            raise MemoryError()
        self._sock = sock

    def __dealloc__(self):
        if self._ready:
            ur_loadgen_free(&self._s)
        free(self._lengths)

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, self._s.payloads, self._s.batch * self._s.slot,
                          0, flags)

    @property
    def batch(self):
        return self._s.batch

    @property
    def slot(self):
        return self._s.slot

    def send(self, lengths, bint seq=False, uint64_t first=0, uint32_t segment=0):
        """Send len(lengths) messages (at most `batch`); returns how many
        went (fewer when the socket buffer filled). With `segment` (the
        socket's UDP_SEGMENT size), each message is a run of datagrams."""
        cdef unsigned count = min(len(lengths), self._s.batch), i
        cdef int n
        cdef int fd = self._sock.fileno()
        for i in range(count):
            if lengths[i] > self._s.slot:
                raise ValueError(f"length {lengths[i]} exceeds the slot of {self._s.slot}")
            self._lengths[i] = lengths[i]
        with nogil:
            n = ur_loadgen_send(&self._s, fd, NULL, 0, self._lengths, count, seq, first,
                               segment)
        if n < 0:
            raise OSError(-n, f"sendmmsg: {os.strerror(-n)}")
        return n
