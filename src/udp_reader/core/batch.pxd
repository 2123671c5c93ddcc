# Declarations of Batch (batch.pyx), included by _core.pxd.

@cython.final
cdef class Batch:
    cdef _Slab _slab
    cdef Py_ssize_t _start
    cdef Py_ssize_t _count
