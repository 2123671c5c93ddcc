# Part of udp_reader._core (included by _core.pyx): the engine's parsing
# driven from tests, without a socket.

def _engine_feed(bytes control, bytes name, uint32_t length, int flags, *,
                 min_size=_DEFAULT.min_size, max_size=_DEFAULT.max_size, gro=_DEFAULT.gro,
                 uint32_t last_ovfl=0):
    """Test-only: the engine's per-datagram parsing on arbitrary bytes, with
    `last_ovfl` the drop count the engine saw last.

    Returns (records, counters): records as dicts of offset, length, segment,
    family, src_port, ifindex, ttl, tos; counters as a dict, with the engine's
    last_ovfl after the datagram."""
    cdef ur_engine engine
    cdef ur_counters c
    cdef ur_meta *meta
    cdef int n, i
    options = ReaderOptions(min_size=min_size, max_size=max_size, gro=gro)
    memset(&c, 0, sizeof(c))
    if ur_engine_init(&engine, 1, options.min_size, options.max_size, options.gro) < 0:
        raise MemoryError()
    engine.last_ovfl = last_ovfl
    meta = <ur_meta *>malloc(engine.max_records * sizeof(ur_meta))
    try:
        if meta == NULL:
            raise MemoryError()
        n = ur_engine_feed(&engine, control, len(control), name, len(name), length,
                           flags, meta, &c)
        if n < 0:
            raise MemoryError()
        records = [{"offset": meta[i].offset, "length": meta[i].length,
                    "segment": meta[i].segment, "family": meta[i].family,
                    "src_port": meta[i].src_port, "ifindex": meta[i].ifindex,
                    "ttl": meta[i].ttl, "tos": meta[i].tos}
                   for i in range(n)]
        return records, {"received": c.received, "too_short": c.too_short,
                         "too_long": c.too_long, "ctrunc": c.ctrunc,
                         "kernel_drops": c.kernel_drops, "last_ovfl": engine.last_ovfl,
                         "bytes": c.bytes,
                         "buffer": engine.slot if gro else options.max_size}
    finally:
        free(meta)
        ur_engine_free(&engine)
