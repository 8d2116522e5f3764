"""The process's `malloc` bytes in use, for the tests and benchmarks that measure memory per connection.

tracemalloc sees only Python's allocations; OpenSSL's (an `SSL` object, its record buffers, memory
BIOs) go through glibc's `malloc` too, and `mallinfo2` counts both.
"""

from __future__ import annotations

import ctypes


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def malloc_in_use() -> int:
    """Bytes in use: small blocks (`uordblks`) and mmap-ed large ones (`hblkhd`). glibc only."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd
