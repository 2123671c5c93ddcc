# Part of udp_reader._core (included by _core.pyx): the packets of one
# receive as a sequence and as numpy columns (declared in batch.pxd).

_meta_dtype = None


def _dtype():
    """numpy dtype of one engine record, laid out from the C struct itself."""
    global _meta_dtype
    if _meta_dtype is None:
        import numpy
        _meta_dtype = numpy.dtype(_meta_layout())
    return _meta_dtype


cdef dict _meta_layout():
    cdef ur_meta m
    cdef char *base = <char *>&m
    fields = [
        ("timestamp_ns", "<u8", <char *>&m.timestamp_ns - base),
        ("offset", "<u4", <char *>&m.offset - base),
        ("length", "<u4", <char *>&m.length - base),
        ("ifindex", "<u4", <char *>&m.ifindex - base),
        ("segment", "<u2", <char *>&m.segment - base),
        ("family", "<u2", <char *>&m.family - base),
        ("src_port", "<u2", <char *>&m.src_port - base),
        ("ttl", "u1", <char *>&m.ttl - base),
        ("tos", "u1", <char *>&m.tos - base),
        ("src_addr", ("u1", 16), <char *>&m.src - base),
        ("dst_addr", ("u1", 16), <char *>&m.dst - base),
    ]
    return {"names": [f[0] for f in fields], "formats": [f[1] for f in fields],
            "offsets": [f[2] for f in fields], "itemsize": sizeof(ur_meta)}


cdef class Batch:
    """The packets of one receive.

    Index or iterate for Packets; or work on whole columns with numpy:
    `records` (one structured row per packet), `lengths`, `offsets`,
    `ifindex`, `src_port`, `src_addr`, `dst_addr`, `ttl` and `tos` (with
    ip_fields), `payload` (the arena the offsets point into) and
    `payloads(width)`. The arrays are read-only views; nothing is copied.
    """

    def __init__(self):
        raise TypeError("batches come from a Reader")

    def __len__(self):
        return self._count

    def __getitem__(self, Py_ssize_t index):
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError("packet index out of range")
        return _packet(self._slab, self._start + index)

    def __iter__(self):
        cdef Py_ssize_t i
        for i in range(self._start, self._start + self._count):
            yield _packet(self._slab, i)

    def reply(self, replies):
        """Answer the batch's packets: replies[i] (bytes-like, or None for
        no answer) goes to packet i's source from the address and interface
        it came to, in sendmmsg calls, runs of equal-sized replies to one
        peer merged with GSO. `batch.reply(batch)` echoes every packet.
        Every entry is checked before any is sent."""
        cdef Py_ssize_t i
        cdef ur_peer *peers
        if replies is self:  # an echo, straight from the receive arena
            self._slab.replies.send_echo(&self._slab.meta[self._start], self._slab.arena,
                                        self._count)
            return
        payloads = replies if type(replies) is list else list(replies)
        if len(payloads) != self._count:
            raise ValueError(f"replies must have one entry per packet ({self._count}), "
                             f"not {len(payloads)}")
        peers = <ur_peer *>malloc(max(self._count, 1) * sizeof(ur_peer))
        if peers == NULL:
            raise MemoryError()
        try:
            for i in range(self._count):
                _reply_peer(&peers[i], &self._slab.meta[self._start + i])
            self._slab.replies.send_all(peers, payloads, "replies")
        finally:
            free(peers)

    @property
    def records(self):
        """All records as a numpy structured array (one row per packet)."""
        import numpy
        return numpy.frombuffer(self._slab, dtype=_dtype(), count=self._count,
                                offset=self._start * sizeof(ur_meta))

    @property
    def lengths(self):
        return self.records["length"]

    @property
    def offsets(self):
        """Where each payload starts in `payload`."""
        return self.records["offset"]

    @property
    def ifindex(self):
        return self.records["ifindex"]

    @property
    def src_port(self):
        return self.records["src_port"]

    @property
    def ttl(self):
        """TTLs (IPv4) and hop limits (IPv6) as uint8, or None unless the
        reader was made with ip_fields=True."""
        return self.records["ttl"] if self._slab.ip_fields else None

    @property
    def tos(self):
        """TOS bytes (IPv4) and traffic classes (IPv6) as uint8, ECN in the
        low two bits, or None unless the reader was made with ip_fields=True."""
        return self.records["tos"] if self._slab.ip_fields else None

    @property
    def src_addr(self):
        """Sender addresses as (n, 16) uint8 rows; IPv4 in the first 4 bytes."""
        return self.records["src_addr"]

    @property
    def dst_addr(self):
        """Destination addresses as (n, 16) uint8 rows; IPv4 in the first 4 bytes."""
        return self.records["dst_addr"]

    @property
    def payload(self):
        """The receive arena as uint8; packet i is payload[offsets[i]:offsets[i]+lengths[i]]."""
        import numpy
        return numpy.frombuffer(self._slab, dtype=numpy.uint8,
                                offset=self._slab.meta_bytes)

    def payloads(self, Py_ssize_t width):
        """The first `width` bytes of every packet as an (n, width) uint8 array.

        A view without a copy when the payloads are evenly spaced in the
        arena (no packet filtered out of the batch, or the segments of one
        merged receive); a compact copy otherwise. Raises ValueError if a
        packet is shorter than `width`.
        """
        import numpy
        from numpy.lib.stride_tricks import as_strided
        if width < 0:
            raise ValueError("width must be >= 0")
        lengths, offsets, arena = self.lengths, self.offsets, self.payload
        if self._count == 0:
            return numpy.empty((0, width), dtype=numpy.uint8)
        if lengths.min() < width:
            raise ValueError(f"a packet is shorter than width={width}")
        steps = numpy.diff(offsets.astype(numpy.int64))
        if self._count == 1 or (steps[0] > 0 and (steps == steps[0]).all()):
            step = int(steps[0]) if self._count > 1 else width
            return as_strided(arena[offsets[0]:], shape=(self._count, width),
                              strides=(step, 1), writeable=False)
        return arena[offsets[:, None] + numpy.arange(width)]

    def __repr__(self):
        return f"<Batch of {self._count} packets>"


def _batch_of(records, frames, bint ip_fields=True,
              str source="a watched packet"):
    """A Batch of packets that another source than a Reader's socket took
    (the packet watcher, a forwarded message): `records` laid out as
    Batch.records, one per packet, whose offsets and lengths point into
    `frames`. The payloads are copied into the batch's own arena, so both
    may be reused at once. Its packets have TTL and TOS when `ip_fields`,
    and cannot answer (`source` names them in the error): no socket of
    ours received them."""
    cdef Py_buffer rec, src
    cdef Py_ssize_t i, n
    cdef size_t total = 0, at = 0
    cdef const ur_meta *given
    cdef _Slab slab
    cdef _ReplyPath none
    cdef Batch batch
    PyObject_GetBuffer(records, &rec, PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(frames, &src, PyBUF_SIMPLE)
        try:
            if rec.len % sizeof(ur_meta):
                raise ValueError(f"records must be whole records of {sizeof(ur_meta)} bytes")
            n = rec.len // sizeof(ur_meta)
            given = <const ur_meta *>rec.buf
            for i in range(n):
                if <size_t>given[i].offset + given[i].length > <size_t>src.len:
                    raise ValueError(f"record {i} points past the end of frames")
                total += given[i].length
            slab = _Slab(n, total)
            memcpy(slab.meta, given, n * sizeof(ur_meta))
            for i in range(n):
                memcpy(slab.arena + at, <const unsigned char *>src.buf + given[i].offset,
                       given[i].length)
                slab.meta[i].offset = <uint32_t>at
                at += given[i].length
        finally:
            PyBuffer_Release(&src)
    finally:
        PyBuffer_Release(&rec)
    none = _ReplyPath()
    none.closed = f"{source} cannot answer: no socket of ours received it"
    slab.replies = none
    slab.ip_fields = ip_fields
    batch = Batch.__new__(Batch)
    batch._slab = slab
    batch._start = 0
    batch._count = n
    return batch
