"""The thread pools during a computation: Numba's at the requested count, BLAS at one.

The small dense algebra of a step (P x P products, triangular solves) gains nothing from BLAS
threads, and OpenBLAS's idle threads spin on the cores for a while after every call, which the
data kernel then shares: measured 103 ms instead of 15 ms per full-rank step at N = 100,000,
D = 100, S = 8 on 2 cores. threadpoolctl limits BLAS at run time, whoever imported NumPy first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def compute_threads(n: int) -> Iterator[None]:
    import numba
    from threadpoolctl import threadpool_limits

    saved = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        numba.set_num_threads(saved)
