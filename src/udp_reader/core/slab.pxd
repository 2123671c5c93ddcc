# Declarations of the slab (slab.pyx), included by _core.pxd.

@cython.final
cdef class _Slab:
    cdef unsigned char *mem
    cdef Py_ssize_t size
    cdef ur_meta *meta
    cdef unsigned char *arena
    cdef Py_ssize_t meta_bytes
    cdef _ReplyPath replies  # where its packets' replies go
    cdef bint ip_fields  # its records hold TTL and TOS
