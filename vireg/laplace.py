"""The posterior mode and the curvature there: where every fit starts, and the frame it runs in.

Newton's method on log p(y, u) in the fitted coordinates u, with the exact Hessian
(``Model.hessian_at``: the likelihood's curvature from the Gram matrix or one pass over the rows,
and the priors' second derivatives) and the gradient from the data kernel (one pass per
evaluation, so the mode is refined against the rows themselves, not against sums that lose
precision). Each step solves H s = g (with H + mu I, mu growing, where H is not positive
definite away from the mode) and backtracks until log p rises enough (Armijo). It stops when the
squared Newton decrement g^T H^-1 g, the squared distance to the mode in posterior sds of the
local Gaussian, falls below ``DECREMENT_TOL``.

The Laplace approximation N(u*, H*^-1) is then the start of the variational fit: for a linear
model with a known sigma it is the exact posterior, and in general it lies within a fraction of a
posterior sd of the Gaussian that maximises the ELBO. ``whitening`` gives W with W^T H* W = I,
so that in z = W^-1 (u - u*) the posterior is about isotropic with unit sds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from vireg.errors import FitError

MAX_NEWTON_STEPS = 100
# g^T H^-1 g at which the mode is found: the distance to it is about 1e-6 posterior sd.
DECREMENT_TOL = 1e-12
# Below this squared decrement (about 1e-3 sd from the mode) log p's rounding decides Armijo's
# test: full steps are kept while they shrink the decrement, and a mode this close is accepted.
ROUNDING_DECREMENT_TOL = 1e-6
ARMIJO = 1e-4
# Within about 0.1 posterior sd of the mode the Hessian barely changes: later steps reuse the
# last one (chord steps, converging at the rate of that change), which spares a logistic model's
# curvature passes. On a 100,000 x 50 logistic fit the squared decrements ran 4e4, 5e3, 5e2, 6,
# 1e-3, 6e-11, 1e-25 with a new Hessian at every step.
REUSE_HESSIAN_DECREMENT = 1e-2
MIN_STEP_FRACTION = 2.0**-40
# A parameter this many standardised units from 0 means the mode runs off to infinity.
RUNAWAY_U = 1e8


@dataclass(frozen=True)
class Laplace:
    """The mode u* of log p(y, u), -d2 log p / du2 there (H), log p at u*, and the passes over the
    data it took (gradient evaluations plus, for logistic models, curvature passes)."""

    mode: np.ndarray
    hessian: np.ndarray
    log_p: float
    newton_steps: int
    passes: int

    @cached_property
    def frame(self) -> tuple[np.ndarray, float]:
        """``whitening(hessian)``: W with W^T H W = I, and log |det W| (computed once)."""
        return whitening(self.hessian)

    @property
    def cov(self) -> np.ndarray:
        """H^-1 through the whitening factor (W W^T), stable for ill-conditioned H."""
        W = self.frame[0]
        return W @ W.T

    @cached_property
    def sd(self) -> np.ndarray:
        """Marginal sds of the Laplace approximation."""
        return np.sqrt(np.diag(self.cov))

    @property
    def meanfield_sd(self) -> np.ndarray:
        """1/sqrt(diag H): the mean-field optimum for a Gaussian with precision H (a coordinate
        with no curvature at all gets the unit sd of the standardised scale)."""
        d = np.diag(self.hessian)
        return 1.0 / np.sqrt(np.where(d > 0, d, 1.0))


def whitening(H: np.ndarray) -> tuple[np.ndarray, float]:
    """W with W^T H W = I and log |det W|: W = L^-T for the Cholesky factor H = L L^T, or, where
    H is not positive definite (a prior with no curvature on a direction the data leave flat),
    from its eigenvectors with eigenvalues floored at 1e-10 of the largest (at least 1)."""
    try:
        L = np.linalg.cholesky(H)
        W = np.linalg.solve(L.T, np.eye(H.shape[0]))
        return W, -float(np.sum(np.log(np.diag(L))))
    except np.linalg.LinAlgError:
        eig, vec = np.linalg.eigh(0.5 * (H + H.T))
        floor = max(1e-10 * float(eig[-1]), 0.0) or 1.0
        eig = np.maximum(eig, floor)
        return vec / np.sqrt(eig), -0.5 * float(np.sum(np.log(eig)))


def find_mode(model) -> Laplace:
    """The Laplace approximation of the model's posterior (see the module docstring)."""
    u = base_start(model)
    lp, g = _log_joint_grad(model, u)
    passes = 1
    if not (np.isfinite(lp) and np.all(np.isfinite(g))):
        raise FitError("the log joint is non-finite where the fit starts (the least-squares or "
                       "null-model point): check the data for extreme values, or give proper "
                       "priors")
    curvature_passes = model.curvature_passes
    steps, decrement, fresh = 0, np.inf, False
    while steps <= MAX_NEWTON_STEPS:
        if decrement > REUSE_HESSIAN_DECREMENT:
            H, fresh = model.hessian_at(u), True
        with np.errstate(over="ignore", invalid="ignore"):  # a runaway shows as inf, below
            direction, decrement = _newton_direction(H, g)
        if decrement < DECREMENT_TOL:
            break
        if decrement < ROUNDING_DECREMENT_TOL:
            # Within 1e-3 sd of the mode, log p changes less than its rounding (sums of terms
            # of size 1e3 carry 1e-12 noise), so Armijo's test is a coin toss: a full step is
            # kept while it shrinks the decrement, and the search stops when it no longer does.
            step = _full_step(model, H, u, direction, decrement)
            passes += 1
            if step is None:
                break
            u, lp, g, fresh = *step, False
            steps += 1
            continue
        t = 1.0
        while True:
            u_new = u + t * direction
            lp_new, g_new = _log_joint_grad(model, u_new)
            passes += 1
            finite = np.isfinite(lp_new) and np.all(np.isfinite(g_new))
            if finite and lp_new >= lp + ARMIJO * t * decrement:
                break
            t *= 0.5
            if t < MIN_STEP_FRACTION:
                break
        if t < MIN_STEP_FRACTION:  # no step improves log p: rounding, or a broken model
            # log p of huge counts (1e9 and more) rounds at 1e-3 and beyond: the gradient still
            # says whether the full step went toward the mode
            step = _full_step(model, H, u, direction, decrement)
            passes += 1
            if step is None:
                raise FitError(_not_found(f"no Newton step increased log p (squared decrement "
                                          f"{decrement:.3g})"))
            u, lp, g, fresh = *step, False
            steps += 1
            continue
        u, lp, g, fresh = u_new, lp_new, g_new, False
        steps += 1
        if np.max(np.abs(u)) > RUNAWAY_U:
            raise FitError(_not_found("the mode runs off to infinity, so the posterior is "
                                      "improper"))
    if steps > MAX_NEWTON_STEPS:
        raise FitError(_not_found(f"Newton's method did not settle in {MAX_NEWTON_STEPS} steps"))
    if not fresh:  # the approximation's curvature is the one at the mode itself
        H = model.hessian_at(u)
    return Laplace(u, H, float(lp), steps, passes + model.curvature_passes - curvature_passes)


def _full_step(model, H: np.ndarray, u: np.ndarray, direction: np.ndarray, decrement: float):
    """(u, log p, gradient) after the full Newton step if it shrinks the squared decrement (with
    the same H), else None."""
    u_new = u + direction
    lp_new, g_new = _log_joint_grad(model, u_new)
    if not (np.isfinite(lp_new) and np.all(np.isfinite(g_new))):
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        if not _newton_direction(H, g_new)[1] < decrement:
            return None
    return u_new, lp_new, g_new


def _not_found(why: str) -> str:
    return (f"the posterior mode could not be found: {why}; check the data and give proper "
            "priors (e.g. coefficients: 'normal(0, 2.5)')")


def _log_joint_grad(model, u: np.ndarray) -> tuple[float, np.ndarray]:
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        lp, g = model.log_joint_grad(u[None, :])
    return float(lp[0]), g[0]


def _newton_direction(H: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, float]:
    """s solving (H + mu I) s = g for the smallest mu in 0, 1e-8, 1e-7, ... (relative to H's
    largest diagonal entry) that makes H + mu I positive definite, and g . s."""
    scale = max(float(np.max(np.abs(np.diag(H)))), 1e-300)
    for mu in [0.0] + [scale * 10.0**e for e in range(-8, 9)]:
        try:
            L = np.linalg.cholesky(H + mu * np.eye(H.shape[0]))
        except np.linalg.LinAlgError:
            continue
        s = np.linalg.solve(L.T, np.linalg.solve(L, g))
        if np.all(np.isfinite(s)):
            return s, float(g @ s)
    return g / scale, float(g @ g) / scale


def base_start(model) -> np.ndarray:
    """Newton's start: for gaussian and Student-t models the least-squares coefficients on the
    standardised scale (from the Gram matrix) and log of their residual sd (Student-t's nu at
    its ``START_NU``); for logistic ones 0 with the intercept at the log odds of the mean
    response (when it has one and both classes occur); for the others the likelihood's own
    null-model start (``start``: the intercept at the link of the mean rate)."""
    k = model.n_location
    u = np.zeros(model.n_params)
    lik = model.likelihood
    if lik.HAS_SCALE:
        gram, zty, yty = model.gram()
        if k:
            u[:k] = np.linalg.lstsq(gram, zty, rcond=None)[0]
        if model.has_scale:
            rss = max(yty - float(u[:k] @ zty), 1e-12 * max(yty, 1e-300))
            u[k] = 0.5 * np.log(max(rss / model.n_rows, 1e-300))
        if "nu" in model.positive_names:
            u[k + model.positive_names.index("nu")] = np.log(lik.START_NU)
    elif hasattr(lik, "start"):
        a, aux = lik.start(model.response_sums)
        if model.intercept:
            u[0] = a
        u[k:k + len(aux)] = aux
    elif model.intercept:
        mean = model.column_stats[0][1]
        if 0.0 < mean < 1.0:
            u[0] = np.log(mean / (1.0 - mean))
    return u
