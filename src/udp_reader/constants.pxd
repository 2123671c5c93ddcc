# Declarations of the shared limits and Linux values (csrc/constants.h);
# udp_reader._constants hands them to Python.

cdef extern from "constants.h" nogil:
    enum:
        UR_MAX_PAYLOAD4
        UR_MAX_PAYLOAD6
        UR_MAX_LENGTH
        UR_MAX_BATCH
        UR_CONTROL_SIZE
        UR_GRO_BUFFER
        UR_GSO_SEGMENTS
        UR_ASYNC_ERROR_COUNT
        SOL_UDP
        SO_RXQ_OVFL
        UDP_SEGMENT
        UDP_GRO

    const int ur_async_errors[]
