# Declarations of the Reader (reader.pyx), included by _core.pxd.

cdef class Reader(_ReceiveLoop):
    cdef object _sock
    cdef object _shed_peer
    cdef uint64_t _drops_told  # kernel_drops as last reported: it never goes back
    cdef object _groups  # multicast.Memberships, from the first join
