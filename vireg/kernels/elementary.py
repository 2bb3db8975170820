"""exp and log1p on the ranges the logistic kernel needs, as straight-line arithmetic.

Numba's pip wheels have no SVML, so ``math.exp`` and ``math.log1p`` compile to scalar libm calls
that block SIMD and cost about 10 ns each: 80% of a logistic step at S = 8, N = 100,000, D = 50.
These versions use only multiply, add, divide and compare, so LLVM vectorises the loops that call
them. Accuracy (tested against libm over their whole ranges): a few 1e-16 relative for
``log1p_unit``, about 1e-14 relative for ``exp_nonpositive``.
"""

import math

from numba import njit

from vireg.kernels.flags import JIT_OPTIONS

EXP_FLOOR = -40.0  # exp(-40) = 4e-18: below this the sigmoid and softplus terms are saturated


@njit(inline="always", **JIT_OPTIONS)
def exp_nonpositive(x):
    """exp(x) for x <= 0, as exp(x / 64)^64: a degree-16 Taylor polynomial on [-0.625, 0]
    (truncation below 1e-18), then six squarings. Inputs below EXP_FLOOR give exp(EXP_FLOOR),
    whose effect on 1 + e is below double precision."""
    r = max(x, EXP_FLOOR) * 0.015625
    p = 1.0 / 20922789888000.0  # 1/16!
    p = p * r + 1.0 / 1307674368000.0
    p = p * r + 1.0 / 87178291200.0
    p = p * r + 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    return p * p


@njit(inline="always", **JIT_OPTIONS)
def log1p_unit(e):
    """log(1 + e) for 0 <= e <= 1, from log(1 + e) = 2 atanh(t), t = e / (2 + e) in [0, 1/3]:
    2 t sum_k t^(2k) / (2k + 1), 17 terms (truncation below 1e-17 relative)."""
    t = e / (2.0 + e)
    w = t * t
    p = 1.0 / 33.0
    p = p * w + 1.0 / 31.0
    p = p * w + 1.0 / 29.0
    p = p * w + 1.0 / 27.0
    p = p * w + 1.0 / 25.0
    p = p * w + 1.0 / 23.0
    p = p * w + 1.0 / 21.0
    p = p * w + 1.0 / 19.0
    p = p * w + 1.0 / 17.0
    p = p * w + 1.0 / 15.0
    p = p * w + 1.0 / 13.0
    p = p * w + 1.0 / 11.0
    p = p * w + 1.0 / 9.0
    p = p * w + 1.0 / 7.0
    p = p * w + 1.0 / 5.0
    p = p * w + 1.0 / 3.0
    p = p * w + 1.0
    return 2.0 * t * p


# log1p_any: (1 + q)^(1 / 2^LOG1P_HALVINGS) by repeated square roots brings q up to LOG1P_MAX
# within log1p_unit's range [0, 1] (1 + q <= 2^(2^3)); a Student-t residual beyond that (16
# sqrt(nu) sigma) is rare, and its callers recompute it with libm
LOG1P_HALVINGS = 3
LOG1P_MAX = 255.0


@njit(inline="always", **JIT_OPTIONS)
def log1p_any(q):
    """log(1 + q) for 0 <= q <= LOG1P_MAX as vector arithmetic: log1p_unit(q) for q <= 1, else
    8 log1p_unit(m - 1) with m = (1 + q)^(1/8) from three square roots (m - 1 >= 0.09 is exact,
    so the relative error stays below about 1e-14); one polynomial either way."""
    m = 1.0 + q
    for _ in range(LOG1P_HALVINGS):
        m = math.sqrt(m)
    small = q <= 1.0
    return (1.0 if small else 8.0) * log1p_unit(min(q, 1.0) if small else min(m - 1.0, 1.0))
