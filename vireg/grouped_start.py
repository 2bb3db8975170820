"""Where a fit of a model with group terms starts, and the frame it runs in.

The joint mode of log p(y, u) is no start for such a model: in non-centred coordinates it puts
the group sds tau far above the posterior (it ignores the volume of the group effects; radon:
tau 2 against 0.15), and in centred ones it collapses to tau = 0. The start is instead the
Laplace-approximate marginal mode of the globals (lme4's and TMB's estimate), found by EM in
centred coordinates:

1. given tau, the correlation and the positive parameters, the intercept, coefficients and
   effects move by one Newton step towards their joint mode (b^_g, with curvature H_g; the
   Hessian is arrowhead, solved by eliminating the groups);
2. the likelihood's positive parameters (sigma, ...) move by one Newton step towards the zero
   of their gradient's expectation over b_g ~ N(b^_g, H_g^-1) (``_positive_m_step``);
3. the group sds and correlation follow from the effects' second moments, Psi = mean over
   groups of b^_g b^_g^T + H_g^-1, each log tau at the mode of that population's expected
   log density plus tau's prior (``_set_population``).

EM stops when tau and the base coordinates change by less than ``EM_TOL``. Each group's
centring lambda_gk = 1 / (1 + tau_k^2 J_gk) then follows from the data's information about its
effect, J_gk = (H_g - Psi^-1)_kk (``MultilevelModel`` doc: 1 is non-centred, for groups the data
say little about; 0 centred, for groups they pin down). The frame is the Laplace approximation
at that point: the arrowhead Hessian (globals dense, each group a K x K block, every group
coupled to the globals) by central differences of the hand-derived gradient, all of them in
one pass of the grouped kernel (the groups are independent given the globals, so one
perturbation of term k in every group at once gives every group's column k), inverted
blockwise into a structured factor (``families.structured.StructuredFactor.from_precision``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from vireg.errors import FitError

EM_MAX_ITERATIONS = 200
EM_TOL = 1e-4
FD_STEP = 1e-5
# Group sds are kept above this fraction of the response's scale: EM's fixed point for a
# population of effects the data cannot tell apart from 0 is tau = 0, which has no log.
MIN_TAU_FRACTION = 1e-3
MAX_START_CORRELATION = 0.9
# The largest move of a positive parameter's log in one M-step: far from the mode the
# curvature can be nearly singular.
MAX_BASE_STEP = 1.0
QUIET = {"over": "ignore", "invalid": "ignore", "divide": "ignore", "under": "ignore"}


@dataclass(frozen=True)
class GroupedLaplace:
    """The start of a model with group terms (module doc): the point ``mode`` (the marginal
    mode of the globals, the groups' conditional modes), the arrowhead precision there as a
    structured factor ``frame``, log p at the point, and the passes it took."""

    mode: np.ndarray
    factor: object
    log_p: float
    em_iterations: int
    passes: int
    newton_steps: int = 0

    @property
    def frame(self):
        return self.factor, self.factor.log_det

    @cached_property
    def sd(self) -> np.ndarray:
        """Marginal sds of the Laplace approximation (rows of the factor)."""
        return np.sqrt(self.factor.row_norms2())

    @property
    def meanfield_sd(self) -> np.ndarray:
        return self.sd


def arrowhead_hessian(model, u: np.ndarray, with_point: bool = False):
    """-d2 log p / du2 at u in arrowhead blocks (H_GG (Pg, Pg), H_cross (G, K, Pg),
    H_blocks (G, K, K)) by central differences of the gradient: 2 (Pg + K) draws in one pass;
    ``with_point`` adds u itself as a draw and returns (log p, gradient, blocks)."""
    Pg, K, G = model.n_global, model.groups.K, model.groups.n_groups
    h = FD_STEP * np.maximum(1.0, np.abs(u))
    n = Pg + K
    U = np.repeat(u[None, :], 2 * n + 1, axis=0)
    for j in range(Pg):
        U[j, j] += h[j]
        U[n + j, j] -= h[j]
    steps = np.empty((K, G))
    for k in range(K):
        cols = Pg + np.arange(G) * K + k
        U[Pg + k, cols] += h[cols]
        U[n + Pg + k, cols] -= h[cols]
        steps[k] = h[cols]
    with np.errstate(**QUIET):
        lp, grads = model.log_joint_grad(U if with_point else U[:2 * n])
    D = -(grads[:n] - grads[n:2 * n])  # (n, P): row j is 2 h_j times column j of H
    H_GG = D[:Pg, :Pg] / (2.0 * h[:Pg, None])
    H_GG = 0.5 * (H_GG + H_GG.T)
    H_cross = (D[:Pg, Pg:] / (2.0 * h[:Pg, None])).reshape(Pg, G, K).transpose(1, 2, 0)
    blocks = D[Pg:, Pg:].reshape(K, G, K) / (2.0 * steps[:, :, None])  # [k, g, l] = H_g[l, k]
    H_blocks = blocks.transpose(1, 2, 0)
    H_blocks = 0.5 * (H_blocks + H_blocks.transpose(0, 2, 1))
    if with_point:
        return float(lp[-1]), grads[-1], (H_GG, H_cross, H_blocks)
    return H_GG, H_cross, H_blocks


def arrowhead_solve(H_GG, H_cross, H_blocks, g_G, g_w):
    """x = H^-1 g for the arrowhead H (globals block H_GG, coupling H_cross, blocks H_blocks) by
    elimination of the groups: S = H_GG - sum_g C_g^T D_g^-1 C_g, x_G = S^-1 (g_G - sum_g
    C_g^T D_g^-1 g_g), x_g = D_g^-1 (g_g - C_g x_G). Raises LinAlgError where S or a D_g is
    singular."""
    Dinv_C = np.linalg.solve(H_blocks, H_cross)  # (G, K, Pg)
    Dinv_g = np.linalg.solve(H_blocks, g_w[:, :, None])[:, :, 0]
    S = H_GG - np.einsum("gkp,gkq->pq", H_cross, Dinv_C)
    x_G = np.linalg.solve(S, g_G - np.einsum("gkp,gk->p", H_cross, Dinv_g))
    return x_G, Dinv_g - Dinv_C @ x_G


def _log_joint_grad(model, u: np.ndarray) -> tuple[float, np.ndarray]:
    with np.errstate(**QUIET):
        lp, g = model.log_joint_grad(u[None, :])
    return float(lp[0]), g[0]


def em_map(model, u: np.ndarray, floor: float) -> tuple[np.ndarray, int]:
    """One EM iteration in centred coordinates (module doc): the E-step's conditional mode as
    one Newton step of the location coordinates and the effects jointly (tau, the correlation
    and the positive parameters held), halved while log p falls; then the M-steps of the
    positive parameters (``_positive_m_step``) and of Psi. Returns (u, passes)."""
    nb, Pg, K, G = model.n_base_params, model.n_global, model.groups.K, model.groups.n_groups
    k = model.n_location
    lp, g, (H_GG, H_cross, H_blocks) = arrowhead_hessian(model, u, with_point=True)
    passes = 1
    try:
        np.linalg.cholesky(H_blocks)
    except np.linalg.LinAlgError:  # a likelihood that is not log-concave (Student-t)
        H_blocks = _positive(H_blocks)
    g_w = g[Pg:].reshape(G, K)
    try:
        x_b, x_w = arrowhead_solve(H_GG[:k, :k], H_cross[:, :, :k], H_blocks, g[:k], g_w)
    except np.linalg.LinAlgError:
        x_b, x_w = np.zeros(k), g_w / np.maximum(np.abs(np.diagonal(H_blocks, 0, 1, 2)), 1.0)
    t, out = 1.0, u
    while t > 1e-6:
        trial = u.copy()
        trial[:k] += t * x_b
        trial[Pg:] += t * x_w.ravel()
        lp_trial, _ = _log_joint_grad(model, trial)
        passes += 1
        if lp_trial >= lp - 1e-12 * abs(lp):
            out = trial
            break
        t *= 0.5
    b = out[Pg:].reshape(G, K)
    V = np.linalg.inv(H_blocks)
    out = out.copy()
    passes += _positive_m_step(model, out, V, H_GG[k:nb, k:nb])
    psi = (b.T @ b + V.sum(axis=0)) / G
    _set_population(model, out, psi, floor)
    return out, passes


def _positive_m_step(model, u: np.ndarray, V: np.ndarray, H_pos: np.ndarray) -> int:
    """EM's M-step for the likelihood's positive parameters (sigma, phi, nu), in place: a
    Newton step (at most MAX_BASE_STEP in each log) to where the expectation of their gradient
    over the groups' effects b_g ~ N(b^_g, V_g) vanishes (at b^ alone sigma comes out low by
    the effects' variance: 10% at 20 rows per group). The expectation is the unscented one,
    exact for a gaussian likelihood: 2K draws, draw (k, +-) moving every group's effects by
    +-sqrt(K) column k of chol(V_g) at once (the log likelihood is a sum over groups, so each
    group gets its own K-point rule); one pass. Returns the passes made. (The location
    coordinates move with the effects in ``em_map``'s joint step: for a gaussian likelihood
    their joint mode given the variances is the generalised least-squares estimate,
    Henderson's mixed model equations. Taking the expectation for them too, with the
    effects at their modes, drifts for a Poisson model: exp(b) averages above exp(b^), the
    intercept falls, the effects and tau rise, without end.)"""
    nb, Pg, K, k = model.n_base_params, model.n_global, model.groups.K, model.n_location
    if nb == k:
        return 0
    try:
        chol = np.linalg.cholesky(V)
    except np.linalg.LinAlgError:
        return 0
    U = np.repeat(u[None, :], 2 * K, axis=0)
    for col in range(K):
        shift = np.sqrt(K) * chol[:, :, col].ravel()
        U[2 * col, Pg:] += shift
        U[2 * col + 1, Pg:] -= shift
    with np.errstate(**QUIET):
        _, grads = model.log_joint_grad(U)
    try:
        step = np.linalg.solve(H_pos, grads[:, k:nb].mean(axis=0))
    except np.linalg.LinAlgError:
        return 1
    if np.all(np.isfinite(step)):
        u[k:nb] += np.clip(step, -MAX_BASE_STEP, MAX_BASE_STEP)
    return 1


def _set_population(model, u: np.ndarray, psi: np.ndarray, floor: float) -> None:
    """Write tau and the correlation into u: each log tau_k the mode in log tau of the effects'
    expected log density plus tau's prior with its Jacobian (``_log_tau_mode``; at least
    ``floor``), the correlation that of Psi."""
    nb, K, G = model.n_base_params, model.groups.K, model.groups.n_groups
    t = np.array([_log_tau_mode(model.group_sd, G * psi[k, k], G, u[nb + k])
                  for k in range(K)])
    tau = np.exp(np.maximum(t, np.log(floor)))
    u[nb:nb + K] = np.log(tau)
    if model.groups.n_cor:
        rho = psi[0, 1] / (tau[0] * tau[1])
        u[nb + K] = np.arctanh(np.clip(rho, -MAX_START_CORRELATION, MAX_START_CORRELATION))


def _log_tau_mode(prior, A: float, G: int, t: float) -> float:
    """The t = log tau maximising -G t - A e^(-2 t) / 2 + log p(t) (A the sum over groups of
    E[b_gk^2], p tau's prior on log tau with its Jacobian), by Newton's method on
    f(t) = -G + A e^(-2 t) + d/dt log p(t), which falls from +inf to below 0. Without the prior
    this is EM's tau^2 = A / G; with it, a population the data cannot tell from 0 (A / G far
    below the effects' own variance) keeps the tau where the prior and the Jacobian put it,
    instead of EM's slow slide to 0."""
    if not np.isfinite(t):
        t = 0.5 * np.log(max(A / G, 1e-300))
    for _ in range(50):
        x = np.array([t])
        f = -G + A * np.exp(-2.0 * t) + float(prior.grad(x)[0])
        fp = -2.0 * A * np.exp(-2.0 * t) + float(prior.hess(x)[0])
        step = -f / fp if fp < 0 else np.sign(f)
        t += float(np.clip(step, -2.0, 2.0))
        if abs(step) < 1e-10:
            break
    return t


def _clamp(model, u: np.ndarray, floor: float) -> np.ndarray:
    """u with log tau at least log ``floor`` and the correlation within MAX_START_CORRELATION
    (SQUAREM's extrapolation can overshoot them)."""
    nb, K = model.n_base_params, model.groups.K
    u = u.copy()
    u[nb:nb + K] = np.maximum(u[nb:nb + K], np.log(floor))
    if model.groups.n_cor:
        c = np.arctanh(MAX_START_CORRELATION)
        u[nb + K] = np.clip(u[nb + K], -c, c)
    return u


def run_em(model, u: np.ndarray, floor: float) -> tuple[np.ndarray, int, int]:
    """EM to its fixed point, accelerated by SQUAREM (Varadhan and Roland 2008: from u0 two EM
    maps u1, u2, r = u1 - u0, v = u2 - u1 - r, alpha = -|r| / |v|, the extrapolation
    u0 - 2 alpha r + alpha^2 v, then one more map), which takes EM's many small steps where the
    data say little about the groups in a few; returns (u, iterations, passes)."""
    nb, K = model.n_base_params, model.groups.K
    passes = 0
    for iteration in range(1, EM_MAX_ITERATIONS + 1):
        u1, p1 = em_map(model, u, floor)
        u2, p2 = em_map(model, u1, floor)
        passes += p1 + p2
        r, v = u1 - u, u2 - u1 - (u1 - u)
        alpha = -np.sqrt((r @ r) / (v @ v)) if v @ v > 0 else -1.0
        alpha = min(alpha, -1.0)
        extrapolated = _clamp(model, u - 2.0 * alpha * r + alpha * alpha * v, floor)
        # SQUAREM's safeguard, with log p as the objective's stand-in: an extrapolation that
        # lands below the last EM iterate is dropped for that iterate.
        lp_ok = (np.all(np.isfinite(extrapolated))
                 and _log_joint_grad(model, extrapolated)[0] >= _log_joint_grad(model, u2)[0])
        u_next, p3 = em_map(model, extrapolated if lp_ok else u2, floor)
        passes += p3 + 2
        change = np.max(np.abs(u_next[:nb + K] - u[:nb + K]))
        u = u_next
        if change < EM_TOL:
            return u, iteration, passes
    return u, EM_MAX_ITERATIONS, passes


def find_start(model, u0: np.ndarray) -> GroupedLaplace:
    """The start of a fit of a ``MultilevelModel`` (module doc) from u0 (the base model's
    start in its base coordinates); sets the model's centring."""
    from vireg.families.structured import StructuredFactor
    from vireg.models.multilevel import population_cov

    nb, K, G = model.n_base_params, model.groups.K, model.groups.n_groups
    scale = model.y_scale if model.likelihood.HAS_SCALE else 1.0
    model.centring = np.zeros((G, K))
    model.cor_centring = np.zeros(G)
    u = np.array(u0, dtype=np.float64)
    u[nb:nb + K] = np.log(0.5 * scale)
    u, iterations, passes = run_em(model, u, MIN_TAU_FRACTION * scale)
    if not np.all(np.isfinite(u)):
        raise FitError("the start of the fit with group terms is not finite: check the data "
                       "and priors")
    _, _, H_blocks = arrowhead_hessian(model, u)
    tau = np.exp(u[nb:nb + K])
    psi_inv = np.linalg.inv(population_cov(u[None], nb, K, bool(model.groups.n_cor))[0])
    info = np.diagonal(H_blocks - psi_inv[None], axis1=1, axis2=2)
    lam = 1.0 / (1.0 + tau[None, :] ** 2 * np.maximum(info, 0.0))
    u = model.set_centring(lam, cor_centring(lam), u)[0]
    H_GG, H_cross, H_blocks = arrowhead_hessian(model, u)
    factor = _factor(StructuredFactor, H_GG, H_cross, H_blocks)
    log_p, _ = _log_joint_grad(model, u)
    return GroupedLaplace(u, factor, log_p, iterations, passes + 3)


def cor_centring(lam: np.ndarray) -> np.ndarray:
    """mu_g, how far group g's correlation is non-centred: the mean of its terms' lambda."""
    return lam.mean(axis=1)


def _factor(cls, H_GG, H_cross, H_blocks):
    """The structured factor of the arrowhead precision. Where a block or the globals' Schur
    complement is not positive definite (a likelihood that is not log-concave, such as
    Student-t's, or a start away from the joint mode, with negative curvature along log tau),
    its eigenvalues are made positive: |value|, at least a tenth of the smallest positive one
    (``_positive``)."""
    try:
        return cls.from_precision(H_GG, H_cross, H_blocks)
    except np.linalg.LinAlgError:
        pass
    H_blocks = _positive(H_blocks)
    blocks_inv = np.linalg.inv(H_blocks)
    coupling = np.einsum("gkp,gkl,glq->pq", H_cross, blocks_inv, H_cross)
    H_GG = _positive((H_GG - coupling)[None])[0] + coupling
    return cls.from_precision(H_GG, H_cross, H_blocks)


def _positive(H: np.ndarray) -> np.ndarray:
    """Each symmetric matrix of the stack H (n, k, k) with its eigenvalues replaced by their
    absolute values, floored at a tenth of the smallest positive eigenvalue in the stack (1
    where there is none)."""
    vals, vecs = np.linalg.eigh(0.5 * (H + np.swapaxes(H, 1, 2)))
    positive = vals[vals > 0]
    floor = 0.1 * (positive.min() if positive.size else 1.0)
    vals = np.maximum(np.abs(vals), floor)
    return vecs @ (vals[:, :, None] * np.swapaxes(vecs, 1, 2))
