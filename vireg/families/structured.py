"""Structured Gaussian: q(u) = N(o + W m, W L L^T W^T) with an arrowhead Cholesky factor.

The coordinates u are Pg "global" coordinates followed by one segment per grouping factor of a
multilevel model (``(1 + x | county) + (1 | state)`` has two). Segment f holds G_f groups of
K_f coordinates each, group-major: with o_f = Pg + sum_{e < f} G_e K_e, group g of segment f is
u[o_f + g K_f : o_f + (g + 1) K_f], and P = Pg + sum_f G_f K_f. L is lower-triangular with the
pattern

    L = [[L_G,  0                    ],
         [L_B,  blockdiag(L_D1..L_Dn)]]

over the n = sum_f G_f groups in u's order: L_G (Pg x Pg) and every L_Dg (K_f x K_f for a group
of segment f) lower-triangular with a positive diagonal, L_B (sum_f G_f K_f x Pg) dense. Under
q, x_G = m_G + L_G eps_G and x_g = m_g + L_Bg eps_G + L_Dg eps_g: each group has a mean linear
in the globals and its own full covariance, and the groups, of one segment or of different
ones, are independent given the globals. This is the shape of a hierarchical model's posterior,
whose precision is an arrowhead (groups couple only through the globals). Products, inverses and
transposed solves of such factors keep the pattern, so a draw costs
O(Pg^2 + sum_f G_f K_f (Pg + K_f)) and no P x P matrix is ever formed.

As in ``FullRank``, L = diag(exp(lambda)) (I + B) restricted to the pattern, so
L_ii = exp(lambda_i) and L_ij = exp(lambda_i) B_ij, and

    phi = [m (P), lambda (P), B_G (strict lower, np.tril_indices(Pg, -1) order),
           B_cross of segment 0, then of segment 1, ... (G_f K_f Pg entries each, C order of a
               (G_f, K_f, Pg) array),
           B_D of segment 0, then of segment 1, ... (G_f K_f (K_f - 1) / 2 entries each,
               group-major, np.tril_indices(K_f, -1) order within a group)].

With one segment (G groups of K) this reads [m, lambda, B_G, B_cross (G K Pg, C order of
(G, K, Pg)), B_D (G K (K - 1) / 2, group-major)], the layout of single-segment fits.

The frame W (a ``StructuredFactor``) has the same pattern; q over z = W^-1 (u - o) is
N(m, L L^T). With g_s = grad_u log p mapped to z as W^T g_s, d_s = L eps_s and
v_s = L^-T eps_s = Sigma_z^-1 (z_s - m), the gradient estimators are FullRank's restricted to
the pattern (see ``draw_grads``), and the entropy is sum(lambda) + log |det W| + P/2 (1 + log 2 pi).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vireg.families.meanfield import HALF_LOG_2PI, HALF_LOG_2PI_E, draw_terms

DENSE_LIMIT = 5000  # largest P for which ``mean_cov`` builds the dense covariance

Segments = tuple[tuple[int, int], ...]  # (G_f, K_f) of every segment, in u's order


def _sym(A: np.ndarray) -> np.ndarray:
    """The symmetric part of a (stack of) square matrices (rounding makes inverses slightly
    asymmetric, which Cholesky would otherwise see)."""
    return 0.5 * (A + np.swapaxes(A, -1, -2))


def _per_segment(blocks) -> tuple[np.ndarray, ...]:
    """One float array per segment: a bare array is the blocks of a single segment, any other
    sequence holds one entry per segment."""
    if isinstance(blocks, np.ndarray):
        return (np.asarray(blocks, float),)
    return tuple(np.asarray(b, float) for b in blocks)


def _consecutive(start: int, lengths: Sequence[int]) -> list[slice]:
    """Slices of the given lengths laid end to end from start."""
    ends = start + np.cumsum([0, *lengths])
    return [slice(int(a), int(b)) for a, b in zip(ends[:-1], ends[1:], strict=True)]


@dataclass
class StructuredFactor:
    """A lower-triangular P x P matrix A with the arrowhead pattern, stored by blocks:
    ``G_block`` (Pg, Pg) lower; per segment f, ``cross[f]`` (G_f, K_f, Pg), the rows of its
    groups against the globals, and ``diag_blocks[f]`` (G_f, K_f, K_f) lower. A bare array for
    ``cross`` or ``diag_blocks`` is taken as the one segment's. Rows x of shape (S, P) are
    mapped as A x per row."""

    G_block: np.ndarray
    cross: tuple[np.ndarray, ...]
    diag_blocks: tuple[np.ndarray, ...]

    def __post_init__(self):
        self.cross = _per_segment(self.cross)
        self.diag_blocks = _per_segment(self.diag_blocks)
        Pg = self.G_block.shape[0]
        ok = (self.G_block.shape == (Pg, Pg) and len(self.cross) == len(self.diag_blocks)
              and all(X.ndim == 3 and X.shape == (D.shape[0], D.shape[1], Pg)
                      and D.shape == (X.shape[0], X.shape[1], X.shape[1])
                      for X, D in zip(self.cross, self.diag_blocks, strict=True)))
        if not ok:
            raise ValueError(
                f"structured factor blocks do not fit together: G_block {self.G_block.shape}, "
                f"cross {[X.shape for X in self.cross]}, diag_blocks "
                f"{[D.shape for D in self.diag_blocks]} (want (Pg, Pg), (G_f, K_f, Pg) and "
                "(G_f, K_f, K_f) per segment)")

    @property
    def n_global(self) -> int:
        """Pg."""
        return self.G_block.shape[0]

    @property
    def segments(self) -> Segments:
        """(G_f, K_f) of every segment."""
        return tuple((X.shape[0], X.shape[1]) for X in self.cross)

    @classmethod
    def identity(cls, n_global: int, segments: Sequence[tuple[int, int]]) -> StructuredFactor:
        return cls(np.eye(n_global),
                   tuple(np.zeros((G, K, n_global)) for G, K in segments),
                   tuple(np.broadcast_to(np.eye(K), (G, K, K)).copy() for G, K in segments))

    @classmethod
    def from_precision(cls, H_GG: np.ndarray, H_cross, H_blocks) -> StructuredFactor:
        """The structured F with F F^T = H^-1 for the arrowhead precision
        H = [[H_GG, C^T], [C, blockdiag(D_g)]], C_g and D_g the blocks of group g (``H_cross``
        and ``H_blocks`` hold per segment arrays (G_f, K_f, Pg) and (G_f, K_f, K_f); a bare
        array is one segment's).

        Eliminating the groups leaves the Schur complement S = H_GG - sum_g C_g^T D_g^-1 C_g (g
        over every group of every segment), and Sigma_GG = S^-1, Sigma_gG = -D_g^-1 C_g S^-1,
        Sigma_gh = [g = h] D_g^-1 + D_g^-1 C_g S^-1 C_h^T D_h^-1, which F reproduces with
        F_G = chol(S^-1), F_B,g = -D_g^-1 C_g F_G, F_D,g = chol(D_g^-1).
        Raises numpy.linalg.LinAlgError when a D_g or S is not positive definite.
        """
        H_GG = np.asarray(H_GG, float)
        C, D = _per_segment(H_cross), _per_segment(H_blocks)
        for D_f in D:
            np.linalg.cholesky(D_f)  # positive definiteness of every D_g, before inverting it
        D_inv = [_sym(np.linalg.inv(D_f)) for D_f in D]
        D_inv_C = [D_f @ C_f for D_f, C_f in zip(D_inv, C, strict=True)]  # (G_f, K_f, Pg)
        S = H_GG.copy()
        for C_f, X_f in zip(C, D_inv_C, strict=True):
            S -= np.einsum("gki,gkj->ij", C_f, X_f)
        R = np.linalg.cholesky(_sym(S))  # S = R R^T, so S^-1 = R^-T R^-1
        R_inv = np.linalg.solve(R, np.eye(S.shape[0]))
        F_G = np.linalg.cholesky(_sym(R_inv.T @ R_inv))
        return cls(F_G, tuple(-X_f @ F_G for X_f in D_inv_C),
                   tuple(np.linalg.cholesky(D_f) for D_f in D_inv))

    @property
    def log_det(self) -> float:
        """log |det A| = sum of the logs of the diagonals of the triangular blocks."""
        return float(np.sum(np.log(np.diag(self.G_block)))
                     + sum(np.sum(np.log(np.diagonal(D, axis1=1, axis2=2)))
                           for D in self.diag_blocks))

    def _split(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Rows x (S, P) as their global part (S, Pg) and each segment's part (S, G_f, K_f)."""
        i, parts = self.n_global, []
        for G, K, _ in (X.shape for X in self.cross):
            parts.append(x[:, i:i + G * K].reshape(x.shape[0], G, K))
            i += G * K
        if x.shape[1] != i:
            raise ValueError(f"rows of {x.shape[1]} coordinates for a structured factor over {i}")
        return x[:, :self.n_global], parts

    @staticmethod
    def _join(x_G: np.ndarray, x_Z: list[np.ndarray]) -> np.ndarray:
        return np.hstack([x_G, *(x_f.reshape(x_f.shape[0], -1) for x_f in x_Z)])

    def _check_like(self, other: StructuredFactor) -> None:
        if (other.n_global, other.segments) != (self.n_global, self.segments):
            raise ValueError(f"structured factors of different patterns: (n_global, segments) "
                             f"{(self.n_global, self.segments)} and "
                             f"{(other.n_global, other.segments)}")

    def apply(self, x: np.ndarray) -> np.ndarray:
        """A x per row: y_G = A_G x_G, y_g = A_Bg x_G + A_Dg x_g."""
        x_G, x_Z = self._split(x)
        y_Z = [_cross_times(X, x_G) + _blocks_times(D, x_f)
               for X, D, x_f in zip(self.cross, self.diag_blocks, x_Z, strict=True)]
        return self._join(x_G @ self.G_block.T, y_Z)

    def apply_T(self, y: np.ndarray) -> np.ndarray:
        """A^T y per row: x_G = A_G^T y_G + sum_g A_Bg^T y_g, x_g = A_Dg^T y_g."""
        y_G, y_Z = self._split(y)
        x_G = y_G @ self.G_block
        for X, y_f in zip(self.cross, y_Z, strict=True):
            x_G += _cross_T_times(X, y_f)
        return self._join(x_G, [_blocks_T_times(D, y_f)
                                for D, y_f in zip(self.diag_blocks, y_Z, strict=True)])

    def solve(self, y: np.ndarray) -> np.ndarray:
        """A^-1 y per row, by forward substitution: the globals first, then each group
        x_g = A_Dg^-1 (y_g - A_Bg x_G)."""
        y_G, y_Z = self._split(y)
        x_G = _lower_solve(self.G_block, y_G.T).T
        x_Z = [_blocks_solve(D, y_f - _cross_times(X, x_G))
               for X, D, y_f in zip(self.cross, self.diag_blocks, y_Z, strict=True)]
        return self._join(x_G, x_Z)

    def solve_T(self, y: np.ndarray) -> np.ndarray:
        """A^-T y per row, by back substitution: A^T is upper-triangular, so the groups come
        first, x_g = A_Dg^-T y_g, then x_G = A_G^-T (y_G - sum_g A_Bg^T x_g)."""
        y_G, y_Z = self._split(y)
        x_Z = [_blocks_solve_T(D, y_f) for D, y_f in zip(self.diag_blocks, y_Z, strict=True)]
        r = y_G
        for X, x_f in zip(self.cross, x_Z, strict=True):
            r = r - _cross_T_times(X, x_f)
        x_G = _lower_transpose_solve(self.G_block, r.T).T
        return self._join(x_G, x_Z)

    def matmul(self, other: StructuredFactor) -> StructuredFactor:
        """A C, which keeps the pattern: [A_G C_G, A_Bg C_G + A_Dg C_Bg, A_Dg C_Dg]."""
        self._check_like(other)
        pairs = list(zip(self.cross, self.diag_blocks, other.cross, other.diag_blocks,
                         strict=True))
        return StructuredFactor(self.G_block @ other.G_block,
                                tuple(X @ other.G_block + D @ X_o for X, D, X_o, _ in pairs),
                                tuple(D @ D_o for _, D, _, D_o in pairs))

    def left_solve(self, other: StructuredFactor) -> StructuredFactor:
        """A^-1 C, which keeps the pattern: X_G = A_G^-1 C_G, X_Dg = A_Dg^-1 C_Dg,
        X_Bg = A_Dg^-1 (C_Bg - A_Bg X_G)."""
        self._check_like(other)
        X_G = np.linalg.solve(self.G_block, other.G_block)
        pairs = list(zip(self.cross, self.diag_blocks, other.cross, other.diag_blocks,
                         strict=True))
        return StructuredFactor(X_G,
                                tuple(np.linalg.solve(D, X_o - X @ X_G) for X, D, X_o, _ in pairs),
                                tuple(np.linalg.solve(D, D_o) for _, D, _, D_o in pairs))

    def row_norms2(self) -> np.ndarray:
        """Squared Euclidean norms of the P rows of A (the diagonal of A A^T)."""
        groups = [(np.sum(X ** 2, axis=2) + np.sum(D ** 2, axis=2)).ravel()
                  for X, D in zip(self.cross, self.diag_blocks, strict=True)]
        return np.concatenate([np.sum(self.G_block ** 2, axis=1), *groups])

    def dense(self) -> np.ndarray:
        """A as a dense P x P matrix (small P only: tests and small models)."""
        Pg = self.n_global
        P = Pg + sum(G * K for G, K in self.segments)
        A = np.zeros((P, P))
        A[:Pg, :Pg] = self.G_block
        o = Pg
        for X, D in zip(self.cross, self.diag_blocks, strict=True):
            G, K, _ = X.shape
            A[o:o + G * K, :Pg] = X.reshape(G * K, Pg)
            g, r, c = np.indices((G, K, K)).reshape(3, -1)
            A[o + g * K + r, o + g * K + c] = D.ravel()
            o += G * K
        return A


def _lower_solve(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """L^-1 B for the lower-triangular dense block (``kernels.triangular``: O(n^2 m), where
    NumPy's general solve is O(n^3))."""
    from vireg.kernels.triangular import lower_solve

    return lower_solve(np.ascontiguousarray(L, dtype=np.float64),
                       np.ascontiguousarray(B, dtype=np.float64))


def _lower_transpose_solve(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """L^-T B for the lower-triangular dense block (``kernels.triangular``)."""
    from vireg.kernels.triangular import lower_transpose_solve

    return lower_transpose_solve(np.ascontiguousarray(L, dtype=np.float64),
                                 np.ascontiguousarray(B, dtype=np.float64))


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


def _pair_sums(a: np.ndarray, e: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(G, n): sum_s a[s, g, rows[i]] e[s, g, cols[i]] for each of the n pairs (rows[i], cols[i]);
    a loop over the few pairs of a small block, each a sum over draws of (S, G) products."""
    out = np.empty((a.shape[1], rows.size))
    for i, (k, m) in enumerate(zip(rows, cols, strict=True)):
        out[:, i] = np.sum(a[:, :, k] * e[:, :, m], axis=0)
    return out


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

    def __init__(self, n_global: int, segments: Sequence[tuple[int, int]],
                 origin: np.ndarray | None = None, frame: StructuredFactor | None = None):
        self.Pg = int(n_global)
        self.segments: Segments = tuple((int(G), int(K)) for G, K in segments)
        if any(G < 1 or K < 1 for G, K in self.segments):
            raise ValueError(f"segments {self.segments}: every (n_groups, K) must be positive")
        sizes = [G * K for G, K in self.segments]
        self.P = self.Pg + sum(sizes)
        self.g_rows, self.g_cols = np.tril_indices(self.Pg, -1)
        self.k_tril = [np.tril_indices(K, -1) for _, K in self.segments]
        # where each segment's coordinates sit in u, and its B_cross and B_D entries in phi
        self.u_slices = _consecutive(self.Pg, sizes)
        start = 2 * self.P + self.g_rows.size
        self.cross_slices = _consecutive(start, [n * self.Pg for n in sizes])
        start += self.Pg * sum(sizes)
        n_D = [G * rows.size for (G, _), (rows, _) in zip(self.segments, self.k_tril, strict=True)]
        self.D_slices = _consecutive(start, n_D)
        self.size = start + sum(n_D)
        self.origin = np.zeros(self.P) if origin is None else np.asarray(origin, float)
        # q lives in a frame other than u itself (the engine then needs no preconditioner)
        self.whitened = frame is not None
        self.frame = StructuredFactor.identity(self.Pg, self.segments) if frame is None else frame
        if ((self.frame.n_global, self.frame.segments) != (self.Pg, self.segments)
                or self.origin.shape != (self.P,)):
            raise ValueError(f"frame (n_global, segments) = "
                             f"{(self.frame.n_global, self.frame.segments)} or origin "
                             f"{self.origin.shape} does not match (n_global, segments) = "
                             f"{(self.Pg, self.segments)}")
        self.mean_slice = slice(0, self.P)

    def _by_segment(self, *arrays):
        """Tuples (segment (G_f, K_f), its tril indices, then the f-th entry of every array)."""
        return zip(self.segments, self.k_tril, *arrays, strict=True)

    # --- packing -----------------------------------------------------------------------------

    def _unpack_B(self, phi: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """The strict-lower parts of B: B_G (Pg, Pg), and per segment B_cross (G_f, K_f, Pg) and
        B_D (G_f, K_f, K_f)."""
        Pg, i = self.Pg, 2 * self.P
        B_G = np.zeros((Pg, Pg))
        B_G[self.g_rows, self.g_cols] = phi[i:i + self.g_rows.size]
        B_X, B_D = [], []
        for (G, K), (rows, cols), sl_X, sl_D in self._by_segment(self.cross_slices,
                                                                  self.D_slices):
            B_X.append(phi[sl_X].reshape(G, K, Pg))
            B = np.zeros((G, K, K))
            B[:, rows, cols] = phi[sl_D].reshape(G, -1)
            B_D.append(B)
        return B_G, B_X, B_D

    def _scales(self, phi: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """exp(lambda) for the globals (Pg,) and per segment for its groups (G_f, K_f)."""
        s = np.exp(phi[self.P:2 * self.P])
        return s[:self.Pg], [s[sl].reshape(G, K)
                             for (G, K), sl in zip(self.segments, self.u_slices, strict=True)]

    def factor(self, phi: np.ndarray) -> StructuredFactor:
        """L = diag(exp(lambda)) (I + B) on the pattern."""
        s_G, s_Z = self._scales(phi)
        B_G, B_X, B_D = self._unpack_B(phi)
        return StructuredFactor(
            s_G[:, None] * (np.eye(self.Pg) + B_G),
            tuple(s_f[:, :, None] * X for s_f, X in zip(s_Z, B_X, strict=True)),
            tuple(s_f[:, :, None] * (np.eye(K) + D)
                  for (_, K), _, s_f, D in self._by_segment(s_Z, B_D)))

    def cholesky_blocks(self, phi: np.ndarray) -> tuple[np.ndarray, tuple, tuple]:
        """(L_G, L_B, L_D) of q's factor over the frame coordinates z, L_B and L_D tuples with
        one array per segment."""
        L = self.factor(phi)
        return L.G_block, L.cross, L.diag_blocks

    def u_factor(self, phi: np.ndarray) -> StructuredFactor:
        """W L, q's covariance factor over u (the same pattern)."""
        return self.frame.matmul(self.factor(phi))

    def u_blocks(self, phi: np.ndarray) -> tuple[np.ndarray, tuple, tuple]:
        """The blocks of W L, q's covariance factor over u (as ``cholesky_blocks``)."""
        A = self.u_factor(phi)
        return A.G_block, A.cross, A.diag_blocks

    def phi_of(self, m: np.ndarray, L: StructuredFactor) -> np.ndarray:
        """phi for q = N(m, L L^T) over z (L structured, lower-triangular, positive diagonal):
        lambda = log diag L and B = L / (its row's diagonal entry)."""
        if (L.n_global, L.segments) != (self.Pg, self.segments):
            raise ValueError(f"factor (n_global, segments) = {(L.n_global, L.segments)} does "
                             f"not match {(self.Pg, self.segments)}")
        d_G = np.diag(L.G_block)
        d_Z = [np.diagonal(D, axis1=1, axis2=2) for D in L.diag_blocks]
        B_X = [(X / d_f[:, :, None]).ravel() for X, d_f in zip(L.cross, d_Z, strict=True)]
        B_D = [(D / d_f[:, :, None])[:, rows, cols].ravel()
               for _, (rows, cols), D, d_f in self._by_segment(L.diag_blocks, d_Z)]
        return np.concatenate([
            np.asarray(m, float), np.log(d_G), *(np.log(d_f).ravel() for d_f in d_Z),
            (L.G_block / d_G[:, None])[self.g_rows, self.g_cols], *B_X, *B_D])

    def b_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """(i, j) in u's coordinates of every B entry of phi, in phi's order."""
        Pg = self.Pg
        rows, cols = [self.g_rows], [self.g_cols]
        for (G, K), _, sl in self._by_segment(self.u_slices):
            g, k, j = np.unravel_index(np.arange(G * K * Pg), (G, K, Pg))
            rows.append(sl.start + g * K + k)
            cols.append(j)
        for (G, K), (k_rows, k_cols), sl in self._by_segment(self.u_slices):
            starts = sl.start + K * np.repeat(np.arange(G), k_rows.size)
            rows.append(starts + np.tile(k_rows, G))
            cols.append(starts + np.tile(k_cols, G))
        return np.concatenate(rows), np.concatenate(cols)

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
        b_X, b_D = [], []
        for _, (k_rows, k_cols), a_f, e_f, s_f in self._by_segment(a_Z, e_Z, s_Z):
            as_f = a_f * s_f
            b_X.append((as_f[:, :, :, None] * e_G[:, None, None, :]).reshape(S, -1))
            b_D.append((as_f[:, :, k_rows] * e_f[:, :, k_cols]).reshape(S, -1))
        return np.hstack([a, a * L.apply(eps) + c, b_G, *b_X, *b_D])

    def elbo_grad(self, phi: np.ndarray, eps: np.ndarray, logp: np.ndarray, g: np.ndarray,
                  estimator: str) -> tuple[float, np.ndarray]:
        """The Monte Carlo ELBO (up to the model's constants) and its gradient in phi: the mean
        of ``draw_grads`` over the draws, summed over draws block by block (one Pg x Pg product,
        and per segment one (G_f, K_f, Pg) product and a sum of (S, G_f) products per B_D
        entry of a block) so the (S, size) array is never built."""
        S = eps.shape[0]
        L, a, c = self._terms(phi, eps, logp, g, estimator)
        s_G, s_Z = self._scales(phi)
        (a_G, a_Z), (e_G, e_Z) = L._split(a), L._split(eps)
        b_G = (a_G.T @ e_G)[self.g_rows, self.g_cols] * s_G[self.g_rows]
        b_X, b_D = [], []
        for (G, K), (k_rows, k_cols), a_f, e_f, s_f in self._by_segment(a_Z, e_Z, s_Z):
            b_X.append(((a_f.reshape(S, -1).T @ e_G).reshape(G, K, self.Pg)
                        * s_f[:, :, None]).ravel())
            b_D.append((_pair_sums(a_f, e_f, k_rows, k_cols) * s_f[:, k_rows]).ravel())
        grad = np.concatenate([
            a.sum(axis=0), np.sum(a * L.apply(eps) + c, axis=0), b_G, *b_X, *b_D]) / S
        return float(np.mean(logp)) + self.entropy(phi), grad

    def quadratic_cv_mean(self, phi: np.ndarray, C: np.ndarray) -> np.ndarray:
        raise NotImplementedError("the quadratic control variate needs a dense P x P curvature; "
                                  "the structured family does not support it")

    def scale_dims(self) -> np.ndarray:
        """Per scale parameter (lambda, then the B entries), the number of coordinates whose
        gradient noise its own gradient gathers (``engine.step_rates`` divides the draws by
        it): P for the globals' lambda and B_G, whose a_G sums every group's terms (at a
        group block's rate, their noise made q's globals jitter until a fit ran away), and
        Pg + K_f for the lambda, B_cross and B_D entries of a group of segment f."""
        P, n_B_G = self.P, self.g_rows.size
        dims = np.empty(self.size - P)
        dims[:self.Pg] = P
        dims[P:P + n_B_G] = P
        for (_, K), _, sl_u, sl_X, sl_D in self._by_segment(self.u_slices, self.cross_slices,
                                                             self.D_slices):
            dims[sl_u] = self.Pg + K  # lambda of the segment's coordinates: lambda_i at i
            dims[sl_X.start - P:sl_X.stop - P] = self.Pg + K
            dims[sl_D.start - P:sl_D.stop - P] = self.Pg + K
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

    @staticmethod
    def _group_covs(A: StructuredFactor) -> list[np.ndarray]:
        """Per segment, A_Bg A_Bg^T + A_Dg A_Dg^T (G_f, K_f, K_f): each group's covariance."""
        return [X @ np.swapaxes(X, 1, 2) + D @ np.swapaxes(D, 1, 2)
                for X, D in zip(A.cross, A.diag_blocks, strict=True)]

    def group_mean_cov(self, phi: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per segment, the means (G_f, K_f) and covariances A_Bg A_Bg^T + A_Dg A_Dg^T
        (G_f, K_f, K_f) of q's marginals over each of its groups (A = W L)."""
        m = self.mean(phi)
        covs = self._group_covs(self.u_factor(phi))
        return [(m[sl].reshape(G, K), cov)
                for (G, K), _, sl, cov in self._by_segment(self.u_slices, covs)]

    def mean_cov(self, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dense mean and covariance of q over u (P <= DENSE_LIMIT only)."""
        if self.P > DENSE_LIMIT:
            raise ValueError(f"mean_cov builds a dense {self.P} x {self.P} covariance; use "
                             "global_mean_cov, group_mean_cov or marginal_sd for P > "
                             f"{DENSE_LIMIT}")
        A = self.u_factor(phi).dense()
        return self.mean(phi), A @ A.T

    def _cov_blocks(self, phi):
        """(mean, sd, Sigma_GG, per segment Sigma_gg (G_f, K_f, K_f)) of q over u."""
        A = self.u_factor(phi)
        return (self.mean(phi), np.sqrt(A.row_norms2()), A.G_block @ A.G_block.T,
                self._group_covs(A))

    def distance(self, phi_new: np.ndarray, phi_old: np.ndarray) -> float:
        """Largest change of a mean (in posterior sds), of a log sd, or of a covariance entry
        (in units of sd_i sd_j) among the globals block and each group's block, in every
        segment. A group's covariances with the globals (G_f K_f Pg of them per segment) and
        with other groups are left out: their Monte Carlo jitter, maximised over hundreds of
        thousands of entries, keeps successive levels from agreeing long after every mean and
        sd has; what they move, the groups' marginal sds, is counted."""
        m1, sd1, GG1, ZZ1 = self._cov_blocks(phi_new)
        m0, sd0, GG0, ZZ0 = self._cov_blocks(phi_old)
        sd_G = sd1[:self.Pg]
        changes = [np.max(np.abs(m1 - m0) / sd1), np.max(np.abs(np.log(sd1 / sd0))),
                   np.max(np.abs(GG1 - GG0) / np.outer(sd_G, sd_G), initial=0.0)]
        for (G, K), _, sl, Z1, Z0 in self._by_segment(self.u_slices, ZZ1, ZZ0):
            sd_Z = sd1[sl].reshape(G, K)
            changes.append(np.max(np.abs(Z1 - Z0) / (sd_Z[:, :, None] * sd_Z[:, None, :]),
                                  initial=0.0))
        return float(max(changes))

    def labels(self, names: list[str]) -> list[str]:
        """A name for every entry of phi, from the names of the coordinates of u."""
        rows, cols = self.b_indices()
        return ([f"m[{n}]" for n in names] + [f"log_diag_L[{n}]" for n in names]
                + [f"B[{names[i]},{names[j]}]" for i, j in zip(rows, cols, strict=True)])

    def to_dict(self, phi: np.ndarray) -> dict:
        """q over u: its mean and the blocks of its covariance factor W L (lower-triangular with a
        positive diagonal, so the unique structured Cholesky factor of q's covariance), L_cross
        and L_blocks as one nested array per segment."""
        A = self.u_factor(phi)
        return {"structure": "arrowhead", "n_global": self.Pg,
                "segments": [list(s) for s in self.segments],
                "m": self.mean(phi).tolist(), "L_global": A.G_block.tolist(),
                "L_cross": [X.tolist() for X in A.cross],
                "L_blocks": [D.tolist() for D in A.diag_blocks]}

    def from_dict(self, d: dict) -> np.ndarray:
        """phi from what ``to_dict`` wrote, expressed in this family's frame:
        m = W^-1 (mean - o) and L = W^-1 (W L), both by structured solves. A dict with keys
        "n_groups" and "K" instead of "segments" holds one segment, its L_cross and L_blocks
        a single nested array each."""
        if "segments" in d:
            segments = tuple((int(G), int(K)) for G, K in d["segments"])
            cross, blocks = d["L_cross"], d["L_blocks"]
        else:
            segments = ((int(d["n_groups"]), int(d["K"])),)
            cross, blocks = [d["L_cross"]], [d["L_blocks"]]
        if (int(d["n_global"]), segments) != (self.Pg, self.segments):
            raise ValueError(f"saved (n_global, segments) = {(d['n_global'], segments)} does "
                             f"not match (n_global, segments) = {(self.Pg, self.segments)}")
        Pg = self.Pg
        A = StructuredFactor(
            np.asarray(d["L_global"], float).reshape(Pg, Pg),
            tuple(np.asarray(X, float).reshape(G, K, Pg)
                  for (G, K), _, X in self._by_segment(cross)),
            tuple(np.asarray(D, float).reshape(G, K, K)
                  for (G, K), _, D in self._by_segment(blocks)))
        m = self.frame.solve((np.asarray(d["m"], float) - self.origin)[None])[0]
        return self.phi_of(m, self.frame.left_solve(A))
