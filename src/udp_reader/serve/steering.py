"""Which slot the kernel gives a datagram (--steer).

    hash    the kernel's own choice: a hash of addresses and ports, so each
            flow stays on its slot (the default)
    spread  a classic BPF program on the SO_REUSEPORT group picks a socket
            at random for every datagram: a few busy sources spread over all
            workers, at the price of per-flow order
    cpu     slot i's socket prefers datagrams the kernel received on CPU i
            (SO_INCOMING_CPU) and its worker is pinned to that CPU, for
            cache locality; needs as many CPUs as workers
"""

from __future__ import annotations

import ctypes
import socket
import struct

MODES = ("hash", "spread", "cpu")

SO_INCOMING_CPU = getattr(socket, "SO_INCOMING_CPU", 49)
SO_ATTACH_REUSEPORT_CBPF = 51
SKF_AD_OFF, SKF_AD_RANDOM = -0x1000, 56
# Classic BPF opcodes: load a word from an absolute offset, A %= k, return A.
BPF_LD_W_ABS, BPF_ALU_MOD_K, BPF_RET_A = 0x20, 0x94, 0x16


def spread(sock: socket.socket, sockets_in_group: int) -> None:
    """Attach to `sock`'s group a program returning a random index below
    `sockets_in_group`; attach again whenever that number changes."""
    program = [(BPF_LD_W_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_RANDOM) & 0xFFFFFFFF),
               (BPF_ALU_MOD_K, 0, 0, sockets_in_group),
               (BPF_RET_A, 0, 0, 0)]
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in program))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("HP", len(program), ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def prefer_cpu(sock: socket.socket, cpu: int) -> None:
    sock.setsockopt(socket.SOL_SOCKET, SO_INCOMING_CPU, cpu)
