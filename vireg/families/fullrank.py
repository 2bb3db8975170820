"""Full-rank Gaussian: q(u) = N(m, L L^T), L lower-triangular with a positive diagonal.

L is parameterised as L = diag(exp(lambda)) (I + B), B strictly lower-triangular, so that
L_jj = exp(lambda_j) and every entry the optimiser moves is on a scale-free footing (B is like a regression
of one coordinate on the others, in units of the coordinate's own scale). phi = [m, lambda, B_tril].

Reparameterisation u_s = m + L eps_s. With g_s = grad_u log p(y, u_s), d_s = u_s - m = L eps_s and
the entropy H = sum_j lambda_j + P/2 (1 + log 2 pi) (log |det L| = sum lambda):

    d ELBO / dm         ~ (1/S) sum_s g_s
    d ELBO / dL_ij      ~ (1/S) sum_s g_si eps_sj                  (i >= j)
    d ELBO / dlambda_i  = sum_{j<=i} dELBO/dL_ij L_ij + 1 ~ (1/S) sum_s g_si d_si + 1
    d ELBO / dB_ij      = dELBO/dL_ij exp(lambda_i)                  (i > j)

because every entry of row i of L is proportional to exp(lambda_i).

A frame (origin o, matrix W) lets the optimiser run in z with u = o + W z: q over z is
N(m, L L^T), so q over u is N(o + W m, W L L^T W^T), the same full-rank family. Gradients in u map
to z as g_z = W^T g_u, log q(u) = log q(z) - log |det W|. With o the posterior mode and
W^T H W = I for the curvature H there (``laplace.whitening``), z = 0, L = I is the Laplace
approximation and the posterior is about isotropic in z, whatever the correlations in u.

Sticking the landing replaces g_s by h_s = g_s + L^-T eps_s (the gradient of log p - log q in u
with q fixed, since -grad_u log q = Sigma^-1 (u - m) = L^-T eps) and drops the "+1". At q equal to a Gaussian
posterior every h_s is exactly 0. Mean-field is the special case B = 0.
The data kernel supplies all g_s in one pass; everything here is O(S P^2) per step.
"""

from __future__ import annotations

import numpy as np
from numpy.linalg import cholesky

from vireg.families.meanfield import HALF_LOG_2PI, HALF_LOG_2PI_E, draw_terms


class FullRank:
    name = "fullrank"

    def __init__(self, n_params: int, origin: np.ndarray | None = None,
                 frame: np.ndarray | None = None, log_det_frame: float = 0.0):
        self.P = n_params
        self.rows, self.cols = np.tril_indices(n_params, -1)
        self.size = 2 * n_params + self.rows.size
        self.origin = np.zeros(n_params) if origin is None else np.asarray(origin, float)
        self.frame = np.eye(n_params) if frame is None else np.asarray(frame, float)
        self.log_det_frame = float(log_det_frame)
        # q lives in a frame other than u itself (the engine then needs no preconditioner)
        self.whitened = frame is not None

    @property
    def mean_slice(self) -> slice:
        return slice(0, self.P)

    def init(self, sd: np.ndarray, cov: np.ndarray | None = None,
             mean: np.ndarray | None = None) -> np.ndarray:
        """m = ``mean`` (default 0); L = chol(cov) if a covariance guess is given, else diag(sd)."""
        m = np.zeros(self.P) if mean is None else np.asarray(mean, float)
        if cov is None:
            return np.concatenate([m, np.log(sd), np.zeros(self.rows.size)])
        return self.phi_of(m, cholesky(cov))

    def phi_of(self, m: np.ndarray, L: np.ndarray) -> np.ndarray:
        """phi for q = N(m, L L^T) over z (L lower-triangular with a positive diagonal)."""
        d = np.diag(L)
        B = L / d[:, None]
        return np.concatenate([m, np.log(d), B[self.rows, self.cols]])

    def cholesky_factor(self, phi: np.ndarray) -> np.ndarray:
        P = self.P
        B = np.eye(P)
        B[self.rows, self.cols] = phi[2 * P:]
        return np.exp(phi[P:2 * P])[:, None] * B

    def sample(self, phi: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """u_s = o + W (m + L eps_s)."""
        z = phi[: self.P] + eps @ self.cholesky_factor(phi).T
        return self.origin + z @ self.frame.T

    def entropy(self, phi: np.ndarray) -> float:
        return float(np.sum(phi[self.P:2 * self.P]) + self.log_det_frame
                     + self.P * HALF_LOG_2PI_E)

    def log_q(self, phi: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """log q(u_s) for u_s = o + W (m + L eps_s) (log |det L| = sum lambda)."""
        P = self.P
        return (-np.sum(phi[P:2 * P]) - self.log_det_frame - 0.5 * np.sum(eps * eps, axis=1)
                - P * HALF_LOG_2PI)

    def draw_grads(self, phi: np.ndarray, eps: np.ndarray, logp: np.ndarray, g: np.ndarray,
                   estimator: str) -> np.ndarray:
        """One ELBO-gradient estimate per draw (rows); their mean is the step's gradient.

        With d_s = L eps_s and v_s = L^-T eps_s = Sigma^-1 (u_s - m), every estimator has the form
        [a_s, a_s * d_s + c_s, (a_s eps_s^T)_ij exp(lambda_i) for i > j]:
        reparam a = g, c = 1; stl a = g + v, c = 0; score a = (f_s - b_s) v_s, c = -(f_s - b_s),
        i.e. (f_s - b_s) grad log q with grad_L log q = tril(v eps^T) - diag(1 / L_jj).
        """
        P = self.P
        g = g @ self.frame  # gradients in z
        L = self.cholesky_factor(phi)
        v = np.linalg.solve(L.T, eps.T).T
        a, c = draw_terms(estimator, v, logp - self.log_q(phi, eps), g)
        d = eps @ L.T
        grad_B = a[:, self.rows] * eps[:, self.cols] * np.exp(phi[P:2 * P])[self.rows]
        return np.hstack([a, a * d + c, grad_B])

    def quadratic_cv_mean(self, phi: np.ndarray, C: np.ndarray) -> np.ndarray:
        """The expectation under q of ``draw_grads``' terms for a_s = C d_s, d_s = L eps_s (the
        part that the quadratic control variate g_s + C d_s adds): 0 for m,
        E[(C d)_i d_i] = (C Sigma)_ii for lambda_i, E[(C d)_i eps_j] exp(lambda_i) =
        (C L)_ij exp(lambda_i) for B_ij."""
        P = self.P
        C = self.frame.T @ C @ self.frame  # the curvature in z
        L = self.cholesky_factor(phi)
        CL = C @ L
        return np.concatenate([np.zeros(P), np.einsum("ij,ij->i", CL, L),
                               CL[self.rows, self.cols] * np.exp(phi[P:2 * P])[self.rows]])

    def elbo_grad(self, phi: np.ndarray, eps: np.ndarray, logp: np.ndarray, g: np.ndarray,
                  estimator: str) -> tuple[float, np.ndarray]:
        """The Monte Carlo ELBO (up to the model's constants) and its gradient in phi."""
        elbo = float(np.mean(logp)) + self.entropy(phi)
        return elbo, self.draw_grads(phi, eps, logp, g, estimator).mean(axis=0)

    def mean(self, phi: np.ndarray) -> np.ndarray:
        """Mean of q over u."""
        return self.origin + self.frame @ phi[: self.P]

    def mean_cov(self, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of q over u."""
        WL = self.frame @ self.cholesky_factor(phi)
        return self.mean(phi), WL @ WL.T

    def frame_curvature(self) -> np.ndarray:
        """-d2 ELBO / dphi2 (diagonal) at q = N(0, I) for a standard normal target, the state a
        whitened frame starts in: 1 for m and B, 2 for lambda (ELBO = lambda - exp(2 lambda) / 2
        + const along one log scale)."""
        return np.concatenate([np.ones(self.P), np.full(self.P, 2.0), np.ones(self.rows.size)])

    def u_cholesky(self, phi: np.ndarray) -> np.ndarray:
        """The lower-triangular factor of q's covariance over u, from a QR factorisation of
        (W L)^T (no product W L L^T W^T to lose precision in)."""
        r = np.linalg.qr((self.frame @ self.cholesky_factor(phi)).T, mode="r")
        return (np.where(np.diag(r) < 0, -1.0, 1.0)[:, None] * r).T

    def distance(self, phi_new: np.ndarray, phi_old: np.ndarray) -> float:
        """Largest change of a mean (in posterior sds), of a log sd, or of a covariance entry
        (in units of sd_i sd_j, i.e. on the correlation scale)."""
        m1, S1 = self.mean_cov(phi_new)
        m0, S0 = self.mean_cov(phi_old)
        sd1, sd0 = np.sqrt(np.diag(S1)), np.sqrt(np.diag(S0))
        d_mean = np.max(np.abs(m1 - m0) / sd1)
        d_logsd = np.max(np.abs(np.log(sd1 / sd0)))
        d_cov = np.max(np.abs(S1 - S0) / np.outer(sd1, sd1))
        return float(max(d_mean, d_logsd, d_cov))

    def labels(self, names: list[str]) -> list[str]:
        """A name for every entry of phi, from the names of the coordinates of u."""
        return ([f"m[{n}]" for n in names] + [f"log_diag_L[{n}]" for n in names]
                + [f"B[{names[i]},{names[j]}]" for i, j in zip(self.rows, self.cols, strict=True)])

    def from_dict(self, d: dict) -> np.ndarray:
        """phi from what ``to_dict`` wrote (e.g. in fit.json): q over u, expressed in this
        family's frame."""
        m_z = np.linalg.solve(self.frame, np.asarray(d["m"], float) - self.origin)
        r = np.linalg.qr(np.linalg.solve(self.frame, np.asarray(d["L"], float)).T, mode="r")
        return self.phi_of(m_z, (np.where(np.diag(r) < 0, -1.0, 1.0)[:, None] * r).T)

    def to_dict(self, phi: np.ndarray) -> dict:
        """q over u: its mean and the lower-triangular factor of its covariance."""
        return {"m": self.mean(phi).tolist(), "L": self.u_cholesky(phi).tolist()}
