# Part of udp_reader._core (included by _core.pyx): the Reader, its socket
# and multicast set-up and the API around the receive loop (declared in
# reader.pxd).

# The Reader's defaults are those of ReaderOptions, declared there once.
_DEFAULT = ReaderOptions()

Stats = collections.namedtuple("Stats", [
    "received", "delivered", "too_short", "too_long", "ctrunc",
    "kernel_drops", "batches", "bytes", "sent", "send_errors"])
Stats.__doc__ = """Counters of a Reader since it was opened.

received = delivered + too_short + too_long + packets still pending
(left undelivered by stop() or a callback that raised; the next run
delivers them first).

kernel_drops counts the receive buffers the kernel dropped on a full queue
since the reader took the socket, exact when the stats are read (the
socket's own count, SO_MEMINFO): one per datagram, but with gro=True a
dropped merged receive of up to 64 datagrams of one flow counts once
(measured: 63,488 datagrams lost, 992 counted).

sent counts the datagrams this reader sent (replies, send(), send_many());
send_errors those the kernel refused, plus the errors (ICMP port or host
unreachable, message too big) that came back for datagrams already sent."""


cdef class Reader(_ReceiveLoop):
    """Receive UDP datagrams in batches from a socket bound to `address`.

    Address forms: "host:port", ":port" (every address, dual-stack),
    "[v6]:port", a port number, or ("host", port); port 0 picks a free port
    (see `address`). Datagrams shorter than `min_size` or longer than
    `max_size` are counted and dropped in compiled code. The options are
    checked by udp_reader.options.ReaderOptions.

    `rcvbuf` sets the receive buffer of a socket opened here; a socket handed
    in (`fileno`, from_socket()) is only ever raised to it, never shrunk.
    rcvbuf=None leaves the buffer as it is.

    `ip_fields` reads every packet's TTL and TOS (packet.ttl, .tos, .ecn).
    `join` lists multicast groups to join, as join() takes them or in the
    notation [SOURCE>]GROUP[@INTERFACE] (see udp_reader.multicast).
    """

    def __init__(self, address=None, *, min_size=_DEFAULT.min_size,
                 max_size=_DEFAULT.max_size, batch_size=_DEFAULT.batch_size,
                 bint reuseport=True, rcvbuf=_DEFAULT.rcvbuf, timestamps=_DEFAULT.timestamps,
                 gro=_DEFAULT.gro, ip_fields=_DEFAULT.ip_fields, join=(), fileno=None):
        options = ReaderOptions(min_size=min_size, max_size=max_size, batch_size=batch_size,
                                rcvbuf=rcvbuf, gro=gro, timestamps=timestamps,
                                ip_fields=ip_fields)
        if isinstance(join, (str, multicast.Membership)):
            raise TypeError(f"join must be a list of memberships, not {join!r}")
        memberships = []
        for i, entry in enumerate(join or ()):
            try:
                memberships.append(multicast.parse(entry))
            except (TypeError, ValueError) as e:
                raise type(e)(f"join[{i}]: {e}") from None
        if (address is None) == (fileno is None):
            raise TypeError("give exactly one of address or fileno")
        if fileno is not None:
            sock = socket.socket(fileno=fileno)
            try:
                sockets.check_udp(sock)
                sockets.enable_metadata(sock)
                if options.rcvbuf is not None:
                    # A socket handed in may be larger on purpose (ReceiveBuffer=).
                    sockets.set_rcvbuf(sock, options.rcvbuf, at_least=True)
            except BaseException:
                sock.detach()  # a refused descriptor stays the caller's
                raise
        else:
            sock = sockets.open_socket(address, reuseport=reuseport, rcvbuf=options.rcvbuf)
        try:
            if options.timestamps:
                sockets.enable_timestamps(sock)
            if options.ip_fields:
                sockets.enable_ip_fields(sock)
            self._ip_fields = options.ip_fields
            gro = options.gro and sockets.enable_gro(sock)
            if ur_engine_init(&self._engine, options.batch_size, options.min_size,
                              options.max_size, gro) < 0:
                raise MemoryError()
            self._engine_ready = True
            # Drops counted before we took the socket are not ours.
            self._engine.last_ovfl = sockets.kernel_drops(sock)
            self._replies = _ReplyPath()
            self._replies.setup(sock, options.batch_size)
            self._slab = self._new_slab()
            self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            if memberships:
                self._groups = multicast.Memberships(sock)
                for i, m in enumerate(memberships):
                    try:
                        self._groups.join(m.group, interface=m.interface, source=m.source)
                    except (TypeError, ValueError) as e:
                        raise type(e)(f"join[{i}] {str(m)!r}: {e}") from None
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._fd = sock.fileno()

    @classmethod
    def from_socket(cls, sock, **options):
        """A Reader on a duplicate of an existing bound UDP socket (inherited,
        passed over a Unix socket, or from systemd); `sock` stays yours."""
        sockets.check_udp(sock)
        fd = os.dup(sock.fileno())
        try:
            return cls(fileno=fd, **options)
        except BaseException:
            os.close(fd)
            raise

    # -- properties ------------------------------------------------------------

    @property
    def address(self):
        """The bound (host, port)."""
        self._check_open()
        return self._sock.getsockname()[:2]

    @property
    def socket(self):
        """The underlying socket.socket (owned by the reader)."""
        return self._sock

    def fileno(self):
        self._check_open()
        return self._fd

    @property
    def rcvbuf(self):
        """The receive buffer size the kernel reports (twice the size set)."""
        self._check_open()
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    @property
    def min_size(self):
        return self._engine.min_size

    @property
    def max_size(self):
        return self._engine.max_size

    @property
    def batch_size(self):
        return self._engine.batch

    @property
    def gro(self):
        """True when merged (UDP_GRO) receives are on and split here."""
        return bool(self._engine.gro)

    @property
    def ip_fields(self):
        """True when every packet's TTL and TOS are read (ip_fields=True)."""
        return bool(self._ip_fields)

    @property
    def closed(self):
        return self._fd < 0

    # -- multicast -------------------------------------------------------------

    def join(self, group, *, interface=None, source=None):
        """Join a multicast group: from any source, or only from `source`
        (source-specific); on `interface` (a name, an index, an IPv4 address,
        or "*" for every interface that is up and multicast-capable), else
        where the kernel routes the group. The socket gets only the groups it
        joined (IP_MULTICAST_ALL is off). Joining twice, a source-specific
        join of a group joined for any source (the kernel would narrow it
        silently) and an unknown interface raise ValueError."""
        self._check_open()
        if self._groups is None:
            self._groups = multicast.Memberships(self._sock)
        self._groups.join(group, interface=interface, source=source)

    def leave(self, group, *, interface=None, source=None):
        """Leave a group joined with join(): from `source` only, when given;
        else every source. interface="*" leaves it wherever it was joined.
        A group not joined raises ValueError."""
        self._check_open()
        if self._groups is None:
            self._groups = multicast.Memberships(self._sock)
        self._groups.leave(group, interface=interface, source=source)

    @property
    def memberships(self):
        """The groups joined through this reader, as multicast.Membership
        tuples: one per interface (an index, an IPv4 address, or None for the
        kernel's choice) and source."""
        return [] if self._groups is None else list(self._groups)

    # -- counters --------------------------------------------------------------

    @property
    def stats(self):
        """A Stats snapshot of the counters."""
        cdef uint64_t drops = self._c.kernel_drops
        if self._sock is not None:
            drops = ur_engine_drops(&self._engine, &self._c,
                                    <uint32_t>sockets.kernel_drops(self._sock))
        self._drops_told = max(self._drops_told, drops)
        return Stats(self._c.received, self._delivered, self._c.too_short,
                     self._c.too_long, self._c.ctrunc, self._drops_told,
                     self._c.batches, self._c.bytes, self._replies.c.sent,
                     self._replies.c.errors)

    @property
    def gso(self):
        """True while replies to one peer of equal size may be merged into
        one message with UDP_SEGMENT; False once the kernel refused it."""
        self._check_open()
        if not self._replies.prepared:
            return bool(ur_probe_gso(self._fd))
        return self._replies.can_gso

    # -- sending ---------------------------------------------------------------

    def send(self, data, address, *, source=None, ifindex=None):
        """Send one datagram now through the reader's socket to `address`
        ("host:port", "[v6]:port" or (host, port), numeric), from the local
        address `source` and interface `ifindex` when given (else the
        kernel's choice). A send error raises OSError."""
        cdef ur_peer to
        self._check_open()
        self._replies.peer_for(&to, address, source, ifindex)
        self._replies.prepare()
        self._replies.reply(&to, data, "data", True)

    def send_many(self, messages, *, source=None, ifindex=None):
        """Send (data, address) pairs in sendmmsg calls, from `source` and
        `ifindex` when given; runs of equal-sized datagrams to one address
        are merged with GSO. In a callback of this reader's run they join
        that receive's replies; else they go at once. Every pair is checked
        before any is sent; failures are counted (stats.send_errors) and
        kept per destination (send_failures())."""
        cdef Py_ssize_t i, n
        cdef ur_peer *peers
        self._check_open()
        pairs = messages if type(messages) is list else list(messages)
        n = len(pairs)
        payloads = [None] * n
        peers = <ur_peer *>malloc(max(n, 1) * sizeof(ur_peer))
        if peers == NULL:
            raise MemoryError()
        try:
            parsed = {}
            for i in range(n):
                try:
                    data, address = pairs[i]
                except (TypeError, ValueError):
                    raise TypeError(f"messages[{i}] must be a (data, address) pair, "
                                    f"not {pairs[i]!r}") from None
                if data is None:
                    raise TypeError(f"messages[{i}]: data must be bytes-like, not None")
                key = address if isinstance(address, (str, tuple)) else repr(address)
                if key not in parsed:
                    self._replies.peer_for(&peers[i], address, source, ifindex)
                    parsed[key] = i
                else:
                    peers[i] = peers[<Py_ssize_t>parsed[key]]
                payloads[i] = data
            self._replies.send_all(peers, payloads, "messages")
        finally:
            free(peers)

    def send_failures(self):
        """Destinations whose datagrams failed since the last call, as
        {(host, port): SendFailure(errno, datagrams, mtu)}: refused sends and
        the ICMP errors read back from the socket's error queue."""
        self._check_open()
        return self._replies.take_failures()

    # -- hand-over and control -------------------------------------------------

    def shed(self):
        """Stop the kernel from steering new datagrams to this socket; those
        already queued stay readable. Other sockets on the port (SO_REUSEPORT)
        take the new ones; with none left, the kernel refuses them."""
        self._check_open()
        # Another holder of a shared socket may have shed it already.
        if self._shed_peer is None and not sockets.is_shed(self._sock):
            self._shed_peer = sockets.shed(self._sock)

    def drain(self, on_packet=None, *, on_batch=None, bint shed=True,
              double grace=0.05, timeout=None):
        """Hand over the port without losing a datagram, then close.

        With shed=True, shed() the socket, deliver everything queued until
        none has arrived for `grace` seconds (a datagram already steered can
        still land just after the shed), and close. With shed=False, for a
        socket that others keep reading (a shared or handed-off socket),
        deliver only what this reader already took from the kernel, and
        close. The handler defaults to the last run's. `timeout` bounds the
        whole drain. Returns the number of packets delivered.
        """
        if on_packet is not None and on_batch is not None:
            raise TypeError("give on_packet or on_batch, not both")
        if on_packet is not None:
            self._handler, self._handler_takes_batches = on_packet, False
        elif on_batch is not None:
            self._handler, self._handler_takes_batches = on_batch, True
        elif self._handler is None:
            raise TypeError("drain() needs a handler: on_packet, on_batch or a previous run's")
        if grace < 0:
            raise ValueError(f"grace must be >= 0, not {grace}")
        self._check_open()
        before = self._delivered
        self._stopping = False  # a stop() between runs must not skip what is held
        if shed:
            self.shed()
        self._deadline = -1.0 if timeout is None else time.monotonic() + timeout
        try:
            self._loop(<int>(grace * 1000) if shed else PENDING_ONLY)
            if self._deadline >= 0 and time.monotonic() >= self._deadline:
                log.warning("drain timed out after %.1f s; datagrams still queued are lost",
                            timeout)
        finally:
            self._deadline = -1.0
            self.close()
        return self._delivered - before

    def close(self):
        """Close the socket; idempotent. Called while run() is active, it
        stops the run and closes when the run returns."""
        if self._running:
            self._close_after_run = True
            self.stop()
            return
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._shed_peer is not None:
            self._shed_peer.close()
            self._shed_peer = None
        self._fd = -1
        if self._replies is not None:
            self._replies.fd = -1  # kept packets can no longer answer
            self._replies.sock = None
        if self._wake_fd >= 0:
            os.close(self._wake_fd)
            self._wake_fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        if self._fd < 0:
            return "<Reader closed>"
        host, port = self.address
        return f"<Reader {sockets.format_address(host, port)}>"
