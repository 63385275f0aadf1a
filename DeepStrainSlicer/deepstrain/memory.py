"""Process-wide allocator setting for the ``deepstrain`` command (Linux with glibc only).

An analysis allocates and frees arrays of 20-200 MB again and again (probabilities, crops,
displacement fields). By default glibc serves every block above 32 MB with a fresh ``mmap`` and
returns it on ``free``, so each new array starts with page faults on zeroed pages: on the 2-core
development machine (a virtual machine) that was 0.4-0.8 million page faults and 2-4 s of system
time for ``deepstrain analyze`` of a 30-frame study. :func:`keep_freed_memory` makes glibc keep
freed blocks in the heap for reuse instead (``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` at
their maximum): about 0.2 million faults, 1.4-2 s of system time, the same peak memory within
0.1 GB, and 1-2 s less wall time in interleaved runs (see the speed figures in benchmarks/README.md).

It is called by the command line (:func:`deepstrain.cli.main`) and by ``deepstrain batch``'s
worker processes, never on import: a host application such as 3D Slicer keeps its own
allocator settings. Elsewhere (macOS, Windows, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_INT_MAX = (1 << 31) - 1


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed large blocks for reuse (see the module docstring). Returns whether it could."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    # the mmap threshold first: setting the trim threshold alone would freeze the mmap threshold at
    # its 128 kB start value (measured: 4.7 million page faults, twice the wall time)
    return bool(mallopt(_M_MMAP_THRESHOLD, _INT_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
