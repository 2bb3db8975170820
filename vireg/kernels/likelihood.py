"""Data kernels: per-draw log-likelihood sums and gradients in one pass over the rows.

The kernel contract (docs/derivations.md): given the design Z (N x D, C-contiguous), the response
y (N,), and S draws of the unconstrained parameters U (S x P), laid out as
``[a (if intercept), b_1 .. b_D, t (gaussian only)]``, return

    G[s, :]  = d/dU[s] sum_i l(y_i, eta_is, t_s)      (S x P)
    ll[s]    = sum_i l(y_i, eta_is, t_s)                (S,)

with eta_is = a_s + z_i . b_s. Each row of Z is read once for all S draws. Rows are split into
chunks of a size fixed by the data shape; ``prange`` runs over chunks, each chunk writes only its
own slice of the partials array, and the partials are summed in chunk order after the loop, so
the result is bit-identical at any thread count.

Each kernel is compiled twice from the same source: ``parallel=True`` and a serial build for data
too small to pay for waking the thread pool (measured: a 434-row fit took 8 s instead of 0.3 s when
another process held the cores, because every step waited on the pool). ``flags.use_parallel``
chooses between them from the data shape alone, never from the thread count.
"""

import math

import numpy as np
from numba import njit, prange

from vireg.kernels.elementary import exp_nonpositive, log1p_unit
from vireg.kernels.flags import JIT_OPTIONS

BLOCK_ROWS = 32
# Four-row register blocking pays off with several draws per row (S = 8, 100k x 50: 8.6 -> 7.4 ms);
# with one or two it measured twice as slow (1M x 100, S = 1: 38 -> 78 ms), so it is skipped.
ROW_BLOCK_MIN_DRAWS = 4

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@njit(inline="always", **JIT_OPTIONS)
def _eta(zi, bs, a_s):
    """a_s + z_i . b_s for one row."""
    lin = a_s
    for j in range(zi.shape[0]):
        lin += zi[j] * bs[j]
    return lin


@njit(inline="always", **JIT_OPTIONS)
def _eta4(z0, z1, z2, z3, bs, a_s):
    """a_s + z_r . b_s for four rows, each coefficient loaded once for all four."""
    l0 = a_s
    l1 = a_s
    l2 = a_s
    l3 = a_s
    for j in range(bs.shape[0]):
        bj = bs[j]
        l0 += z0[j] * bj
        l1 += z1[j] * bj
        l2 += z2[j] * bj
        l3 += z3[j] * bj
    return l0, l1, l2, l3


@njit(**JIT_OPTIONS)
def _split_draws(U, has_intercept, D):
    """Per-draw intercepts a (S,) (zeros without an intercept) and coefficients B (S, D), both
    contiguous, so the inner loops carry no branch on the model's layout."""
    S = U.shape[0]
    off = 1 if has_intercept else 0
    a = np.zeros(S)
    B = np.empty((S, D))
    for s in range(S):
        if has_intercept:
            a[s] = U[s, 0]
        for j in range(D):
            B[s, j] = U[s, off + j]
    return a, B


def _gaussian_loglik_grad(Z, y, U, has_intercept, chunk_rows):
    """Gaussian likelihood y_i ~ N(eta_i, exp(t)^2), for each draw s:

        e_is  = y_i - eta_is,   w_s = exp(-2 t_s)
        ll_s  = -N (0.5 log 2pi + t_s) - 0.5 w_s sum_i e_is^2
        dll/da_s   = w_s sum_i e_is
        dll/db_sj  = w_s sum_i e_is z_ij
        dll/dt_s   = -N + w_s sum_i e_is^2

    The chunks accumulate the sufficient sums (sum e, sum e z, sum e^2); w_s is applied once after
    the reduction.
    """
    N, D = Z.shape
    S, P = U.shape
    off = 1 if has_intercept else 0
    n_chunks = (N + chunk_rows - 1) // chunk_rows
    # partials[c, s, :] = [sum e, sum e z_1..z_D, sum e^2] over chunk c
    partials = np.zeros((n_chunks, S, D + 2))
    eta = np.empty((n_chunks, S))
    a, B = _split_draws(U, has_intercept, D)
    for c in prange(n_chunks):
        start = c * chunk_rows
        stop = min(N, start + chunk_rows)
        acc = partials[c]
        e_buf = eta[c]
        i = start
        # Four rows at a time for several draws: residuals and sums fused per draw, so each
        # coefficient and each accumulator is loaded once per four rows.
        while i + 4 <= stop and S >= ROW_BLOCK_MIN_DRAWS:
            z0, z1, z2, z3 = Z[i], Z[i + 1], Z[i + 2], Z[i + 3]
            for s in range(S):
                l0, l1, l2, l3 = _eta4(z0, z1, z2, z3, B[s], a[s])
                e0 = y[i] - l0
                e1 = y[i + 1] - l1
                e2 = y[i + 2] - l2
                e3 = y[i + 3] - l3
                row = acc[s]
                row[0] += (e0 + e1) + (e2 + e3)
                row[D + 1] += (e0 * e0 + e1 * e1) + (e2 * e2 + e3 * e3)
                for j in range(D):
                    row[1 + j] += (e0 * z0[j] + e1 * z1[j]) + (e2 * z2[j] + e3 * z3[j])
            i += 4
        while i < stop:
            zi = Z[i]
            for s in range(S):
                e_buf[s] = y[i] - _eta(zi, B[s], a[s])
            for s in range(S):
                e = e_buf[s]
                acc[s, 0] += e
                for j in range(D):
                    acc[s, 1 + j] += e * zi[j]
                acc[s, D + 1] += e * e
            i += 1
    total = np.zeros((S, D + 2))
    for c in range(n_chunks):
        total += partials[c]
    G = np.zeros((S, P))
    ll = np.empty(S)
    for s in range(S):
        t = U[s, P - 1]
        w = math.exp(-2.0 * t)
        if has_intercept:
            G[s, 0] = w * total[s, 0]
        for j in range(D):
            G[s, off + j] = w * total[s, 1 + j]
        G[s, P - 1] = -N + w * total[s, D + 1]
        ll[s] = -N * (HALF_LOG_2PI + t) - 0.5 * w * total[s, D + 1]
    return G, ll


def _bernoulli_loglik_grad(Z, y, U, has_intercept, chunk_rows):
    """Bernoulli-logit likelihood y_i ~ Bernoulli(sigmoid(eta_i)), for each draw s:

        ll_s      = sum_i y_i eta_is - softplus(eta_is)
        r_is      = y_i - sigmoid(eta_is)
        dll/da_s  = sum_i r_is,     dll/db_sj = sum_i r_is z_ij

    Stable forms with e = exp(-|eta|) <= 1, which never overflows:
        softplus(eta) = max(eta, 0) + log1p(e)
        sigmoid(eta)  = 1 / (1 + e) if eta >= 0 else e / (1 + e)

    Rows go in blocks of BLOCK_ROWS: (1) the linear predictors of the block for all draws,
    (2) the transcendental work on the contiguous block x draws buffer, a branch-free loop that
    LLVM vectorises (``elementary`` supplies exp and log1p without libm calls), (3) the gradient
    sums, with the block's rows still in L1 cache.
    """
    N, D = Z.shape
    S, P = U.shape
    off = 1 if has_intercept else 0
    n_chunks = (N + chunk_rows - 1) // chunk_rows
    # partials[c, s, :] = [sum r, sum r z_1..z_D, sum ll] over chunk c
    partials = np.zeros((n_chunks, S, D + 2))
    # Per-chunk scratch, allocated once outside the parallel loop: eta then r, y, ll.
    work = np.empty((n_chunks, 3, BLOCK_ROWS * S))
    a, B = _split_draws(U, has_intercept, D)
    for c in prange(n_chunks):
        start = c * chunk_rows
        stop = min(N, start + chunk_rows)
        acc = partials[c]
        eta = work[c, 0]
        yb = work[c, 1]
        llb = work[c, 2]
        for b0 in range(start, stop, BLOCK_ROWS):
            nb = min(stop, b0 + BLOCK_ROWS) - b0
            # (1) linear predictors, four rows at a time: each coefficient load serves four rows.
            r = 0
            while r + 4 <= nb and S >= ROW_BLOCK_MIN_DRAWS:
                z0, z1, z2, z3 = Z[b0 + r], Z[b0 + r + 1], Z[b0 + r + 2], Z[b0 + r + 3]
                for s in range(S):
                    l0, l1, l2, l3 = _eta4(z0, z1, z2, z3, B[s], a[s])
                    eta[r * S + s] = l0
                    eta[(r + 1) * S + s] = l1
                    eta[(r + 2) * S + s] = l2
                    eta[(r + 3) * S + s] = l3
                    yb[r * S + s] = y[b0 + r]
                    yb[(r + 1) * S + s] = y[b0 + r + 1]
                    yb[(r + 2) * S + s] = y[b0 + r + 2]
                    yb[(r + 3) * S + s] = y[b0 + r + 3]
                r += 4
            while r < nb:
                zi = Z[b0 + r]
                for s in range(S):
                    eta[r * S + s] = _eta(zi, B[s], a[s])
                    yb[r * S + s] = y[b0 + r]
                r += 1
            # (2) the transcendental pass over the contiguous rows x draws buffer.
            for k in range(nb * S):
                lin = eta[k]
                e = exp_nonpositive(-abs(lin))
                inv = 1.0 / (1.0 + e)
                sig = inv if lin >= 0.0 else e * inv
                llb[k] = yb[k] * lin - (max(lin, 0.0) + log1p_unit(e))
                eta[k] = yb[k] - sig
            # (3) gradient sums, four rows at a time: one load and store of acc per four FMAs.
            r = 0
            while r + 4 <= nb and S >= ROW_BLOCK_MIN_DRAWS:
                z0, z1, z2, z3 = Z[b0 + r], Z[b0 + r + 1], Z[b0 + r + 2], Z[b0 + r + 3]
                for s in range(S):
                    q0 = eta[r * S + s]
                    q1 = eta[(r + 1) * S + s]
                    q2 = eta[(r + 2) * S + s]
                    q3 = eta[(r + 3) * S + s]
                    row = acc[s]
                    row[0] += (q0 + q1) + (q2 + q3)
                    row[D + 1] += ((llb[r * S + s] + llb[(r + 1) * S + s])
                                   + (llb[(r + 2) * S + s] + llb[(r + 3) * S + s]))
                    for j in range(D):
                        row[1 + j] += (q0 * z0[j] + q1 * z1[j]) + (q2 * z2[j] + q3 * z3[j])
                r += 4
            while r < nb:
                zi = Z[b0 + r]
                for s in range(S):
                    res = eta[r * S + s]
                    acc[s, 0] += res
                    acc[s, D + 1] += llb[r * S + s]
                    for j in range(D):
                        acc[s, 1 + j] += res * zi[j]
                r += 1
    total = np.zeros((S, D + 2))
    for c in range(n_chunks):
        total += partials[c]
    G = np.zeros((S, P))
    ll = np.empty(S)
    for s in range(S):
        if has_intercept:
            G[s, 0] = total[s, 0]
        for j in range(D):
            G[s, off + j] = total[s, 1 + j]
        ll[s] = total[s, D + 1]
    return G, ll


gaussian_loglik_grad = njit(parallel=True, **JIT_OPTIONS)(_gaussian_loglik_grad)
gaussian_loglik_grad_serial = njit(parallel=False, **JIT_OPTIONS)(_gaussian_loglik_grad)
bernoulli_loglik_grad = njit(parallel=True, **JIT_OPTIONS)(_bernoulli_loglik_grad)
bernoulli_loglik_grad_serial = njit(parallel=False, **JIT_OPTIONS)(_bernoulli_loglik_grad)
