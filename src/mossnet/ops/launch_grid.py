"""Integer arithmetic for sizing Triton launches on the host: :func:`cdiv` and :func:`next_power_of_2`.

Triton 3.6's ``triton.cdiv`` and ``triton.next_power_of_2`` are ``constexpr_function`` objects,
callable from the host but at about 3 µs a call (plain integer arithmetic takes 0.04 µs), and a
layer sizes about 25 grids per forward. Batch-1 prefill and decode are bound by the host, so the
host sizes its grids with these; inside ``@triton.jit`` code, Triton's own stay.
"""

from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for a >= 0, b > 0."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n, as ``triton.next_power_of_2`` (which gives 0 for 0)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0
