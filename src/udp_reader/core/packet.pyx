# Part of udp_reader._core (included by _core.pyx): one received datagram
# (declared in packet.pxd).

@cython.freelist(512)
cdef class Packet:
    """One received datagram: payload, source, destination and interface.

    The payload is read without a copy through the buffer protocol
    (memoryview(packet), numpy.frombuffer(packet)); `.data` copies it into
    bytes. Addresses are built only when asked for.
    """

    def __init__(self):
        raise TypeError("packets come from a Reader")

    @property
    def data(self):
        """The payload as bytes, exactly its length."""
        return PyBytes_FromStringAndSize(
            <char *>self._slab.arena + self._m.offset, self._m.length)

    def __bytes__(self):
        return self.data

    def __len__(self):
        return self._m.length

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, self._slab.arena + self._m.offset,
                          self._m.length, 1, flags)

    def reply(self, data):
        """Send `data` (bytes-like) back to the packet's source, from the
        address and interface the packet arrived on, through the reader's
        socket. In a callback of the reader's run the reply is queued and
        goes out with the others of its receive in sendmmsg calls; anywhere
        else (a kept packet, another thread) it is sent at once, and a send
        error raises OSError."""
        cdef ur_peer to
        _reply_peer(&to, self._m)
        self._slab.replies.reply(&to, data, "data")

    @property
    def src(self):
        """The sender as (host, port)."""
        return (_host(self._m.family, self._m.src), self._m.src_port)

    @property
    def dst(self):
        """The local address the datagram was sent to."""
        return _host(self._m.family, self._m.dst)

    @property
    def ifindex(self):
        """Index of the interface the datagram arrived on."""
        return self._m.ifindex

    @property
    def segment(self):
        """The GRO segment size when the packet arrived merged with others of
        its flow (Reader(gro=True)), else 0."""
        return self._m.segment

    @property
    def timestamp_ns(self):
        """Kernel receive time in nanoseconds since the epoch, or 0."""
        return self._m.timestamp_ns

    @property
    def timestamp(self):
        """Kernel receive time in seconds since the epoch, or None unless the
        reader was made with timestamps=True."""
        return self._m.timestamp_ns / 1e9 if self._m.timestamp_ns else None

    @property
    def family(self):
        """socket.AF_INET or socket.AF_INET6 (IPv4 on a dual-stack socket is AF_INET)."""
        return socket.AddressFamily(self._m.family)

    @property
    def ttl(self):
        """The IPv4 TTL or IPv6 hop limit the datagram arrived with, or None
        unless the reader was made with ip_fields=True."""
        return self._m.ttl if self._slab.ip_fields else None

    @property
    def tos(self):
        """The IPv4 TOS byte or IPv6 traffic class (DSCP << 2 | ECN), or None
        unless the reader was made with ip_fields=True."""
        return self._m.tos if self._slab.ip_fields else None

    @property
    def ecn(self):
        """The ECN codepoint, the low two bits of tos (0 not ECN-capable,
        1 ECT(1), 2 ECT(0), 3 CE), or None unless ip_fields=True."""
        return self._m.tos & 3 if self._slab.ip_fields else None

    def __repr__(self):
        host, port = self.src
        return (f"<Packet {sockets.format_address(host, port)} -> {self.dst} "
                f"if={self._m.ifindex} len={self._m.length}>")


cdef inline Packet _packet(_Slab slab, Py_ssize_t index):
    cdef Packet p = Packet.__new__(Packet)
    p._slab = slab
    p._m = &slab.meta[index]
    return p
