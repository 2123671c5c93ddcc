# Part of udp_reader._core (included by _core.pyx): IP addresses between
# their packed C form and Python text.

cdef extern from "<arpa/inet.h>" nogil:
    const char *inet_ntop(int af, const void *src, char *dst, int size)


cdef str _host(int family, const uint8_t *addr):
    cdef char text[64]
    inet_ntop(family, addr, text, sizeof(text))
    return text.decode("ascii")


cdef str _family_name(int family):
    return "IPv4" if family == socket.AF_INET else "IPv6"


cdef tuple _numeric(host, str name):
    """(family, packed address) of a numeric IP; an IPv4-mapped IPv6
    address is IPv4."""
    if not isinstance(host, str):
        raise TypeError(f"{name} must be an IP address str, not {type(host).__name__}")
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return socket.AF_INET, socket.inet_pton(socket.AF_INET, text)
    except OSError:
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, text)
    except OSError:
        raise ValueError(f"{name} {host!r} is not a numeric IP address") from None
    if packed[:12] == b"\0" * 10 + b"\xff\xff":
        return socket.AF_INET, packed[12:]
    return socket.AF_INET6, packed
