"""Mean-field Gaussian: q(u) = N(m, diag(s^2)), s = exp(omega), phi = [m, omega].

Reparameterisation u_s = m + s * eps_s, eps_s ~ N(0, I), s = 1..S. With g_s = grad_u log p(y, u_s)
(from the data kernel plus the priors) and the entropy H = sum_j omega_j + P/2 (1 + log 2 pi):

    ELBO(m, omega) = E_eps[log p(y, m + s * eps)] + sum_j omega_j + const
    d ELBO / dm      ~ (1/S) sum_s g_s
    d ELBO / domega  ~ (1/S) sum_s g_s * eps_s * s + 1

The score-function estimator (REINFORCE) uses only log p and log q, not g: with
f_s = log p(y, u_s) - log q(u_s) and the leave-one-out baseline b_s = mean of f over the other
draws (unbiased, S >= 2), d/dm ~ mean (f_s - b_s) eps_s / s and
d/domega ~ mean (f_s - b_s)(eps_s^2 - 1).

"Sticking the landing" (Roeder et al. 2017) replaces g_s by the path derivative of
log p - log q with q's parameters held fixed, h_s = g_s + eps_s / s, and drops the "+ 1" (the
score term of the entropy, whose expectation is zero). At a q equal to a Gaussian posterior every
h_s is exactly zero, so the gradient noise vanishes at the optimum.
See docs/derivations.md for the derivation.
"""

from __future__ import annotations

import math

import numpy as np

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
HALF_LOG_2PI_E = 0.5 * (1.0 + math.log(2.0 * math.pi))


def draw_terms(estimator: str, score_u: np.ndarray, f: np.ndarray, g: np.ndarray):
    """(a_s, c_s) of the per-draw gradient [a_s, (a_s * d_s) + c_s, ...] shared by the families.

    ``score_u`` is Sigma^-1 (u_s - m) = -grad_u log q(u_s), ``f`` = log p - log q per draw and
    ``g`` = grad_u log p per draw.
    """
    if estimator == "reparam":
        return g, 1.0
    if estimator == "stl":
        return g + score_u, 0.0
    # score function with the leave-one-out baseline b_s = mean of f over the other draws
    S = f.shape[0]
    w = f - (f.sum() - f) / (S - 1)
    return w[:, None] * score_u, -w[:, None]


class MeanField:
    name = "meanfield"
    whitened = False  # q is always over u itself (the engine whitens its means' steps instead)

    def __init__(self, n_params: int):
        self.P = n_params
        self.size = 2 * n_params

    def init(self, sd: np.ndarray, cov: np.ndarray | None = None,
             mean: np.ndarray | None = None) -> np.ndarray:
        """m = ``mean`` (default 0, the null model on standardised data), s = the given
        per-coordinate sd."""
        m = np.zeros(self.P) if mean is None else np.asarray(mean, float)
        return np.concatenate([m, np.log(sd)])

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

    def log_q(self, phi: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """log q(u_s) for u_s = m + s * eps_s."""
        return -np.sum(phi[self.P:]) - 0.5 * np.sum(eps * eps, axis=1) - self.P * HALF_LOG_2PI

    def draw_grads(self, phi: np.ndarray, eps: np.ndarray, logp: np.ndarray, g: np.ndarray,
                   estimator: str) -> np.ndarray:
        """One ELBO-gradient estimate per draw (rows); their mean is the step's gradient.

        Every estimator has the form [a_s, a_s * eps_s * s + c_s]:
        reparam a = g, c = 1; stl a = g + eps / s, c = 0; score (REINFORCE with the leave-one-out
        baseline b_s, f = log p - log q) a = (f_s - b_s) eps_s / s, c = -(f_s - b_s), which is
        (f_s - b_s) times the score grad log q = [eps / s, eps^2 - 1].
        """
        s = np.exp(phi[self.P:])
        a, c = draw_terms(estimator, eps / s, logp - self.log_q(phi, eps), g)
        return np.hstack([a, a * eps * s + c])

    def quadratic_cv_mean(self, phi: np.ndarray, C: np.ndarray) -> np.ndarray:
        """The expectation under q of ``draw_grads``' terms for a_s = C d_s, d_s = u_s - m = s eps_s
        (the part that the quadratic control variate g_s + C d_s adds): 0 for m, and for log s_j
        E[(C d)_j d_j] = C_jj s_j^2."""
        s2 = np.exp(2.0 * phi[self.P:])
        return np.concatenate([np.zeros(self.P), np.diag(C) * s2])

    def elbo_grad(self, phi: np.ndarray, eps: np.ndarray, logp: np.ndarray, g: np.ndarray,
                  estimator: str) -> tuple[float, np.ndarray]:
        """The Monte Carlo ELBO (up to the model's constants) and its gradient in phi."""
        elbo = float(np.mean(logp)) + self.entropy(phi)
        return elbo, self.draw_grads(phi, eps, logp, g, estimator).mean(axis=0)

    def frame_curvature(self) -> np.ndarray:
        """-d2 ELBO / dphi2 (diagonal) in whitened mean coordinates at the optimum for a Gaussian
        target: 1 for the means, 2 for the log sds (ELBO = omega - H_jj exp(2 omega) / 2 +
        const along one, at exp(-2 omega) = H_jj)."""
        return np.concatenate([np.ones(self.P), np.full(self.P, 2.0)])

    def mean(self, phi: np.ndarray) -> np.ndarray:
        """Mean of q over u."""
        return phi[: self.P].copy()

    def mean_cov(self, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m, omega = self.split(phi)
        return m.copy(), np.diag(np.exp(2.0 * omega))

    def distance(self, phi_new: np.ndarray, phi_old: np.ndarray) -> float:
        """Largest change of a mean in posterior sds, or of a log-scale (relative change of sd)."""
        m1, o1 = self.split(phi_new)
        m0, o0 = self.split(phi_old)
        s = np.exp(o1)
        return float(max(np.max(np.abs(m1 - m0) / s), np.max(np.abs(o1 - o0))))

    def labels(self, names: list[str]) -> list[str]:
        """A name for every entry of phi, from the names of the coordinates of u."""
        return [f"m[{n}]" for n in names] + [f"log_s[{n}]" for n in names]

    def from_dict(self, d: dict) -> np.ndarray:
        """phi from what ``to_dict`` wrote (e.g. in fit.json)."""
        return np.concatenate([np.asarray(d["m"], float), np.asarray(d["log_s"], float)])

    def to_dict(self, phi: np.ndarray) -> dict:
        m, omega = self.split(phi)
        return {"m": m.tolist(), "log_s": omega.tolist()}
