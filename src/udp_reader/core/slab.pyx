# Part of udp_reader._core (included by _core.pyx): the memory of one
# receive (declared in slab.pxd).

cdef class _Slab:
    """Records then payload arena of one receive, in one allocation, exported
    read-only through the buffer protocol for numpy."""

    def __cinit__(self, Py_ssize_t records, Py_ssize_t arena_bytes):
        self.meta_bytes = records * sizeof(ur_meta)
        self.size = self.meta_bytes + max(arena_bytes, 1)
        self.mem = <unsigned char *>malloc(self.size)
        if self.mem == NULL:
            raise MemoryError()
        self.meta = <ur_meta *>self.mem
        self.arena = self.mem + self.meta_bytes

    def __dealloc__(self):
        free(self.mem)

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, self.mem, self.size, 1, flags)
