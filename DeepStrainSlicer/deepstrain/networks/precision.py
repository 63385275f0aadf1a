"""Arithmetic precision of the networks at inference: float32, or bfloat16 where the CPU has it natively.

``"auto"`` (the default everywhere) runs the convolutions in bfloat16 (``torch.autocast``) on CPUs
with native bfloat16 arithmetic (AVX512-BF16 or AMX), where it halves the time, and in float32
elsewhere (emulated bfloat16 would be slower). Network outputs are always returned as float32.
Results are deterministic for a given machine and precision; the accuracy figures in benchmarks/README.md
and the weights manifest were measured with ``"auto"`` on a CPU with AVX512-BF16 (so: bfloat16).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

PRECISIONS = ("auto", "float32", "bfloat16")
"""Accepted values of every ``precision`` argument and ``--precision`` option (this module imports
torch only when a precision is resolved, so the command line can read this cheaply)."""


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles)."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve(precision: str = "auto") -> str:
    """``"float32"`` or ``"bfloat16"`` for a requested precision (see the module docstring)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bfloat16" if native_bfloat16() else "float32"
    return precision


@contextlib.contextmanager
def compute_precision(precision: str = "auto") -> Iterator[str]:
    """Run the enclosed network calls in the resolved precision; yields it."""
    import torch

    resolved = resolve(precision)
    if resolved == "bfloat16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield resolved
    else:
        yield resolved
