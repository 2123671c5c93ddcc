# Declarations of Packet (packet.pyx), included by _core.pxd.

@cython.final
cdef class Packet:
    cdef _Slab _slab
    cdef ur_meta *_m
