"""LKJ correlation matrices of any dimension K through canonical partial correlations (CPCs).

A K x K correlation matrix R is parameterised by n_c = K (K - 1) / 2 unconstrained values c,
ordered as ``np.tril_indices(K, -1)`` (row-major lower triangle: (1,0), (2,0), (2,1), (3,0), ...).
Each c_ij is mapped to the CPC z_ij = tanh(c_ij), the partial correlation of terms i and j given
terms 0..j-1, and the lower Cholesky factor L of R = L L^T is built row by row (Stan's
``cholesky_corr`` transform):

    L[0,0] = 1;  for i >= 1:  L[i,j] = z_ij s_ij  (j < i),  L[i,i] = s_ii,
    s_ij = sqrt(1 - sum_{k<j} L[i,k]^2) = prod_{k<j} w_ik,  w_ik = sqrt(1 - z_ik^2) = sech(c_ik).

(Each row has unit norm, so diag R = 1; L[i,i] > 0 so R is positive definite.) For K = 2 this is
L = [[1, 0], [rho, sqrt(1 - rho^2)]], rho = tanh(c).

Prior: R ~ LKJ(eta), p(R) = C_K(eta) det(R)^(eta - 1). Under it the CPCs are independent
(Lewandowski, Kurowicka & Joe 2009, the vine method), z_ij ~ Beta(b_j, b_j) on (-1, 1) with

    b_j = eta + (K - 2 - j) / 2        (j the column: the size of the conditioning set),

since det R = prod_{i>j} (1 - z_ij^2) and |d vech(R) / dz| = prod_{i>j} (1 - z_ij^2)^((K-2-j)/2).
With dz/dc = 1 - z^2 the density of c is the product over the entries

    log p(c) = sum_{i>j} [ b_j log(1 - z_ij^2) + (1 - 2 b_j) log 2 - log B(b_j, b_j) ],
    d/dc_ij log p(c) = -2 b_j z_ij,

which is log LKJ(R | eta) + log |d vech(R) / dc| with the LKJ normaliser
C_K(eta) = prod_{i>j} 2^(1 - 2 b_j) / B(b_j, b_j) (LKJ 2009, theorem 5; Stan's lkj_corr_log).
For K = 2 (b_0 = eta, rho = tanh c) it is eta log(1 - rho^2) + (1 - 2 eta) log 2 - log B(eta, eta).

All functions are vectorised over S draws: c is (S, n_c), L is (S, K, K). They loop over the
n_c entries (K is small), never over draws.
"""

from __future__ import annotations

import math

import numpy as np

LOG_2 = math.log(2.0)


def n_corr(K: int) -> int:
    """The number of correlations (and of coordinates c) of a K x K correlation matrix."""
    return K * (K - 1) // 2


def _check(c: np.ndarray, K: int) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    if K < 1 or c.ndim != 2 or c.shape[1] != n_corr(K):
        raise ValueError(f"c must be (S, {max(n_corr(K), 0)}) for K = {K}, got shape {c.shape}")
    return c


def _sech(c: np.ndarray) -> np.ndarray:
    """w = sech(c) = sqrt(1 - tanh(c)^2), as 2 e^-|c| / (1 + e^-2|c|): no cancellation or
    overflow at large |c| (sqrt(1 - z^2) would round to 0 once tanh(c) rounds to 1)."""
    e = np.exp(-np.abs(c))
    return 2.0 * e / (1.0 + e * e)


def _log1m_tanh2(c: np.ndarray) -> np.ndarray:
    """log(1 - tanh(c)^2) = 2 log sech(c) = 2 (log 2 - |c| - log1p(e^-2|c|))."""
    a = np.abs(c)
    return 2.0 * (LOG_2 - a - np.log1p(np.exp(-2.0 * a)))


def cpc_shapes(K: int, eta: float) -> np.ndarray:
    """b (n_c,): the CPC z_ij (in c's order) is Beta(b, b) on (-1, 1) under LKJ(eta),
    b = eta + (K - 2 - j) / 2 with j the entry's column."""
    _, cols = np.tril_indices(K, -1)
    return eta + 0.5 * (K - 2 - cols)


def corr_cholesky(c: np.ndarray, K: int) -> np.ndarray:
    """L (S, K, K), the lower Cholesky factor of R = L L^T from c (S, n_c) (module doc):
    L[i,j] = z_ij prod_{k<j} w_ik for j < i, L[i,i] = prod_{k<i} w_ik, z = tanh c, w = sech c."""
    c = _check(c, K)
    z, w = np.tanh(c), _sech(c)
    L = np.zeros((c.shape[0], K, K))
    L[:, 0, 0] = 1.0
    p = 0
    for i in range(1, K):
        s = np.ones(c.shape[0])
        for j in range(i):
            L[:, i, j] = z[:, p] * s
            s = s * w[:, p]
            p += 1
        L[:, i, i] = s
    return L


def corr_cholesky_vjp(c: np.ndarray, K: int, gL: np.ndarray) -> np.ndarray:
    """gc = df/dc (S, n_c) from gL = df/dL (S, K, K), reading only its lower triangle with the
    diagonal: reverse mode through ``corr_cholesky``. Row i's forward pass is s_0 = 1,
    L[i,j] = z_j s_j, s_{j+1} = w_j s_j, L[i,i] = s_i; backwards from gs_i = gL[i,i], for
    j = i-1, ..., 0:

        gz_j = gL[i,j] s_j,   gw_j = gs_{j+1} s_j,   gs_j = gs_{j+1} w_j + gL[i,j] z_j,
        gc_j = gz_j w_j^2 - gw_j z_j w_j          (dz/dc = w^2, dw/dc = -z w)."""
    c = _check(c, K)
    gL = np.asarray(gL, dtype=np.float64)
    if gL.shape != (c.shape[0], K, K):
        raise ValueError(f"gL must be {(c.shape[0], K, K)}, got shape {gL.shape}")
    z, w = np.tanh(c), _sech(c)
    gc = np.zeros_like(c)
    for i in range(1, K):
        p0 = i * (i - 1) // 2  # c's position of entry (i, 0)
        s = np.ones((c.shape[0], i + 1))  # s_0 .. s_i of row i
        for j in range(i):
            s[:, j + 1] = s[:, j] * w[:, p0 + j]
        gs = gL[:, i, i].copy()
        for j in range(i - 1, -1, -1):
            p = p0 + j
            g = gL[:, i, j]
            gz, gw = g * s[:, j], gs * s[:, j]
            gs = gs * w[:, p] + g * z[:, p]
            gc[:, p] = gz * w[:, p] ** 2 - gw * z[:, p] * w[:, p]
    return gc


def lkj_log_density(c: np.ndarray, K: int, eta: float) -> tuple[np.ndarray, np.ndarray]:
    """(lp (S,), grad (S, n_c)): the log density of c when R = L L^T ~ LKJ(eta), i.e.
    log LKJ(R | eta) + log |d vech(R) / dc|, normalised (module doc):

        lp = sum_{i>j} [ b_j log(1 - z_ij^2) + (1 - 2 b_j) log 2 - log B(b_j, b_j) ],
        d lp / dc_ij = -2 b_j z_ij,        z = tanh c,  b_j = eta + (K - 2 - j) / 2."""
    c = _check(c, K)
    if not eta > 0:
        raise ValueError(f"the LKJ shape eta must be positive, got {eta}")
    b = cpc_shapes(K, eta)
    log_norm = np.array([(1.0 - 2.0 * v) * LOG_2 - (2.0 * math.lgamma(v) - math.lgamma(2.0 * v))
                         for v in b])
    lp = (b * _log1m_tanh2(c) + log_norm).sum(axis=1)
    return lp, -2.0 * b * np.tanh(c)


def corr_of(L: np.ndarray) -> np.ndarray:
    """The correlations R[i, j] (S, n_c) of R = L L^T for i < j in ``np.triu_indices(K, 1)``
    order ((0,1), (0,2), ..., (1,2), ...), for reporting: R[i, j] = sum_k L[i,k] L[j,k]."""
    L = np.asarray(L, dtype=np.float64)
    rows, cols = np.triu_indices(L.shape[-1], 1)
    return np.einsum("snk,snk->sn", L[:, rows, :], L[:, cols, :])
