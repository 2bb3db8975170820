"""Data kernels: per-draw log-likelihood sums and gradients in one pass over the rows.

The kernel contract (docs/derivations.md): given the design Z (N x D, C-contiguous), the response
y (N,), and S draws of the unconstrained parameters U (S x P), laid out as
``[a (if intercept), b_1 .. b_D, t (gaussian only)]``, return

    G[s, :]  = d/dU[s] sum_i l(y_i, eta_is, t_s)      (S x P)
    ll[s]    = sum_i l(y_i, eta_is, t_s)                (S,)

with eta_is = a_s + z_i . b_s. With ``with_grad`` false the gradient sums over Z are skipped (G is
then incomplete and must be ignored): the log joint at many draws, for the diagnostics, needs no
gradient, and skipping it halves the arithmetic.

Each row of Z is read from memory once for all S draws. Rows are split into chunks of a size fixed
by the data shape; ``prange`` runs over chunks, each chunk writes only its own slice of the
partials arrays, and the partials are summed in chunk order after the loop, so the result is
bit-identical at any thread count.

Within a chunk, rows go in blocks (``block_rows_for``), in three steps while the block is in L1:

1. ``linear_predictors``: eta (rows x draws) = a + Z_block B^T, register-blocked four rows by four
   draws with four or more draws (each load of z serves four draws, each load of b four rows),
   each whole group of eight draws through ``simd.eta_4rows_8draws`` (draws in vector lanes).
2. the likelihood's elementwise work on the rows x draws buffer (residuals; for the logistic
   model the sigmoid and softplus) and the block's per-draw sums: for whole groups of eight draws
   ``simd.bernoulli_rows_8draws`` and its Gaussian and no-gradient versions (vector exp and log1p
   of ``simd``), otherwise one flat, branch-free loop that LLVM vectorises (``elementary``).
3. ``accumulate_gradient``: G (draws x D) += Q_block^T Z_block, blocked the same way; groups of
   eight draws through ``simd.grad_4rows_8draws`` into a transposed D x 8 accumulator.

With fewer than four draws a step is bound by memory bandwidth, so rows are taken one at a time
in blocks of about FEW_DRAWS_BLOCK_BYTES (small enough that the gradient step re-reads the block
from L1 while the next rows stream in); with two draws both share each pass over a row. With
four or more draws a block's arithmetic outlasts the hardware prefetcher, so the kernels hint the
next block's lines (``prefetch_next_block``). The measurements behind each of these choices, and
what was tried and not kept, are in docs/performance.md ("The data kernel's structure").

Each kernel is compiled twice from the same source: ``parallel=True`` and a serial build for data
too small to pay for waking the thread pool (a 434-row fit took 8 s instead of 0.3 s when another
process held the cores, because every step waited on the pool). ``flags.use_parallel`` chooses
between them from the data shape alone, never from the thread count. The serial build is a
renamed copy (``_renamed``), so that the two are cached apart.
"""

import math
from types import FunctionType

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from vireg.kernels.elementary import exp_nonpositive, log1p_unit
from vireg.kernels.flags import JIT_OPTIONS
from vireg.kernels.prefetch import prefetch
from vireg.kernels.simd import (
    bernoulli_ll_rows_8draws,
    bernoulli_rows_8draws,
    eta_4rows_8draws,
    gaussian_rows_8draws,
    grad_4rows_8draws,
)

BLOCK_ROWS = 32
# Register blocking pays off from four draws per row on (S = 8, 100,000 x 50: see module doc).
ROW_BLOCK_MIN_DRAWS = 4
# Below that, the step is bound by memory, and blocks of about FEW_DRAWS_BLOCK_BYTES (8 rows at
# D = 100) leave more of L1 to the rows streaming in (module doc).
FEW_DRAWS_BLOCK_BYTES = 6400

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@njit(**JIT_OPTIONS)
def _split_draws(U, has_intercept, D):
    """Per-draw intercepts a (S,) (zeros without an intercept) and coefficients B (S, D), both
    contiguous, so the inner loops carry no branch on the model's layout; and Bt (S // 8, D, 8),
    the coefficients of each whole group of eight draws transposed, for ``eta_4rows_8draws``."""
    S = U.shape[0]
    off = 1 if has_intercept else 0
    a = np.zeros(S)
    B = np.empty((S, D))
    for s in range(S):
        if has_intercept:
            a[s] = U[s, 0]
        for j in range(D):
            B[s, j] = U[s, off + j]
    Bt = np.empty((S // 8, D, 8))
    for g in range(S // 8):
        for j in range(D):
            for t in range(8):
                Bt[g, j, t] = B[8 * g + t, j]
    return a, B, Bt


@njit(inline="always", **JIT_OPTIONS)
def block_rows_for(Z, S):
    """Rows per block for S draws: BLOCK_ROWS for the register-blocked loops, else about
    FEW_DRAWS_BLOCK_BYTES of rows (8 to BLOCK_ROWS rows)."""
    if S >= ROW_BLOCK_MIN_DRAWS:
        return BLOCK_ROWS
    row_bytes = max(Z.shape[1] * Z.itemsize, 1)
    return min(max(FEW_DRAWS_BLOCK_BYTES // row_bytes, 8), BLOCK_ROWS)


@njit(inline="always", **JIT_OPTIONS)
def prefetch_next_block(Z, b0, block, S):
    """With S >= ROW_BLOCK_MIN_DRAWS, a prefetch hint for each cache line of the block after the
    one at b0 (module doc). With fewer draws the step is bound by bandwidth and the hints
    measured slower (1,000,000 x 100, S = 1: 27.0 -> 30.3 ms)."""
    if S < ROW_BLOCK_MIN_DRAWS:
        return
    line = max(64 // Z.itemsize, 1)
    for i in range(b0 + block, min(b0 + 2 * block, Z.shape[0])):
        zi = Z[i]
        for j in range(0, zi.shape[0], line):
            prefetch(zi, j)


def block_rows(Z, b0, nb, wide):
    """(rows, first): rows[first + r] is row b0 + r of Z for r < nb, in the form the products
    read: float32 rows widened into ``wide`` (at least nb x D float64) once per block, eight at a
    time, instead of element by element in every product that reads them; Z itself when it is
    float64 or ``wide`` is None.

    Widened rows measured faster with four or more draws, where the products are bound by
    arithmetic (100,000 x 50, S = 8: 3.57 -> 3.10 ms), and 2.5x slower with one draw (1,000,000 x
    100, a memory-bound pass), so the kernels pass None below ROW_BLOCK_MIN_DRAWS."""


@overload(block_rows, jit_options=JIT_OPTIONS)
def _block_rows(Z, b0, nb, wide):
    if Z.dtype == types.float64 or isinstance(wide, types.NoneType):
        return lambda Z, b0, nb, wide: (Z, b0)

    def widen(Z, b0, nb, wide):
        for r in range(nb):
            zr = Z[b0 + r]
            out = wide[r]
            for j in range(zr.shape[0]):
                out[j] = zr[j]
        return wide, 0

    return widen


def widening_marker(Z):
    """What a kernel passes to its chunks to have float32 rows widened (``block_rows``): an empty
    float64 array when Z is float32, None when it is float64, so that a float64 kernel compiles
    its chunk function once."""


@overload(widening_marker, jit_options=JIT_OPTIONS)
def _widening_marker(Z):
    if Z.dtype == types.float64:
        return lambda Z: None
    return lambda Z: np.empty((0, 0))


def widening_rows(marker, rows, D):
    """Room for ``rows`` widened rows (rows x D float64) when marker is an array, else None."""


@overload(widening_rows, jit_options=JIT_OPTIONS)
def _widening_rows(marker, rows, D):
    if isinstance(marker, types.NoneType):
        return lambda marker, rows, D: None
    return lambda marker, rows, D: np.empty((rows, D))


@njit(**JIT_OPTIONS)
def _reduce_chunks(grad_part, sum_part):
    """Sums of the per-chunk partials in chunk order (the same order at any thread count).

    Plain loops, in a serial function: written as ``total += grad_part[c]`` inside a
    ``parallel=True`` kernel each addition became a parallel region of its own, which cost
    6-8 ms per step at 3,000 chunks (1,000,000 x 100, S = 1).
    """
    n_chunks, S, D = grad_part.shape
    G = np.zeros((S, D))
    sums = np.zeros((sum_part.shape[1], S))
    for c in range(n_chunks):
        for s in range(S):
            for j in range(D):
                G[s, j] += grad_part[c, s, j]
            for m in range(sum_part.shape[1]):
                sums[m, s] += sum_part[c, m, s]
    return G, sums


@njit(inline="always", **JIT_OPTIONS)
def _eta_4rows(Z, i, bs, a_s, eta, k, S):
    """eta[k + m S] = a_s + z_(i+m) . b_s for m = 0..3: each b_sj load serves four rows."""
    z0, z1, z2, z3 = Z[i], Z[i + 1], Z[i + 2], Z[i + 3]
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
    eta[k] = l0
    eta[k + S] = l1
    eta[k + 2 * S] = l2
    eta[k + 3 * S] = l3


@njit(inline="always", **JIT_OPTIONS)
def _eta_4rows_4draws(Z, i, B, a, s, eta, k, S):
    """eta[k + m S + t] = a_(s+t) + z_(i+m) . b_(s+t) for rows m = 0..3 and draws t = 0..3:
    16 running sums, each z load serving four draws and each b load four rows."""
    z0, z1, z2, z3 = Z[i], Z[i + 1], Z[i + 2], Z[i + 3]
    b0, b1, b2, b3 = B[s], B[s + 1], B[s + 2], B[s + 3]
    l00 = a[s]
    l10 = l00
    l20 = l00
    l30 = l00
    l01 = a[s + 1]
    l11 = l01
    l21 = l01
    l31 = l01
    l02 = a[s + 2]
    l12 = l02
    l22 = l02
    l32 = l02
    l03 = a[s + 3]
    l13 = l03
    l23 = l03
    l33 = l03
    for j in range(b0.shape[0]):
        x0 = z0[j]
        x1 = z1[j]
        x2 = z2[j]
        x3 = z3[j]
        c = b0[j]
        l00 += x0 * c
        l10 += x1 * c
        l20 += x2 * c
        l30 += x3 * c
        c = b1[j]
        l01 += x0 * c
        l11 += x1 * c
        l21 += x2 * c
        l31 += x3 * c
        c = b2[j]
        l02 += x0 * c
        l12 += x1 * c
        l22 += x2 * c
        l32 += x3 * c
        c = b3[j]
        l03 += x0 * c
        l13 += x1 * c
        l23 += x2 * c
        l33 += x3 * c
    eta[k] = l00
    eta[k + 1] = l01
    eta[k + 2] = l02
    eta[k + 3] = l03
    k += S
    eta[k] = l10
    eta[k + 1] = l11
    eta[k + 2] = l12
    eta[k + 3] = l13
    k += S
    eta[k] = l20
    eta[k + 1] = l21
    eta[k + 2] = l22
    eta[k + 3] = l23
    k += S
    eta[k] = l30
    eta[k + 1] = l31
    eta[k + 2] = l32
    eta[k + 3] = l33


@njit(**JIT_OPTIONS)
def linear_predictors(Z, b0, nb, B, Bt, a, eta):
    """eta[r S + s] = a_s + z_(b0+r) . b_s for the nb rows of a block and all S draws
    (register-blocked four rows by eight draws (``simd.eta_4rows_8draws``), then four rows by
    four draws, when S >= ROW_BLOCK_MIN_DRAWS; one row and both draws at a time when S = 2)."""
    S = B.shape[0]
    r = 0
    if S >= ROW_BLOCK_MIN_DRAWS:
        while r + 4 <= nb:
            s = 0
            while s + 8 <= S:
                eta_4rows_8draws(Z, b0 + r, Bt, s // 8, a, s, eta, r * S + s, S)
                s += 8
            while s + 4 <= S:
                _eta_4rows_4draws(Z, b0 + r, B, a, s, eta, r * S + s, S)
                s += 4
            while s < S:
                _eta_4rows(Z, b0 + r, B[s], a[s], eta, r * S + s, S)
                s += 1
            r += 4
    if S == 2:
        # Both draws in one pass over the row: each load (and, for float32 rows, conversion) of
        # z serves two draws (module doc).
        u = B[0]
        v = B[1]
        while r < nb:
            zi = Z[b0 + r]
            lu = a[0]
            lv = a[1]
            for j in range(u.shape[0]):
                x = zi[j]
                lu += x * u[j]
                lv += x * v[j]
            eta[2 * r] = lu
            eta[2 * r + 1] = lv
            r += 1
    while r < nb:
        zi = Z[b0 + r]
        for s in range(S):
            bs = B[s]
            lin = a[s]
            for j in range(bs.shape[0]):
                lin += zi[j] * bs[j]
            eta[r * S + s] = lin
        r += 1


@njit(inline="always", **JIT_OPTIONS)
def _grad_4rows_4draws(z0, z1, z2, z3, q, k, S, g0, g1, g2, g3):
    """g_t += sum_m q[k + m S + t] z_m for draws t = 0..3 and rows m = 0..3: each z load
    serves four draws and each load and store of g four rows."""
    p0 = q[k]
    p1 = q[k + S]
    p2 = q[k + 2 * S]
    p3 = q[k + 3 * S]
    u0 = q[k + 1]
    u1 = q[k + 1 + S]
    u2 = q[k + 1 + 2 * S]
    u3 = q[k + 1 + 3 * S]
    v0 = q[k + 2]
    v1 = q[k + 2 + S]
    v2 = q[k + 2 + 2 * S]
    v3 = q[k + 2 + 3 * S]
    w0 = q[k + 3]
    w1 = q[k + 3 + S]
    w2 = q[k + 3 + 2 * S]
    w3 = q[k + 3 + 3 * S]
    for j in range(g0.shape[0]):
        x0 = z0[j]
        x1 = z1[j]
        x2 = z2[j]
        x3 = z3[j]
        g0[j] = g0[j] + p0 * x0 + p1 * x1 + p2 * x2 + p3 * x3
        g1[j] = g1[j] + u0 * x0 + u1 * x1 + u2 * x2 + u3 * x3
        g2[j] = g2[j] + v0 * x0 + v1 * x1 + v2 * x2 + v3 * x3
        g3[j] = g3[j] + w0 * x0 + w1 * x1 + w2 * x2 + w3 * x3


@njit(**JIT_OPTIONS)
def accumulate_gradient(Z, b0, nb, q, G, Gt):
    """G[s, j] += sum_r q[r S + s] z_(b0+r)j over the nb rows of a block, for all S draws
    (blocked four rows by four draws when S >= ROW_BLOCK_MIN_DRAWS, else two rows at a time, and
    both draws at once when S = 2).
    With S >= 8, four rows at a time of each whole group of eight draws go to Gt (groups, D, 8)
    instead (``simd.grad_4rows_8draws``); the caller adds Gt into G (``add_transposed``)."""
    S = G.shape[0]
    r = 0
    if S >= ROW_BLOCK_MIN_DRAWS:
        while r + 4 <= nb:
            i = b0 + r
            z0, z1, z2, z3 = Z[i], Z[i + 1], Z[i + 2], Z[i + 3]
            s = 0
            while s + 8 <= S:
                grad_4rows_8draws(Z, i, q, r * S + s, S, Gt, s // 8)
                s += 8
            while s + 4 <= S:
                _grad_4rows_4draws(z0, z1, z2, z3, q, r * S + s, S, G[s], G[s + 1], G[s + 2],
                                   G[s + 3])
                s += 4
            while s < S:
                k = r * S + s
                p0 = q[k]
                p1 = q[k + S]
                p2 = q[k + 2 * S]
                p3 = q[k + 3 * S]
                g = G[s]
                for j in range(g.shape[0]):
                    g[j] = g[j] + p0 * z0[j] + p1 * z1[j] + p2 * z2[j] + p3 * z3[j]
                s += 1
            r += 4
    # Rows in pairs (each load and store of a gradient sum serves two rows): float32 1,000,000 x
    # 100, S = 1: 16.1 -> 14.1 ms; float64 25.3 -> 25.1 ms (bound by the read of X).
    if S == 2:  # each load of z0, z1 serves both draws, as in ``linear_predictors``
        g = G[0]
        h = G[1]
        while r + 2 <= nb:
            z0 = Z[b0 + r]
            z1 = Z[b0 + r + 1]
            p0 = q[2 * r]
            u0 = q[2 * r + 1]
            p1 = q[2 * r + 2]
            u1 = q[2 * r + 3]
            for j in range(g.shape[0]):
                x0 = z0[j]
                x1 = z1[j]
                g[j] = g[j] + p0 * x0 + p1 * x1
                h[j] = h[j] + u0 * x0 + u1 * x1
            r += 2
    while r + 2 <= nb:
        z0 = Z[b0 + r]
        z1 = Z[b0 + r + 1]
        for s in range(S):
            p0 = q[r * S + s]
            p1 = q[r * S + S + s]
            g = G[s]
            for j in range(g.shape[0]):
                g[j] = g[j] + p0 * z0[j] + p1 * z1[j]
        r += 2
    while r < nb:
        zi = Z[b0 + r]
        for s in range(S):
            p = q[r * S + s]
            g = G[s]
            for j in range(g.shape[0]):
                g[j] += p * zi[j]
        r += 1


@njit(inline="always", **JIT_OPTIONS)
def add_transposed(G, Gt):
    """G[8 g + t, j] += Gt[g, j, t]: the eight-draw groups' gradient sums into G."""
    for g in range(Gt.shape[0]):
        for j in range(Gt.shape[1]):
            for t in range(8):
                G[8 * g + t, j] += Gt[g, j, t]


@njit(**JIT_OPTIONS)
def _gaussian_chunk(Z, y, a, B, Bt, start, stop, with_grad, G, Gt, sums, widen):
    """Adds rows start .. stop - 1 to G (sum e z) and sums ([sum e, sum e^2]); widen is
    ``widening_marker(Z)`` or None.

    A function of its own, called from the ``prange`` loop instead of written inside it, so that
    the parallel and the serial build share one compiled body (a serial build then compiles in
    about 1.3 s). The same speed either way on one thread (100,000 x 50, S = 8: 11.6 ms for the
    parallel build, 12.6 ms for the serial one, one run each).
    """
    S = B.shape[0]
    block = block_rows_for(Z, S)
    e = np.empty(block * S)  # eta, then e, for one block (``_bernoulli_chunk``)
    wide = widening_rows(widen, block, Z.shape[1])
    for b0 in range(start, stop, block):
        nb = min(stop, b0 + block) - b0
        rows, first = block_rows(Z, b0, nb, wide)
        linear_predictors(rows, first, nb, B, Bt, a, e)
        prefetch_next_block(Z, b0, block, S)
        if S % 8 == 0:
            for s in range(0, S, 8):
                gaussian_rows_8draws(e, y, b0, nb, S, s, sums)
            if with_grad:
                accumulate_gradient(rows, first, nb, e, G, Gt)
            continue
        for r in range(nb):
            yr = y[b0 + r]
            for s in range(S):
                e[r * S + s] = yr - e[r * S + s]
        for s in range(S):
            s1 = 0.0
            s2 = 0.0
            for r in range(nb):
                er = e[r * S + s]
                s1 += er
                s2 += er * er
            sums[0, s] += s1
            sums[1, s] += s2
        if with_grad:
            accumulate_gradient(rows, first, nb, e, G, Gt)
    if with_grad:
        add_transposed(G, Gt)


def _gaussian_loglik_grad(Z, y, U, has_intercept, chunk_rows, with_grad):
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
    grad_part = np.zeros((n_chunks, S, D if with_grad else 0))  # sum_i e_is z_ij over chunk c
    group_part = np.zeros((n_chunks, S // 8, D if with_grad else 0, 8))  # the same, groups of 8
    sum_part = np.zeros((n_chunks, 2, S))  # [sum_i e_is, sum_i e_is^2] over chunk c
    widen = Z.itemsize < 8 and S >= ROW_BLOCK_MIN_DRAWS  # float32 rows (``block_rows``)
    marker = widening_marker(Z)
    a, B, Bt = _split_draws(U, has_intercept, D)
    for c in prange(n_chunks):
        start = c * chunk_rows
        stop = min(N, start + chunk_rows)
        if widen:
            _gaussian_chunk(Z, y, a, B, Bt, start, stop, with_grad, grad_part[c], group_part[c],
                            sum_part[c], marker)
        else:
            _gaussian_chunk(Z, y, a, B, Bt, start, stop, with_grad, grad_part[c], group_part[c],
                            sum_part[c], None)
    G_sum, sums = _reduce_chunks(grad_part, sum_part)
    G = np.zeros((S, P))
    ll = np.empty(S)
    for s in range(S):
        t = U[s, P - 1]
        w = math.exp(-2.0 * t)
        if has_intercept:
            G[s, 0] = w * sums[0, s]
        for j in range(G_sum.shape[1]):  # 0 without the gradient
            G[s, off + j] = w * G_sum[s, j]
        G[s, P - 1] = -N + w * sums[1, s]
        ll[s] = -N * (HALF_LOG_2PI + t) - 0.5 * w * sums[1, s]
    return G, ll


@njit(**JIT_OPTIONS)
def _bernoulli_chunk(Z, y, a, B, Bt, start, stop, with_grad, G, Gt, sums, widen):
    """Adds rows start .. stop - 1 to G (sum r z) and sums ([sum r, ll]); widen as in
    ``_gaussian_chunk``. Its own function for the reason given there.
    """
    S = B.shape[0]
    block = block_rows_for(Z, S)
    # Scratch for one block, allocated here rather than per chunk in the kernel, where it took
    # 75 MB at 1,000,000 x 100 and 32 draws, fresh pages at every call: the 32-draw pass without
    # gradient 124 -> 113 ms.
    work = np.empty((3, block * S))
    q = work[0]  # eta, then r
    yb = work[1]
    llb = work[2]
    wide = widening_rows(widen, block, Z.shape[1])
    for b0 in range(start, stop, block):
        nb = min(stop, b0 + block) - b0
        rows, first = block_rows(Z, b0, nb, wide)
        linear_predictors(rows, first, nb, B, Bt, a, q)
        prefetch_next_block(Z, b0, block, S)
        if S % 8 == 0:
            for s in range(0, S, 8):
                if with_grad:
                    bernoulli_rows_8draws(q, y, b0, nb, S, s, sums)
                else:
                    bernoulli_ll_rows_8draws(q, y, b0, nb, S, s, sums)
            if with_grad:
                accumulate_gradient(rows, first, nb, q, G, Gt)
            continue
        for r in range(nb):
            for s in range(S):
                yb[r * S + s] = y[b0 + r]
        # One flat loop over rows x draws, so that it vectorises whatever S is; without the
        # gradient, the log-likelihood terms alone (no sigmoid, no residual sums).
        if with_grad:
            for k in range(nb * S):
                lin = q[k]
                e = exp_nonpositive(-abs(lin))
                inv = 1.0 / (1.0 + e)
                sig = inv if lin >= 0.0 else e * inv
                llb[k] = yb[k] * lin - (max(lin, 0.0) + log1p_unit(e))
                q[k] = yb[k] - sig
        else:
            for k in range(nb * S):
                lin = q[k]
                llb[k] = yb[k] * lin - (max(lin, 0.0) + log1p_unit(exp_nonpositive(-abs(lin))))
        for s in range(S):
            s1 = 0.0
            s2 = 0.0
            for r in range(nb):
                s1 += q[r * S + s]
                s2 += llb[r * S + s]
            sums[0, s] += s1 if with_grad else 0.0
            sums[1, s] += s2
        if with_grad:
            accumulate_gradient(rows, first, nb, q, G, Gt)
    if with_grad:
        add_transposed(G, Gt)


def _bernoulli_loglik_grad(Z, y, U, has_intercept, chunk_rows, with_grad):
    """Bernoulli-logit likelihood y_i ~ Bernoulli(sigmoid(eta_i)), for each draw s:

        ll_s      = sum_i y_i eta_is - softplus(eta_is)
        r_is      = y_i - sigmoid(eta_is)
        dll/da_s  = sum_i r_is,     dll/db_sj = sum_i r_is z_ij

    Stable forms with e = exp(-|eta|) <= 1, which never overflows:
        softplus(eta) = max(eta, 0) + log1p(e)
        sigmoid(eta)  = 1 / (1 + e) if eta >= 0 else e / (1 + e)

    The transcendental step is one flat loop over the contiguous rows x draws buffer of a block,
    branch-free, so that LLVM vectorises it (``elementary`` supplies exp and log1p without libm
    calls).
    """
    N, D = Z.shape
    S, P = U.shape
    off = 1 if has_intercept else 0
    n_chunks = (N + chunk_rows - 1) // chunk_rows
    # sum_i r_is z_ij over chunk c (nothing without the gradient: 200 MB of zeros per call at
    # 10,000,000 x 50 and 32 draws)
    grad_part = np.zeros((n_chunks, S, D if with_grad else 0))
    group_part = np.zeros((n_chunks, S // 8, D if with_grad else 0, 8))  # the same, groups of 8
    sum_part = np.zeros((n_chunks, 2, S))  # [sum_i r_is, ll_s] over chunk c
    widen = Z.itemsize < 8 and S >= ROW_BLOCK_MIN_DRAWS  # float32 rows (``block_rows``)
    marker = widening_marker(Z)
    a, B, Bt = _split_draws(U, has_intercept, D)
    for c in prange(n_chunks):
        start = c * chunk_rows
        stop = min(N, start + chunk_rows)
        if widen:
            _bernoulli_chunk(Z, y, a, B, Bt, start, stop, with_grad, grad_part[c], group_part[c],
                             sum_part[c], marker)
        else:
            _bernoulli_chunk(Z, y, a, B, Bt, start, stop, with_grad, grad_part[c], group_part[c],
                             sum_part[c], None)
    G_sum, sums = _reduce_chunks(grad_part, sum_part)
    G = np.zeros((S, P))
    ll = np.empty(S)
    for s in range(S):
        if has_intercept:
            G[s, 0] = sums[0, s]
        for j in range(G_sum.shape[1]):  # 0 without the gradient
            G[s, off + j] = G_sum[s, j]
        ll[s] = sums[1, s]
    return G, ll


def _renamed(fn, suffix: str):
    """A copy of ``fn`` under another name, for its second build.

    Numba names a function's cache files after its qualified name, and the cache's index key holds
    the signature and the CPU but not the compiler flags, so a ``parallel=True`` and a serial
    build of one function overwrite and load each other: whichever was compiled first served
    both (found when the "serial" kernel ran on two threads and the "parallel" one on one).
    """
    copy = FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__,
                        fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + suffix
    copy.__doc__ = fn.__doc__
    return copy


gaussian_loglik_grad = njit(parallel=True, **JIT_OPTIONS)(_gaussian_loglik_grad)
gaussian_loglik_grad_serial = njit(parallel=False, **JIT_OPTIONS)(
    _renamed(_gaussian_loglik_grad, "_serial"))
bernoulli_loglik_grad = njit(parallel=True, **JIT_OPTIONS)(_bernoulli_loglik_grad)
bernoulli_loglik_grad_serial = njit(parallel=False, **JIT_OPTIONS)(
    _renamed(_bernoulli_loglik_grad, "_serial"))
