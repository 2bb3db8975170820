"""Special functions the count and Student-t likelihoods need, as Numba scalar functions:
digamma and trigamma (recurrence up to x >= 10, then their asymptotic series, accurate to about
1e-15 relative for x > 0; tested against SciPy), and the log of the standard normal cdf with the
inverse Mills ratio phi(z) / Phi(z), stable for every z."""

import math

import numpy as np
from numba import njit

from vireg.kernels.flags import JIT_OPTIONS

SQRT_HALF = math.sqrt(0.5)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
LOG_HALF = math.log(0.5)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
HALF_LOG_PI = 0.5 * math.log(math.pi)
# Below z = -ERFC_Z the tail of Phi is taken from the asymptotic series of erfcx (erfc(t) is
# about 1e-176 at t = 20, still a normal float; the series' relative error there is about 3e-12,
# and falls as t grows).
ERFC_Z = 20.0 / SQRT_HALF


@njit(inline="always", **JIT_OPTIONS)
def digamma(x):
    """psi(x) = d/dx log Gamma(x) for x > 0: psi(x) = psi(x + k) - sum 1/(x + j) up to
    x + k >= 10 (where the series' next term is below 1e-13), then
    log x - 1/(2x) - sum B_2n / (2n x^2n)."""
    r = 0.0
    while x < 10.0:
        r -= 1.0 / x
        x += 1.0
    f = 1.0 / (x * x)
    series = f * (1.0 / 12 - f * (1.0 / 120 - f * (1.0 / 252 - f * (1.0 / 240 - f / 132))))
    return r + math.log(x) - 0.5 / x - series


@njit(inline="always", **JIT_OPTIONS)
def trigamma(x):
    """psi'(x) for x > 0: psi'(x) = psi'(x + k) + sum 1/(x + j)^2, then
    1/x + 1/(2x^2) + sum B_2n / x^(2n+1)."""
    r = 0.0
    while x < 10.0:
        r += 1.0 / (x * x)
        x += 1.0
    f = 1.0 / (x * x)
    series = 1.0 / 6 - f * (1.0 / 30 - f * (1.0 / 42 - f * (1.0 / 30 - f * 5.0 / 66)))
    return r + 1.0 / x + 0.5 * f + f / x * series


@njit(inline="always", **JIT_OPTIONS)
def log_ndtr_and_mills(z):
    """(log Phi(z), phi(z) / Phi(z)) for the standard normal.

    Phi(z) = erfc(-z / sqrt 2) / 2 for z above -ERFC_Z (for z > 0 through log1p of the upper
    tail, so log Phi keeps its digits as it nears 0); below, with t = -z / sqrt 2,
    Phi(z) = erfcx(t) exp(-t^2) / 2 and erfcx(t) = (1 - 1/(2t^2) + 3/(4t^4) - 15/(8t^6)
    + 105/(16t^8)) / (t sqrt pi), so log Phi = log(erfcx(t) / 2) - t^2 and
    phi / Phi = sqrt(2 / pi) / erfcx(t), with no underflow at any z."""
    if z > 0.0:
        tail = 0.5 * math.erfc(z * SQRT_HALF)
        return math.log1p(-tail), INV_SQRT_2PI * math.exp(-0.5 * z * z) / (1.0 - tail)
    if z > -ERFC_Z:
        cdf = 0.5 * math.erfc(-z * SQRT_HALF)
        return math.log(cdf), INV_SQRT_2PI * math.exp(-0.5 * z * z) / cdf
    t = -z * SQRT_HALF
    f = 1.0 / (t * t)
    erfcx = (1.0 - f * (0.5 - f * (0.75 - f * (1.875 - f * 6.5625)))) / (t * math.sqrt(math.pi))
    return math.log(0.5 * erfcx) - t * t, SQRT_2_OVER_PI / erfcx


@njit(**JIT_OPTIONS)
def mills_ratios(z):
    """phi(z) / Phi(z) for each entry of an array (``log_ndtr_and_mills``)."""
    out = np.empty_like(z)
    for i in range(z.size):
        out[i] = log_ndtr_and_mills(z[i])[1]
    return out
