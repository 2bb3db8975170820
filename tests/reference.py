"""Plain NumPy references of what the kernels and the model compute, written from the formulas on
the natural scale (raw X and y, theta = (alpha, beta, tau)), with no standardisation and no Numba.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special, stats

LOG_2PI = math.log(2 * math.pi)


def gaussian_loglik_grad(Z, y, U, has_intercept):
    """Per-draw sum_i log N(y_i | a + z_i.b, exp(t)^2) and its gradient in U (rows are draws)."""
    off = int(has_intercept)
    D = Z.shape[1]
    G = np.zeros_like(U)
    ll = np.zeros(U.shape[0])
    for s, u in enumerate(U):
        a = u[0] if has_intercept else 0.0
        b, t = u[off:off + D], u[-1]
        e = y - (a + Z @ b)
        w = np.exp(-2 * t)
        ll[s] = np.sum(-0.5 * LOG_2PI - t - 0.5 * e**2 * w)
        if has_intercept:
            G[s, 0] = w * e.sum()
        G[s, off:off + D] = w * (Z.T @ e)
        G[s, -1] = np.sum(-1 + e**2 * w)
    return G, ll


def bernoulli_loglik_grad(Z, y, U, has_intercept):
    """Per-draw sum_i y_i eta_i - log(1 + exp(eta_i)) and its gradient in U."""
    off = int(has_intercept)
    D = Z.shape[1]
    G = np.zeros_like(U)
    ll = np.zeros(U.shape[0])
    for s, u in enumerate(U):
        eta = (u[0] if has_intercept else 0.0) + Z @ u[off:off + D]
        ll[s] = np.sum(y * eta - np.logaddexp(0.0, eta))
        r = y - special.expit(eta)
        if has_intercept:
            G[s, 0] = r.sum()
        G[s, off:off + D] = Z.T @ r
    return G, ll


def log_prior(name: str, args: tuple, x: np.ndarray) -> np.ndarray:
    """log density from scipy.stats; scale priors are densities of sigma = exp(x) times the
    Jacobian exp(x)."""
    if name == "flat":
        return np.zeros_like(x)
    if name == "normal":
        return stats.norm(args[0], args[1]).logpdf(x)
    if name == "student_t":
        return stats.t(args[0], args[1], args[2]).logpdf(x)
    if name == "cauchy":
        return stats.cauchy(args[0], args[1]).logpdf(x)
    if name == "laplace":
        return stats.laplace(args[0], args[1]).logpdf(x)
    sigma = np.exp(x)
    if name == "sigma_flat":
        return x.copy()
    if name == "half_normal":
        return stats.halfnorm(0, args[0]).logpdf(sigma) + x
    if name == "half_cauchy":
        return stats.halfcauchy(0, args[0]).logpdf(sigma) + x
    if name == "half_student_t":
        return np.log(2) + stats.t(args[0], 0, args[1]).logpdf(sigma) + x
    if name == "exponential":
        return stats.expon(scale=1 / args[0]).logpdf(sigma) + x
    if name == "gamma":
        return stats.gamma(args[0], scale=1 / args[1]).logpdf(sigma) + x
    if name == "inv_sqrt_half_normal":  # 1/sqrt(sigma) ~ half_normal(s): z = exp(-x/2)
        z = np.exp(-0.5 * x)
        return stats.halfnorm(0, args[0]).logpdf(z) + np.log(0.5 * z)
    raise ValueError(name)


def log_joint_theta(X, y, theta, family, intercept, priors, fixed_sigma=None):
    """log p(y, theta) on the natural scale for one theta = (alpha, beta, tau)."""
    off = int(intercept)
    D = X.shape[1]
    eta = (theta[0] if intercept else 0.0) + X @ theta[off:off + D]
    if family == "gaussian":
        tau = theta[-1] if fixed_sigma is None else math.log(fixed_sigma)
        ll = np.sum(stats.norm(eta, np.exp(tau)).logpdf(y))
    else:
        ll = np.sum(y * eta - np.logaddexp(0.0, eta))
    lp = sum(float(log_prior(p.name, p.args, np.array([theta[i]]))[0]) for i, p in enumerate(priors))
    return ll + lp


def glm_row_loglik(family, y, x, eta, aux):
    """log p(y_i | eta_i) per row from scipy.stats, every constant included: ``x`` the trials
    (binomial) or the exposure t (poisson, negative binomial: eta already holds log t), aux the
    natural positive parameters (phi; sigma, nu)."""
    if family == "binomial":
        return stats.binom(x.astype(int), special.expit(eta)).logpmf(y)
    if family == "poisson":
        return stats.poisson(np.exp(eta)).logpmf(y)
    if family == "negative_binomial":
        phi = aux[0]
        mu = np.exp(eta)
        return stats.nbinom(phi, phi / (phi + mu)).logpmf(y)
    if family == "student_t":
        sigma, nu = aux
        return stats.t(nu, eta, sigma).logpdf(y)
    if family == "probit":
        return np.where(y == 1, special.log_ndtr(eta), special.log_ndtr(-eta))
    raise ValueError(family)


def glm_loglik_grad(family, Z, Y, U, has_intercept, h=1e-6):
    """Per-draw sums of the kernel's part of the log-likelihood (``kernels.glm`` module doc) and
    their gradient in U by central differences, written from the per-row formulas directly
    (the kernel leaves out, per row, log C(n, y), -log y! and the negative binomial's
    log Gamma(y + phi) - log Gamma(phi))."""
    off = int(has_intercept)
    D = Z.shape[1]

    def total(u):
        eta = (u[0] if has_intercept else 0.0) + Z @ u[off:off + D]
        y, x = Y[:, 0], Y[:, 1]
        if family == "binomial":
            return np.sum(y * eta - x * np.logaddexp(0.0, eta))
        if family == "poisson":
            eta = eta + x
            return np.sum(y * eta - np.exp(eta))
        if family == "negative_binomial":
            xs = eta + x - u[off + D]
            return np.sum(y * xs - (y + np.exp(u[off + D])) * np.logaddexp(0.0, xs))
        if family == "student_t":
            t, nu = u[off + D], math.exp(u[off + D + 1])
            sigma = math.exp(t)
            return np.sum(stats.t(nu, eta, sigma).logpdf(y))
        if family == "probit":
            return np.sum(special.log_ndtr((2 * y - 1) * eta))
        raise ValueError(family)

    ll = np.array([total(u) for u in U])
    G = np.zeros_like(U)
    for s, u in enumerate(U):
        for j in range(U.shape[1]):
            up, um = u.copy(), u.copy()
            up[j] += h
            um[j] -= h
            G[s, j] = (total(up) - total(um)) / (2 * h)
    return G, ll
