"""The fitted q as a posterior: exact summaries on the natural scale, and draws with the log
densities the diagnostics need."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

Z95 = 1.6448536269514722  # standard normal 95% quantile
# Draws for the ELBO after a fit even when none are written out and k-hat is off.
MIN_DRAWS = 256
# Draws behind the group effects' summaries (groups.csv) when output.draws asks for fewer.
GROUP_DRAWS = 1000


@dataclass(frozen=True)
class Summary:
    """Posterior summaries of q on the natural scale, one entry per parameter."""

    names: list[str]
    mean: np.ndarray
    sd: np.ndarray
    q5: np.ndarray
    q50: np.ndarray
    q95: np.ndarray


def natural_summary(model, mean_u: np.ndarray, cov_u: np.ndarray) -> tuple[Summary, np.ndarray,
                                                                             np.ndarray]:
    """Exact summaries of q pushed to the natural scale.

    theta = T u + c is Gaussian with mean T m + c and covariance T Sigma T^T; the intercept and
    coefficients are reported as those normal marginals, each positive parameter (sigma, phi,
    nu) = exp(its log) as a log-normal.
    """
    mean_t = model.T @ mean_u + model.c
    cov_t = model.T @ cov_u @ model.T.T
    sd_t = np.sqrt(np.diag(cov_t))
    mean, sd = mean_t.copy(), sd_t.copy()
    q5, q50, q95 = mean_t - Z95 * sd_t, mean_t.copy(), mean_t + Z95 * sd_t
    summary = Summary(model.param_names, mean, sd, q5, q50, q95)
    _log_normal(mean_t, cov_t, model.n_location, summary)
    return summary, mean_t, cov_t


def _log_normal(mean_t: np.ndarray, cov_t: np.ndarray, first: int, out: Summary) -> None:
    """Overwrite the summaries of parameters ``first`` on (positive, fitted as logs) with those of
    the log-normal exp(theta_i)."""
    for i in range(first, len(mean_t)):
        mu, v = mean_t[i], cov_t[i, i]
        out.mean[i] = math.exp(mu + 0.5 * v)
        out.sd[i] = out.mean[i] * math.sqrt(math.expm1(v))
        s = math.sqrt(v)
        out.q5[i], out.q50[i], out.q95[i] = (math.exp(mu - Z95 * s), math.exp(mu),
                                             math.exp(mu + Z95 * s))


def natural_cov(model, mean_t: np.ndarray, cov_t: np.ndarray) -> np.ndarray:
    """Covariance of q over the natural parameters (intercept, coefficients, then sigma, phi or
    nu).

    For jointly Gaussian (x, tau), Stein's lemma gives Cov(x, e^tau) = Cov(x, tau) E[e^tau];
    for two logs, Cov(e^tau_i, e^tau_j) = E[e^tau_i] E[e^tau_j] (e^Sigma_ij - 1).
    """
    cov = cov_t.copy()
    k = model.n_location
    if k == len(mean_t):
        return cov
    e = np.exp(mean_t[k:] + 0.5 * np.diag(cov_t)[k:])
    cov[:k, k:] = cov_t[:k, k:] * e
    cov[k:, :k] = cov[:k, k:].T
    cov[k:, k:] = np.outer(e, e) * np.expm1(cov_t[k:, k:])
    return cov


def original_scale(model, mean_t: np.ndarray, cov_t: np.ndarray) -> Summary | None:
    """With data.standardize: the summaries of q for coefficients of the covariates as given.

    beta_j = beta_z,j / sd_j and alpha = alpha_z - sum_j beta_z,j mean_j / sd_j, an affine map A,
    so the natural parameters stay normal (mean A m, covariance A Sigma A^T); sigma is unchanged.
    """
    st = model.design.standardization
    if st is None:
        return None
    mean, sd = np.asarray(st["mean"]), np.asarray(st["sd"])
    P, off, D = model.n_params, int(model.intercept), model.n_cov
    A = np.eye(P)
    A[off:off + D, off:off + D] = np.diag(1.0 / sd)
    if model.intercept:
        A[0, off:off + D] = -mean / sd
    m, cov = A @ mean_t, A @ cov_t @ A.T
    s = np.sqrt(np.diag(cov))
    out = Summary(model.param_names, m.copy(), s.copy(), m - Z95 * s, m.copy(), m + Z95 * s)
    _log_normal(mean_t, cov_t, model.n_location, out)  # sigma: as in natural_summary
    return out


def to_natural(model, U: np.ndarray) -> np.ndarray:
    """Draws in u to the natural scale (intercept, coefficients, then sigma, phi or nu), one row
    per draw (a model with group terms: ``natural``, its reported quantities)."""
    if hasattr(model, "natural"):
        return model.natural(U)
    theta = model.to_theta(U)
    k = model.n_location
    theta[:, k:] = np.exp(theta[:, k:])
    return theta


@dataclass(frozen=True)
class Diagnosing:
    """The optimisation has ended; ``done`` of ``total`` draws from q have had their log joint
    evaluated over the full data (for the ELBO, k-hat and the output draws)."""

    done: int
    total: int


@dataclass(frozen=True)
class PosteriorDraws:
    """Draws from the fitted q with what the diagnostics need: log p(y, theta) and log q(theta)
    over theta = (intercept, coefficients, log sigma), and the PSIS k-hat of their ratios."""

    natural: np.ndarray
    log_p: np.ndarray
    log_q: np.ndarray
    khat: float | None
    log_weights: np.ndarray | None  # Pareto-smoothed, normalised, for the first psis_draws draws
    log_ratio_sd: float | None
    ess: float | None  # relative effective sample size of the smoothed weights
    elbo: float
    elbo_se: float
    group_effects: list | None = None  # models with group terms: per factor b (draws, G, K)


def draw_posterior(model, family, phi: np.ndarray, n_draws: int, psis_draws: int,
                   rng: np.random.Generator) -> Iterator[Diagnosing]:
    """Draw max(n_draws, psis_draws, MIN_DRAWS) from q, evaluate the log joint over the full data for
    each (one kernel pass per batch of draws, a ``Diagnosing`` event after each), and compute the
    ELBO and k-hat from them: ``post = yield from draw_posterior(...)``."""
    from vireg.diagnostics import psis, relative_ess

    M = max(n_draws, psis_draws, MIN_DRAWS)
    eps = rng.standard_normal((M, model.n_params))
    U = family.sample(phi, eps)
    log_p = np.empty(M)
    for start, values in model.log_joint_batches(U):
        log_p[start:start + values.size] = values
        yield Diagnosing(start + values.size, M)
    log_q = family.log_q(phi, eps) - model.log_det_T  # density of q over theta
    finite = log_p[np.isfinite(log_p)]
    elbo = float(finite.mean()) + family.entropy(phi) + model.log_det_T
    elbo_se = float(finite.std(ddof=1) / np.sqrt(finite.size))
    khat, log_w, ratio_sd, ess = None, None, None, None
    if psis_draws > 0:
        log_ratio = log_p[:psis_draws] - log_q[:psis_draws]
        log_w, khat = psis(log_ratio)
        khat = float(khat)
        ratio_sd = float(np.std(log_ratio)) if np.all(np.isfinite(log_ratio)) else float("inf")
        ess = relative_ess(log_w)
    # Group effects (draws x groups x terms) of the draws that are reported, not of every
    # k-hat draw: at 10,000 groups they cost 2 s per 1,000 draws.
    groups = (model.group_effects(U[:max(n_draws, MIN_DRAWS, GROUP_DRAWS)])
              if hasattr(model, "group_effects") else None)
    return PosteriorDraws(to_natural(model, U), log_p, log_q, khat, log_w, ratio_sd, ess, elbo,
                          elbo_se, groups)


def draw_stream(seed: int) -> np.random.Generator:
    """The random stream of a fit's draws from q (``draw_posterior``'s, from
    inference.seed): the second of the three the fit spawns (optimiser, draws, minibatches)."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[1])


def fitted_q(doc: dict):
    """(family, phi) of the q a run's fit.json records, over u in the identity frame."""
    from vireg.families import make_family
    from vireg.families.structured import Structured

    var = doc["variational"]
    groups = doc["design"].get("groups")
    if var["family"] == "structured":
        from vireg.models.multilevel import records_of

        segments = groups.get("segments") or [(len(r["levels"]), len(r["terms"]))
                                              for r in records_of(groups)]
        family = Structured(groups.get("n_joint", groups["n_global"]), segments)
    else:
        family = make_family(var["family"], len(var["m"]))
    return family, family.from_dict(var)


def redrawn(doc: dict, n: int) -> np.ndarray:
    """The first n draws of u that the fit itself drew from its q (``draw_posterior``, same
    stream and count), to rounding: for a model whose draws.csv cannot give u back (group
    effects are not in it)."""
    cfg = doc["config"]
    family, phi = fitted_q(doc)
    M = max(cfg["output"]["draws"], cfg["output"]["psis_draws"], MIN_DRAWS)
    eps = draw_stream(cfg["inference"]["seed"]).standard_normal((M, family.P))
    return family.sample(phi, eps[:n])
