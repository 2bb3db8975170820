"""Mean-field Gaussian: q(u) = N(m, diag(s^2)), s = exp(omega), phi = [m, omega].

Reparameterisation u_s = m + s * eps_s, eps_s ~ N(0, I), s = 1..S. With g_s = grad_u log p(y, u_s)
(from the data kernel plus the priors) and the entropy H = sum_j omega_j + P/2 (1 + log 2 pi):

    ELBO(m, omega) = E_eps[log p(y, m + s * eps)] + sum_j omega_j + const
    d ELBO / dm      ~ (1/S) sum_s g_s
    d ELBO / domega  ~ (1/S) sum_s g_s * eps_s * s + 1

"Sticking the landing" (Roeder et al. 2017) replaces g_s by the path derivative of
log p - log q with q's parameters held fixed, h_s = g_s + eps_s / s, and drops the "+ 1" (the
score term of the entropy, whose expectation is zero). At a q equal to a Gaussian posterior every
h_s is exactly zero, so the gradient noise vanishes at the optimum.
See docs/derivations.md for the derivation.
"""

from __future__ import annotations

import math

import numpy as np

HALF_LOG_2PI_E = 0.5 * (1.0 + math.log(2.0 * math.pi))


class MeanField:
    name = "meanfield"
    default_estimator = "reparam"

    def __init__(self, n_params: int):
        self.P = n_params
        self.size = 2 * n_params

    def init(self, sd: np.ndarray, cov: np.ndarray | None = None) -> np.ndarray:
        """m = 0 (the null model on standardised data), s = the given per-coordinate sd."""
        return np.concatenate([np.zeros(self.P), np.log(sd)])

    def split(self, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return phi[: self.P], phi[self.P:]

    @property
    def mean_slice(self) -> slice:
        """Where the mean m sits in phi (the engine preconditions that block)."""
        return slice(0, self.P)

    def sample(self, phi: np.ndarray, eps: np.ndarray) -> np.ndarray:
        m, omega = self.split(phi)
        return m + np.exp(omega) * eps

    def entropy(self, phi: np.ndarray) -> float:
        return float(np.sum(phi[self.P:]) + self.P * HALF_LOG_2PI_E)

    def elbo_grad(self, phi: np.ndarray, eps: np.ndarray, logp: np.ndarray, g: np.ndarray,
                  estimator: str) -> tuple[float, np.ndarray]:
        """The Monte Carlo ELBO (up to the model's constants) and its gradient in phi."""
        s = np.exp(phi[self.P:])
        elbo = float(np.mean(logp)) + self.entropy(phi)
        if estimator == "stl":
            h = g + eps / s
            grad_m = h.mean(axis=0)
            grad_omega = (h * eps).mean(axis=0) * s
        else:
            grad_m = g.mean(axis=0)
            grad_omega = (g * eps).mean(axis=0) * s + 1.0
        return elbo, np.concatenate([grad_m, grad_omega])

    def mean_cov(self, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m, omega = self.split(phi)
        return m.copy(), np.diag(np.exp(2.0 * omega))

    def marginal_sd(self, phi: np.ndarray) -> np.ndarray:
        return np.exp(phi[self.P:])

    def distance(self, phi_new: np.ndarray, phi_old: np.ndarray) -> float:
        """Largest change of a mean in posterior sds, or of a log-scale (relative change of sd)."""
        m1, o1 = self.split(phi_new)
        m0, o0 = self.split(phi_old)
        s = np.exp(o1)
        return float(max(np.max(np.abs(m1 - m0) / s), np.max(np.abs(o1 - o0))))

    def to_dict(self, phi: np.ndarray) -> dict:
        m, omega = self.split(phi)
        return {"m": m.tolist(), "log_s": omega.tolist()}
