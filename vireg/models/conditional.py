"""Group effects standardised by their conditional posterior at the current population.

For one factor with population covariance Psi = diag(tau) R diag(tau) and, fixed from the
start, each group's data information H_g (K x K, positive semi-definite) and linear term r_g
(the likelihood's quadratic model around the start, ``grouped_start``), the fitted
coordinates x_g map to the effects by

    P_g = Psi^-1 + H_g = L_g L_g^T (Cholesky),    b_g = L_g^-T (L_g^-1 r_g + x_g)
                                                      = P_g^-1 r_g + L_g^-T x_g,

so x_g ~ N(0, I) is b_g's conditional posterior given tau and R for a gaussian likelihood at
any tau and R (and its Laplace approximation otherwise): the funnel of tau against b, whose
shape changes with tau, is straightened at every tau, not at the one a fixed partial centring
was set for. The map's log Jacobian is log |det db/dx| = -sum_k log L_g,kk.

Reverse mode, for one group, from bbar = dl/db + d log N(b; 0, Psi)/db = dl/db - Psi^-1 b:

    d/dx_g   = L_g^-1 bbar
    Lbar_g   = -tril(b_g (d/dx_g)^T + (P_g^-1 bbar) w_g^T) - diag(1 / L_g,kk),  w_g = L_g^-1 r_g
    Pbar_g   = sym(L_g^-T Phi(L_g^T Lbar_g) L_g^-1)     (Phi: lower triangle, halved diagonal)
    Psibar   = sum_g (-Psi^-1 Pbar_g Psi^-1) - G Psi^-1 / 2 + Psi^-1 (sum_g b_g b_g^T) Psi^-1 / 2
    d/dlog tau_k = 2 sum_j (Psibar * Psi)_kj,     d/dL_R = 2 diag(tau) Psibar diag(tau) L_R

(the last two through Psi = diag(tau) L_R L_R^T diag(tau)); d/dc follows from d/dL_R through
``lkj.corr_cholesky_vjp``. The prior N(b; 0, Psi) and the Jacobian are in ``log_density``.
"""

from __future__ import annotations

import math

import numpy as np

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def population(log_tau: np.ndarray, L_R: np.ndarray | None):
    """(Psi, Psi^-1) of each draw (S, K, K) from log tau (S, K) and L_R (S, K, K) or None."""
    tau = np.exp(log_tau)
    K = log_tau.shape[1]
    if L_R is None:
        eye = np.eye(K)
        return tau[:, :, None] * eye * tau[:, None, :], eye / (tau[:, :, None] * tau[:, None, :])
    R = np.matmul(L_R, np.swapaxes(L_R, 1, 2))
    R_inv = np.linalg.inv(R)
    return tau[:, :, None] * R * tau[:, None, :], R_inv / (tau[:, :, None] * tau[:, None, :])


def cholesky(P: np.ndarray) -> np.ndarray:
    """The lower Cholesky factor of every K x K matrix of the stack P (..., K, K), by columns,
    each step vectorised over the stack (NumPy's batched routine costs microseconds per matrix,
    which at 64 draws x 10,000 groups is seconds; this loops over K only); NaN where a matrix
    is not positive definite."""
    K = P.shape[-1]
    L = np.zeros_like(P)
    for j in range(K):
        d = P[..., j, j] - np.sum(L[..., j, :j] ** 2, axis=-1)
        L[..., j, j] = np.sqrt(np.where(d > 0, d, np.nan))  # NaN: not positive definite
        for i in range(j + 1, K):
            L[..., i, j] = (P[..., i, j] - np.sum(L[..., i, :j] * L[..., j, :j], axis=-1)
                            ) / L[..., j, j]
    return L


def lower_inverse(L: np.ndarray) -> np.ndarray:
    """The inverse of every lower-triangular K x K matrix of the stack L, by forward
    substitution vectorised over the stack."""
    K = L.shape[-1]
    out = np.zeros_like(L)
    for i in range(K):
        out[..., i, i] = 1.0 / L[..., i, i]
        for j in range(i):
            out[..., i, j] = -np.sum(L[..., i, j:i] * out[..., j:i, j], axis=-1) / L[..., i, i]
    return out


def _apply(A: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A v for stacks of matrices A (..., K, K) and vectors v (..., K) (broadcast), by K^2
    multiply-adds over the stack (matmul and einsum cost microseconds per small matrix)."""
    K = A.shape[-1]
    out = np.empty(np.broadcast_shapes(A.shape[:-1], v.shape))
    for k in range(K):
        out[..., k] = A[..., k, 0] * v[..., 0]
        for j in range(1, K):
            out[..., k] += A[..., k, j] * v[..., j]
    return out


def _mm(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A B for stacks of K x K matrices, by K^3 multiply-adds over the stack."""
    K = A.shape[-1]
    out = np.empty(np.broadcast_shapes(A.shape, B.shape))
    for i in range(K):
        for j in range(K):
            out[..., i, j] = A[..., i, 0] * B[..., 0, j]
            for k in range(1, K):
                out[..., i, j] += A[..., i, k] * B[..., k, j]
    return out


class ConditionalMap:
    """The map of a factor's draws x (S, G, K) to their effects b at the population of each
    draw (module doc), with what its reverse mode needs."""

    def __init__(self, log_tau, L_R, x, H, r):
        self.Psi, self.Psi_inv = population(log_tau, L_R)
        P = self.Psi_inv[:, None] + H[None]  # (S, G, K, K)
        self.L = cholesky(P)
        self.L_inv = lower_inverse(self.L)
        self.w = _apply(self.L_inv, r[None])  # L^-1 r
        self.b = _apply(np.swapaxes(self.L_inv, 2, 3), self.w + x)  # L^-T (w + x)

    def log_density(self) -> np.ndarray:
        """log N(b; 0, Psi) summed over the groups plus the map's log Jacobian, per draw."""
        S, G, K = self.b.shape
        _, log_det = np.linalg.slogdet(self.Psi)
        quad = np.sum(np.matmul(self.b, self.Psi_inv) * self.b, axis=(1, 2))
        log_jac = -np.log(np.diagonal(self.L, 0, 2, 3)).sum(axis=(1, 2))
        return -0.5 * G * log_det - 0.5 * quad - G * K * HALF_LOG_2PI + log_jac

    def gradients(self, dS: np.ndarray):
        """(d/dx (S, G, K), Psibar (S, K, K)) of ``log_density`` plus the log likelihood whose
        gradient in b is dS (module doc)."""
        b, L, L_inv = self.b, self.L, self.L_inv
        S, G, K = b.shape
        bbar = dS - np.matmul(b, self.Psi_inv)  # (Psi^-1 is symmetric)
        g_x = _apply(L_inv, bbar)  # L^-1 bbar
        p_bbar = _apply(np.swapaxes(L_inv, 2, 3), g_x)  # P^-1 bbar = L^-T L^-1 bbar
        L_bar = -np.tril(b[..., :, None] * g_x[..., None, :]
                         + p_bbar[..., :, None] * self.w[..., None, :])
        idx = np.arange(K)
        L_bar[..., idx, idx] -= 1.0 / L[..., idx, idx]
        inner = np.tril(_mm(np.swapaxes(L, 2, 3), L_bar))
        inner[..., idx, idx] *= 0.5
        A = _mm(np.swapaxes(L_inv, 2, 3), _mm(inner, L_inv))
        P_bar = 0.5 * (A + np.swapaxes(A, 2, 3))
        Pi = self.Psi_inv
        outer = np.matmul(np.swapaxes(b, 1, 2), b)
        Psi_bar = (-np.matmul(Pi, np.matmul(P_bar.sum(axis=1), Pi)) - 0.5 * G * Pi
                   + 0.5 * np.matmul(Pi, np.matmul(outer, Pi)))
        return g_x, Psi_bar

    def population_gradients(self, Psi_bar, log_tau, L_R):
        """(d/dlog tau (S, K), d/dL_R (S, K, K) or None) from Psibar (module doc)."""
        g_log_tau = 2.0 * np.sum(Psi_bar * self.Psi, axis=2)
        if L_R is None:
            return g_log_tau, None
        tau = np.exp(log_tau)
        R_bar = tau[:, :, None] * Psi_bar * tau[:, None, :]
        return g_log_tau, np.tril(2.0 * np.matmul(R_bar, L_R))


def coordinates(b: np.ndarray, log_tau, L_R, H, r) -> np.ndarray:
    """x (S, G, K) whose map (``ConditionalMap``) gives the effects b at each draw's population:
    x = L^T b - L^-1 r."""
    m = ConditionalMap(log_tau, L_R, np.zeros_like(b), H, r)
    return _apply(np.swapaxes(m.L, 2, 3), b) - m.w
