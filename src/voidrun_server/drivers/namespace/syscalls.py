"""Raw Linux syscalls that libc has no wrapper for (the new mount API), through ctypes."""

from __future__ import annotations

import ctypes
import os

__all__ = ["syscall"]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def syscall(number: int, *args: object) -> int:
    """``syscall(number, *args)`` (ctypes-typed arguments); raises OSError on failure."""
    ctypes.set_errno(0)
    result = int(_libc.syscall(ctypes.c_long(number), *args))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result
