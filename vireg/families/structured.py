"""Structured Gaussian: q(u) = N(o + W m, W L L^T W^T) with an arrowhead Cholesky factor.

The coordinates u (length P = Pg + G K) are Pg "global" coordinates followed by G groups of K
coordinates each, group-major (group g is u[Pg + g K : Pg + (g + 1) K]). L is lower-triangular
with the pattern

    L = [[L_G,  0                    ],
         [L_B,  blockdiag(L_D1..L_DG)]]

L_G (Pg x Pg) and every L_Dg (K x K) lower-triangular with a positive diagonal, L_B (G K x Pg)
dense. Under q, x_G = m_G + L_G eps_G and x_g = m_g + L_Bg eps_G + L_Dg eps_g: each group has
a mean linear in the globals and its own full covariance, and the groups are independent given
the globals. This is the shape of a hierarchical model's posterior, whose precision is an
arrowhead (groups couple only through the globals). Products, inverses and transposed solves of
such factors keep the pattern, so a draw costs O(Pg^2 + G K Pg + G K^2) and no P x P matrix is
ever formed.

As in ``FullRank``, L = diag(exp(lambda)) (I + B) restricted to the pattern, so
L_ii = exp(lambda_i) and L_ij = exp(lambda_i) B_ij, and

    phi = [m (P), lambda (P), B_G (strict lower, np.tril_indices(Pg, -1) order),
           B_cross (G K Pg, C order of a (G, K, Pg) array),
           B_D (G K (K - 1) / 2, group-major, np.tril_indices(K, -1) order within a group)].

The frame W (a ``StructuredFactor``) has the same pattern; q over z = W^-1 (u - o) is
N(m, L L^T). With g_s = grad_u log p mapped to z as W^T g_s, d_s = L eps_s and
v_s = L^-T eps_s = Sigma_z^-1 (z_s - m), the gradient estimators are FullRank's restricted to
the pattern (see ``draw_grads``), and the entropy is sum(lambda) + log |det W| + P/2 (1 + log 2 pi).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vireg.families.meanfield import HALF_LOG_2PI, HALF_LOG_2PI_E, draw_terms

DENSE_LIMIT = 5000  # largest P for which ``mean_cov`` builds the dense covariance


def _sym(A: np.ndarray) -> np.ndarray:
    """The symmetric part of a (stack of) square matrices (rounding makes inverses slightly
    asymmetric, which Cholesky would otherwise see)."""
    return 0.5 * (A + np.swapaxes(A, -1, -2))


@dataclass
class StructuredFactor:
    """A lower-triangular P x P matrix A with the arrowhead pattern, stored by blocks:
    ``G_block`` (Pg, Pg) lower, ``cross`` (G, K, Pg) = rows of the groups against the globals,
    ``diag_blocks`` (G, K, K) lower. Rows x of shape (S, P) are mapped as A x per row."""

    G_block: np.ndarray
    cross: np.ndarray
    diag_blocks: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """(Pg, G, K)."""
        G, K, Pg = self.cross.shape
        return Pg, G, K

    @classmethod
    def identity(cls, n_global: int, n_groups: int, K: int) -> StructuredFactor:
        return cls(np.eye(n_global), np.zeros((n_groups, K, n_global)),
                   np.broadcast_to(np.eye(K), (n_groups, K, K)).copy())

    @classmethod
    def from_precision(cls, H_GG: np.ndarray, H_cross: np.ndarray,
                       H_blocks: np.ndarray) -> StructuredFactor:
        """The structured F with F F^T = H^-1 for the arrowhead precision
        H = [[H_GG, C^T], [C, blockdiag(D_g)]] (C_g = ``H_cross[g]``, D_g = ``H_blocks[g]``).

        Eliminating the groups leaves the Schur complement S = H_GG - sum_g C_g^T D_g^-1 C_g, and
        Sigma_GG = S^-1, Sigma_gG = -D_g^-1 C_g S^-1,
        Sigma_gh = [g = h] D_g^-1 + D_g^-1 C_g S^-1 C_h^T D_h^-1, which F reproduces with
        F_G = chol(S^-1), F_B,g = -D_g^-1 C_g F_G, F_D,g = chol(D_g^-1).
        Raises numpy.linalg.LinAlgError when a D_g or S is not positive definite.
        """
        H_GG, C, D = (np.asarray(a, float) for a in (H_GG, H_cross, H_blocks))
        np.linalg.cholesky(D)  # positive definiteness of every D_g, before inverting it
        D_inv = _sym(np.linalg.inv(D))
        D_inv_C = D_inv @ C  # (G, K, Pg)
        S = _sym(H_GG - np.einsum("gki,gkj->ij", C, D_inv_C))
        R = np.linalg.cholesky(S)  # S = R R^T, so S^-1 = R^-T R^-1
        R_inv = np.linalg.solve(R, np.eye(S.shape[0]))
        F_G = np.linalg.cholesky(_sym(R_inv.T @ R_inv))
        return cls(F_G, -D_inv_C @ F_G, np.linalg.cholesky(D_inv))

    @property
    def log_det(self) -> float:
        """log |det A| = sum of the logs of the diagonals of the triangular blocks."""
        return float(np.sum(np.log(np.diag(self.G_block)))
                     + np.sum(np.log(np.diagonal(self.diag_blocks, axis1=1, axis2=2))))

    def _split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows x (S, P) as their global part (S, Pg) and group part (S, G, K)."""
        Pg, G, K = self.shape
        return x[:, :Pg], x[:, Pg:].reshape(x.shape[0], G, K)

    @staticmethod
    def _join(x_G: np.ndarray, x_Z: np.ndarray) -> np.ndarray:
        return np.hstack([x_G, x_Z.reshape(x_Z.shape[0], -1)])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """A x per row: y_G = A_G x_G, y_g = A_Bg x_G + A_Dg x_g."""
        x_G, x_Z = self._split(x)
        y_Z = _cross_times(self.cross, x_G) + _blocks_times(self.diag_blocks, x_Z)
        return self._join(x_G @ self.G_block.T, y_Z)

    def apply_T(self, y: np.ndarray) -> np.ndarray:
        """A^T y per row: x_G = A_G^T y_G + sum_g A_Bg^T y_g, x_g = A_Dg^T y_g."""
        y_G, y_Z = self._split(y)
        x_G = y_G @ self.G_block + _cross_T_times(self.cross, y_Z)
        return self._join(x_G, _blocks_T_times(self.diag_blocks, y_Z))

    def solve(self, y: np.ndarray) -> np.ndarray:
        """A^-1 y per row, by forward substitution: the globals first, then each group
        x_g = A_Dg^-1 (y_g - A_Bg x_G)."""
        y_G, y_Z = self._split(y)
        x_G = np.linalg.solve(self.G_block, y_G.T).T
        x_Z = _blocks_solve(self.diag_blocks, y_Z - _cross_times(self.cross, x_G))
        return self._join(x_G, x_Z)

    def solve_T(self, y: np.ndarray) -> np.ndarray:
        """A^-T y per row, by back substitution: A^T is upper-triangular, so the groups come
        first, x_g = A_Dg^-T y_g, then x_G = A_G^-T (y_G - sum_g A_Bg^T x_g)."""
        y_G, y_Z = self._split(y)
        x_Z = _blocks_solve_T(self.diag_blocks, y_Z)
        r = y_G - _cross_T_times(self.cross, x_Z)
        x_G = np.linalg.solve(self.G_block.T, r.T).T
        return self._join(x_G, x_Z)

    def matmul(self, other: StructuredFactor) -> StructuredFactor:
        """A C, which keeps the pattern: [A_G C_G, A_Bg C_G + A_Dg C_Bg, A_Dg C_Dg]."""
        return StructuredFactor(self.G_block @ other.G_block,
                                self.cross @ other.G_block + self.diag_blocks @ other.cross,
                                self.diag_blocks @ other.diag_blocks)

    def left_solve(self, other: StructuredFactor) -> StructuredFactor:
        """A^-1 C, which keeps the pattern: X_G = A_G^-1 C_G, X_Dg = A_Dg^-1 C_Dg,
        X_Bg = A_Dg^-1 (C_Bg - A_Bg X_G)."""
        X_G = np.linalg.solve(self.G_block, other.G_block)
        X_B = np.linalg.solve(self.diag_blocks, other.cross - self.cross @ X_G)
        return StructuredFactor(X_G, X_B, np.linalg.solve(self.diag_blocks, other.diag_blocks))

    def row_norms2(self) -> np.ndarray:
        """Squared Euclidean norms of the P rows of A (the diagonal of A A^T)."""
        groups = np.sum(self.cross ** 2, axis=2) + np.sum(self.diag_blocks ** 2, axis=2)
        return np.concatenate([np.sum(self.G_block ** 2, axis=1), groups.ravel()])

    def dense(self) -> np.ndarray:
        """A as a dense P x P matrix (small P only: tests and small models)."""
        Pg, G, K = self.shape
        A = np.zeros((Pg + G * K, Pg + G * K))
        A[:Pg, :Pg] = self.G_block
        A[Pg:, :Pg] = self.cross.reshape(G * K, Pg)
        for g in range(G):
            s = slice(Pg + g * K, Pg + (g + 1) * K)
            A[s, s] = self.diag_blocks[g]
        return A


def _cross_times(cross: np.ndarray, x_G: np.ndarray) -> np.ndarray:
    """(S, G, K): sum_j cross[g, k, j] x_G[s, j], one matrix product."""
    G, K, Pg = cross.shape
    return (x_G @ cross.reshape(G * K, Pg).T).reshape(x_G.shape[0], G, K)


def _cross_T_times(cross: np.ndarray, y_Z: np.ndarray) -> np.ndarray:
    """(S, Pg): sum_gk cross[g, k, j] y_Z[s, g, k], one matrix product."""
    G, K, Pg = cross.shape
    return y_Z.reshape(y_Z.shape[0], G * K) @ cross.reshape(G * K, Pg)


def _blocks_times(D: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(S, G, K): D_g x_g for every draw and group (K is small: a loop over its columns
    beats batched matrix products of K x K blocks)."""
    out = np.zeros(x.shape)
    for m in range(D.shape[2]):
        out += D[None, :, :, m] * x[:, :, m, None]
    return out


def _blocks_T_times(D: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(S, G, K): D_g^T y_g for every draw and group."""
    out = np.zeros(y.shape)
    for k in range(D.shape[1]):
        out += D[None, :, k, :] * y[:, :, k, None]
    return out


def _blocks_solve(D: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(S, G, K): D_g^-1 y_g for lower-triangular D_g, by forward substitution."""
    x = np.empty(y.shape)
    for k in range(D.shape[1]):
        r = y[:, :, k] - np.sum(D[None, :, k, :k] * x[:, :, :k], axis=2)
        x[:, :, k] = r / D[None, :, k, k]
    return x


def _blocks_solve_T(D: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(S, G, K): D_g^-T y_g for lower-triangular D_g, by back substitution."""
    K = D.shape[1]
    x = np.empty(y.shape)
    for k in range(K - 1, -1, -1):
        r = y[:, :, k] - np.sum(D[None, :, k + 1:, k] * x[:, :, k + 1:], axis=2)
        x[:, :, k] = r / D[None, :, k, k]
    return x


class Structured:
    name = "structured"

    def __init__(self, n_global: int, n_groups: int, K: int, origin: np.ndarray | None = None,
                 frame: StructuredFactor | None = None):
        self.Pg, self.G, self.K = int(n_global), int(n_groups), int(K)
        self.P = self.Pg + self.G * self.K
        self.g_rows, self.g_cols = np.tril_indices(self.Pg, -1)
        self.k_rows, self.k_cols = np.tril_indices(self.K, -1)
        self.n_cross = self.G * self.K * self.Pg
        self.size = 2 * self.P + self.g_rows.size + self.n_cross + self.G * self.k_rows.size
        self.origin = np.zeros(self.P) if origin is None else np.asarray(origin, float)
        # q lives in a frame other than u itself (the engine then needs no preconditioner)
        self.whitened = frame is not None
        self.frame = StructuredFactor.identity(self.Pg, self.G, self.K) if frame is None else frame
        if self.frame.shape != (self.Pg, self.G, self.K) or self.origin.shape != (self.P,):
            raise ValueError(f"frame {self.frame.shape} or origin {self.origin.shape} does not "
                             f"match (n_global, n_groups, K) = {(self.Pg, self.G, self.K)}")
        self.mean_slice = slice(0, self.P)

    # --- packing -----------------------------------------------------------------------------

    def _unpack_B(self, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The strict-lower parts (B_G (Pg, Pg), B_cross (G, K, Pg), B_D (G, K, K)) of B."""
        Pg, G, K = self.Pg, self.G, self.K
        i = 2 * self.P
        B_G = np.zeros((Pg, Pg))
        B_G[self.g_rows, self.g_cols] = phi[i:i + self.g_rows.size]
        i += self.g_rows.size
        B_X = phi[i:i + self.n_cross].reshape(G, K, Pg)
        B_D = np.zeros((G, K, K))
        B_D[:, self.k_rows, self.k_cols] = phi[i + self.n_cross:].reshape(G, -1)
        return B_G, B_X, B_D

    def _scales(self, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """exp(lambda) for the globals (Pg,) and the groups (G, K)."""
        s = np.exp(phi[self.P:2 * self.P])
        return s[:self.Pg], s[self.Pg:].reshape(self.G, self.K)

    def factor(self, phi: np.ndarray) -> StructuredFactor:
        """L = diag(exp(lambda)) (I + B) on the pattern."""
        s_G, s_Z = self._scales(phi)
        B_G, B_X, B_D = self._unpack_B(phi)
        eye_K = np.eye(self.K)
        return StructuredFactor(s_G[:, None] * (np.eye(self.Pg) + B_G), s_Z[:, :, None] * B_X,
                                s_Z[:, :, None] * (eye_K + B_D))

    def cholesky_blocks(self, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(L_G, L_B, L_D) of q's factor over the frame coordinates z."""
        L = self.factor(phi)
        return L.G_block, L.cross, L.diag_blocks

    def u_factor(self, phi: np.ndarray) -> StructuredFactor:
        """W L, q's covariance factor over u (the same pattern)."""
        return self.frame.matmul(self.factor(phi))

    def u_blocks(self, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The blocks of W L, q's covariance factor over u."""
        A = self.u_factor(phi)
        return A.G_block, A.cross, A.diag_blocks

    def phi_of(self, m: np.ndarray, L: StructuredFactor) -> np.ndarray:
        """phi for q = N(m, L L^T) over z (L structured, lower-triangular, positive diagonal):
        lambda = log diag L and B = L / (its row's diagonal entry)."""
        d_G = np.diag(L.G_block)
        d_Z = np.diagonal(L.diag_blocks, axis1=1, axis2=2)
        B_D = L.diag_blocks / d_Z[:, :, None]
        return np.concatenate([
            np.asarray(m, float), np.log(d_G), np.log(d_Z).ravel(),
            (L.G_block / d_G[:, None])[self.g_rows, self.g_cols],
            (L.cross / d_Z[:, :, None]).ravel(), B_D[:, self.k_rows, self.k_cols].ravel()])

    def b_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """(i, j) in u's coordinates of every B entry of phi, in phi's order."""
        Pg, G, K = self.Pg, self.G, self.K
        g, k, j = np.unravel_index(np.arange(self.n_cross), (G, K, Pg))
        starts = Pg + K * np.repeat(np.arange(G), self.k_rows.size)
        return (np.concatenate([self.g_rows, Pg + g * K + k, starts + np.tile(self.k_rows, G)]),
                np.concatenate([self.g_cols, j, starts + np.tile(self.k_cols, G)]))

    # --- the family's interface ----------------------------------------------------------------

    def init(self, sd: np.ndarray, cov: np.ndarray | None = None,
             mean: np.ndarray | None = None) -> np.ndarray:
        """m = ``mean`` (default 0); L = diag(sd). A dense covariance guess is refused: this
        family is for P too large for one."""
        if cov is not None:
            raise ValueError("the structured family takes no dense covariance guess (cov); "
                             "give sd, or build phi with phi_of")
        m = np.zeros(self.P) if mean is None else np.asarray(mean, float)
        lam = np.log(np.broadcast_to(np.asarray(sd, float), (self.P,)))
        return np.concatenate([m, lam, np.zeros(self.size - 2 * self.P)])

    def sample(self, phi: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """u_s = o + W (m + L eps_s)."""
        z = phi[:self.P] + self.factor(phi).apply(eps)
        return self.origin + self.frame.apply(z)

    def entropy(self, phi: np.ndarray) -> float:
        return float(np.sum(phi[self.P:2 * self.P]) + self.frame.log_det
                     + self.P * HALF_LOG_2PI_E)

    def log_q(self, phi: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """log q(u_s) for u_s = o + W (m + L eps_s) (log |det L| = sum lambda)."""
        return (-np.sum(phi[self.P:2 * self.P]) - self.frame.log_det
                - 0.5 * np.sum(eps * eps, axis=1) - self.P * HALF_LOG_2PI)

    def _terms(self, phi, eps, logp, g, estimator):
        """(L, a, c) of the per-draw gradient [a, a * d + c, ...] (``draw_terms``), with the
        model's gradients mapped to z (W^T g) and v = L^-T eps = Sigma_z^-1 (z - m)."""
        L = self.factor(phi)
        v = L.solve_T(eps)
        a, c = draw_terms(estimator, v, logp - self.log_q(phi, eps), self.frame.apply_T(g))
        return L, a, c

    def draw_grads(self, phi: np.ndarray, eps: np.ndarray, logp: np.ndarray, g: np.ndarray,
                   estimator: str) -> np.ndarray:
        """One ELBO-gradient estimate per draw (rows, shape (S, size)); their mean is the step's
        gradient.

        FullRank's estimate restricted to the pattern: with d_s = L eps_s,
        [a_s, a_s * d_s + c_s, a_si eps_sj exp(lambda_i) for every B entry (i, j)], where
        reparam a = g, c = 1; stl a = g + v, c = 0; score a = (f_s - b_s) v_s, c = -(f_s - b_s).
        """
        S = eps.shape[0]
        L, a, c = self._terms(phi, eps, logp, g, estimator)
        s_G, s_Z = self._scales(phi)
        (a_G, a_Z), (e_G, e_Z) = L._split(a), L._split(eps)
        b_G = a_G[:, self.g_rows] * e_G[:, self.g_cols] * s_G[self.g_rows]
        b_X = (a_Z * s_Z)[:, :, :, None] * e_G[:, None, None, :]
        b_D = (a_Z * s_Z)[:, :, self.k_rows] * e_Z[:, :, self.k_cols]
        return np.hstack([a, a * L.apply(eps) + c, b_G, b_X.reshape(S, -1), b_D.reshape(S, -1)])

    def elbo_grad(self, phi: np.ndarray, eps: np.ndarray, logp: np.ndarray, g: np.ndarray,
                  estimator: str) -> tuple[float, np.ndarray]:
        """The Monte Carlo ELBO (up to the model's constants) and its gradient in phi: the mean
        of ``draw_grads`` over the draws, summed over draws block by block (one Pg x Pg, one
        (G, K, Pg) and one (G, K, K) product) so the (S, size) array is never built."""
        S = eps.shape[0]
        L, a, c = self._terms(phi, eps, logp, g, estimator)
        s_G, s_Z = self._scales(phi)
        (a_G, a_Z), (e_G, e_Z) = L._split(a), L._split(eps)
        b_G = (a_G.T @ e_G)[self.g_rows, self.g_cols] * s_G[self.g_rows]
        b_X = (a_Z.reshape(S, -1).T @ e_G).reshape(self.G, self.K, self.Pg) * s_Z[:, :, None]
        b_D = np.stack([np.stack([np.sum(a_Z[:, :, k] * e_Z[:, :, m], axis=0)
                                  for m in range(self.K)], axis=1)
                        for k in range(self.K)], axis=1) * s_Z[:, :, None]
        grad = np.concatenate([
            a.sum(axis=0), np.sum(a * L.apply(eps) + c, axis=0), b_G, b_X.ravel(),
            b_D[:, self.k_rows, self.k_cols].ravel()]) / S
        return float(np.mean(logp)) + self.entropy(phi), grad

    def quadratic_cv_mean(self, phi: np.ndarray, C: np.ndarray) -> np.ndarray:
        raise NotImplementedError("the quadratic control variate needs a dense P x P curvature; "
                                  "the structured family does not support it")

    def scale_dims(self) -> np.ndarray:
        """Per scale parameter (lambda, then the B entries), the number of coordinates whose
        gradient noise its own gradient gathers (``engine.step_rates`` divides the draws by
        it): P for the globals' block, whose a_G sums every group's terms (measured on a
        1,000,000-row logistic model with 10,000 groups: noise up to 2.9 per step in B_G, which
        at a group block's rate made q's globals jitter until the fit ran away), and Pg + K
        for a group's own entries (noise below 0.14)."""
        n_B_G = self.g_rows.size
        dims = np.full(self.size - self.P, float(self.Pg + self.K))
        dims[:self.Pg] = self.P
        dims[self.P:self.P + n_B_G] = self.P
        return dims

    def frame_curvature(self) -> np.ndarray:
        """-d2 ELBO / dphi2 (diagonal) at q = N(0, I) for a standard normal target: 1 for m and
        B, 2 for lambda (as for ``FullRank``)."""
        return np.concatenate([np.ones(self.P), np.full(self.P, 2.0),
                               np.ones(self.size - 2 * self.P)])

    # --- q over u ------------------------------------------------------------------------------

    def mean(self, phi: np.ndarray) -> np.ndarray:
        """Mean of q over u, o + W m."""
        return self.origin + self.frame.apply(phi[None, :self.P])[0]

    def marginal_sd(self, phi: np.ndarray) -> np.ndarray:
        """Sds of q over u: the row norms of W L."""
        return np.sqrt(self.u_factor(phi).row_norms2())

    def global_mean_cov(self, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean (Pg,) and covariance A_G A_G^T (Pg, Pg) of q over the globals (A = W L)."""
        A = self.u_factor(phi)
        return self.mean(phi)[:self.Pg], A.G_block @ A.G_block.T

    def group_mean_cov(self, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Means (G, K) and covariances A_Bg A_Bg^T + A_Dg A_Dg^T (G, K, K) of q's marginals over
        each group (A = W L)."""
        A = self.u_factor(phi)
        cov = (A.cross @ np.swapaxes(A.cross, 1, 2)
               + A.diag_blocks @ np.swapaxes(A.diag_blocks, 1, 2))
        return self.mean(phi)[self.Pg:].reshape(self.G, self.K), cov

    def mean_cov(self, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dense mean and covariance of q over u (P <= DENSE_LIMIT only)."""
        if self.P > DENSE_LIMIT:
            raise ValueError(f"mean_cov builds a dense {self.P} x {self.P} covariance; use "
                             "global_mean_cov, group_mean_cov or marginal_sd for P > "
                             f"{DENSE_LIMIT}")
        A = self.u_factor(phi).dense()
        return self.mean(phi), A @ A.T

    def _cov_blocks(self, phi):
        """(mean, sd, Sigma_GG, Sigma_gg (G, K, K), Sigma_gG (G, K, Pg)) of q over u."""
        A = self.u_factor(phi)
        cross_T = np.swapaxes(A.cross, 1, 2)
        S_ZZ = A.cross @ cross_T + A.diag_blocks @ np.swapaxes(A.diag_blocks, 1, 2)
        return (self.mean(phi), np.sqrt(A.row_norms2()), A.G_block @ A.G_block.T, S_ZZ,
                A.cross @ A.G_block.T)

    def distance(self, phi_new: np.ndarray, phi_old: np.ndarray) -> float:
        """Largest change of a mean (in posterior sds), of a log sd, or of a covariance entry
        (in units of sd_i sd_j) among the globals block and each group's block. A group's
        covariances with the globals (G K Pg of them) and with other groups are left out: their
        Monte Carlo jitter, maximised over 300,000 entries at 10,000 groups, kept successive
        levels from agreeing long after every mean and sd had (a 1,000,000-row logistic fit ran
        4,550 steps); what they move, the groups' marginal sds, is counted."""
        m1, sd1, GG1, ZZ1, _ = self._cov_blocks(phi_new)
        m0, sd0, GG0, ZZ0, _ = self._cov_blocks(phi_old)
        sd_G, sd_Z = sd1[:self.Pg], sd1[self.Pg:].reshape(self.G, self.K)
        return float(max(
            np.max(np.abs(m1 - m0) / sd1), np.max(np.abs(np.log(sd1 / sd0))),
            np.max(np.abs(GG1 - GG0) / np.outer(sd_G, sd_G), initial=0.0),
            np.max(np.abs(ZZ1 - ZZ0) / (sd_Z[:, :, None] * sd_Z[:, None, :]), initial=0.0)))

    def labels(self, names: list[str]) -> list[str]:
        """A name for every entry of phi, from the names of the coordinates of u."""
        rows, cols = self.b_indices()
        return ([f"m[{n}]" for n in names] + [f"log_diag_L[{n}]" for n in names]
                + [f"B[{names[i]},{names[j]}]" for i, j in zip(rows, cols, strict=True)])

    def to_dict(self, phi: np.ndarray) -> dict:
        """q over u: its mean and the blocks of its covariance factor W L (lower-triangular with a
        positive diagonal, so the unique structured Cholesky factor of q's covariance)."""
        A = self.u_factor(phi)
        return {"structure": "arrowhead", "n_global": self.Pg, "n_groups": self.G, "K": self.K,
                "m": self.mean(phi).tolist(), "L_global": A.G_block.tolist(),
                "L_cross": A.cross.tolist(), "L_blocks": A.diag_blocks.tolist()}

    def from_dict(self, d: dict) -> np.ndarray:
        """phi from what ``to_dict`` wrote, expressed in this family's frame:
        m = W^-1 (mean - o) and L = W^-1 (W L), both by structured solves."""
        if (d["n_global"], d["n_groups"], d["K"]) != (self.Pg, self.G, self.K):
            raise ValueError(f"saved shape {(d['n_global'], d['n_groups'], d['K'])} does not "
                             f"match (n_global, n_groups, K) = {(self.Pg, self.G, self.K)}")
        A = StructuredFactor(*(np.asarray(d[k], float)
                               for k in ("L_global", "L_cross", "L_blocks")))
        m = self.frame.solve((np.asarray(d["m"], float) - self.origin)[None])[0]
        return self.phi_of(m, self.frame.left_solve(A))
