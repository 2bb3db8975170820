"""Diagnostics: Pareto-smoothed importance sampling (PSIS) and its k-hat, and the
gradient-variance study behind ``vireg gradvar``.

k-hat (Yao et al. 2018, "Yes, but did it work?"): draw theta_m ~ q, form the log importance ratios
log w_m = log p(y, theta_m) - log q(theta_m), and fit a generalized Pareto distribution to the
largest min(M/5, 3 sqrt(M)) ratios with the estimator of Zhang and Stephens (2009), as in ArviZ
and the R package loo. Its shape k-hat says how heavy the tail of the ratios is: below 0.5 q is a
good importance proposal for the posterior, 0.5 - 0.7 usable, above 0.7 the Gaussian
approximation is unreliable (and importance sampling cannot repair it).
"""

from __future__ import annotations

import math

import numpy as np

KHAT_GOOD = 0.5
KHAT_BAD = 0.7
# Below this sd of the log ratios, importance weights differ by a few percent in the bulk: a large
# k-hat then reflects the far tails (e.g. the skew of a logistic posterior), not the bulk.
SMALL_LOG_RATIO_SD = 0.1


def gpd_fit(x: np.ndarray) -> tuple[float, float]:
    """Shape k and scale sigma of a generalized Pareto distribution fitted to exceedances x > 0
    (sorted ascending), Zhang and Stephens (2009) with the weakly informative prior on k that
    ArviZ and loo use."""
    n = x.size
    prior_bs, prior_k = 3.0, 10.0
    quartile = x[int(n / 4 + 0.5) - 1]
    if not (quartile > 0 and np.isfinite(x[-1])):  # most exceedances 0: a tail beyond any k
        return float("inf"), float("nan")
    m_est = 30 + int(math.sqrt(n))
    b = 1.0 - np.sqrt(m_est / (np.arange(1, m_est + 1) - 0.5))
    b /= prior_bs * quartile
    b += 1.0 / x[-1]
    k = np.log1p(-b[:, None] * x).mean(axis=1)
    len_scale = n * (np.log(-(b / k)) - k - 1.0)
    weights = 1.0 / np.exp(len_scale - len_scale[:, None]).sum(axis=1)
    keep = weights >= 10 * np.finfo(float).eps
    weights, b = weights[keep], b[keep]
    weights /= weights.sum()
    b_post = float(np.sum(b * weights))
    if not (np.isfinite(b_post) and b_post != 0.0):
        return float("inf"), float("nan")
    k_post = float(np.log1p(-b_post * x).mean())
    sigma = -k_post / b_post  # from the unadjusted k, as in loo and ArviZ
    k_post = (n * k_post + prior_k * 0.5) / (n + prior_k)
    return k_post, sigma


def _gpd_quantiles(p: np.ndarray, k: float, sigma: float) -> np.ndarray:
    if abs(k) < 1e-12:
        return -sigma * np.log1p(-p)
    return sigma * np.expm1(-k * np.log1p(-p)) / k


def psis(log_ratios: np.ndarray) -> tuple[np.ndarray, float]:
    """Pareto-smoothed log weights (normalised) and k-hat for one set of log importance ratios.

    Degenerate tails never raise: non-finite ratios (a draw where log p is not finite), fewer
    than 10 draws, or a tail in which one ratio dominates (the others' exceedances round to 0)
    give k-hat = inf; ratios all equal (q proportional to the posterior) give k-hat = 0 and
    equal weights."""
    lw = np.asarray(log_ratios, dtype=float).copy()
    n = lw.size
    if n < 10 or not np.all(np.isfinite(lw)):
        with np.errstate(invalid="ignore"):  # inf - inf: the weights are undefined, k-hat inf
            return lw - (np.logaddexp.reduce(lw) if n else 0.0), float("inf")
    if lw.max() - lw.min() <= 1e-12 * max(1.0, abs(lw.max())):
        return np.full(n, -math.log(n)), 0.0
    lw -= lw.max()
    tail_len = int(math.ceil(min(0.2 * n, 3.0 * math.sqrt(n))))
    order = np.argsort(lw)
    cutoff = lw[order[n - tail_len - 1]]
    tail_idx = order[n - tail_len:]
    exceed = np.exp(lw[tail_idx]) - math.exp(cutoff)
    if np.all(exceed <= 0) or tail_len < 5:
        return lw - np.logaddexp.reduce(lw), float("inf")
    k, sigma = gpd_fit(exceed)
    if np.isfinite(k):
        p = (np.arange(1, tail_len + 1) - 0.5) / tail_len
        smoothed = np.log(_gpd_quantiles(p, k, sigma) + math.exp(cutoff))
        lw[tail_idx] = np.minimum(smoothed, 0.0)  # truncate at the largest raw weight
    return lw - np.logaddexp.reduce(lw), k


def relative_ess(log_weights: np.ndarray) -> float:
    """Effective sample size of normalised importance weights over the number of draws."""
    w = np.exp(log_weights - np.logaddexp.reduce(log_weights))
    return float(1.0 / np.sum(w * w) / w.size)


def _shown(k: float) -> str:
    """k with two decimals, or as many more as it takes not to print as a threshold it is not
    (a warning that read "k-hat 0.70 > 0.7" contradicted itself)."""
    for digits in range(2, 7):
        text = f"{k:.{digits}f}"
        if float(text) not in (KHAT_GOOD, KHAT_BAD) or k in (KHAT_GOOD, KHAT_BAD):
            return text
    return text


def _advice(family: str | None) -> str:
    """What is left to try after a bad k-hat, for the run's variational family."""
    if family == "fullrank":
        return ("; q is already full-rank, so what is left is the model: proper priors on weakly "
                "identified parameters, more data, or output.psis: true for importance-weighted "
                "summaries")
    if family == "structured":
        return ("; the group sds and correlations are where a Gaussian q falls short: their "
                "posteriors reach toward zero further than q does, so read their sds as too "
                "narrow and their means, and the group effects' shrinkage, as approximate "
                "(importance weighting cannot repair this at such a k-hat); give the group sds "
                "informative priors (model.prior.group_sd) or check them with MCMC")
    return ("; try inference.family: fullrank, more inference.samples, or check the model (flat "
            "priors, heavy tails, few rows)")


def khat_message(k: float, log_ratio_sd: float | None = None, ess: float | None = None,
                 family: str | None = None) -> str:
    """A plain-words verdict on k-hat, with the spread of the log ratios when it explains it and
    advice that fits the run's variational family."""
    if np.isnan(k):
        return "k-hat could not be computed (non-finite importance ratios)"
    if not np.isfinite(k):
        return ("warning: Pareto k-hat is infinite: one draw's ratio p/q dominates all others (or "
                "some ratios are not finite), so q misses where the posterior puts its mass"
                + _advice(family))
    if k <= KHAT_GOOD:
        return (f"Pareto k-hat {_shown(k)} (<= {KHAT_GOOD}): q is a good approximation of the "
                "posterior")
    if k <= KHAT_BAD:
        check = ("more draws" if family == "fullrank" else
                 "output.psis: true (importance-weighted summaries)" if family == "structured"
                 else "more draws or family: fullrank")
        return (f"Pareto k-hat {_shown(k)} (between {KHAT_GOOD} and {KHAT_BAD}): the approximation "
                f"is usable, but check the results with {check}")
    text = (f"warning: Pareto k-hat {_shown(k)} > {KHAT_BAD}: the ratios p/q have a heavy right "
            "tail, so the Gaussian approximation is unreliable in the tails and importance "
            "sampling cannot repair it")
    if log_ratio_sd is not None and ess is not None and log_ratio_sd < SMALL_LOG_RATIO_SD:
        return (text + f"; the ratios vary little where q puts its mass (sd of log ratios "
                f"{log_ratio_sd:.2g}, importance ESS {100 * ess:.0f}%), so means and sds are "
                "likely close, but check tail quantities")
    return text + _advice(family)


def weighted_summary(values: np.ndarray, log_w: np.ndarray) -> dict[str, np.ndarray]:
    """mean, sd and 5/50/95% quantiles of each column of values under normalised log weights."""
    w = np.exp(log_w - np.logaddexp.reduce(log_w))
    mean = w @ values
    sd = np.sqrt(np.maximum(w @ (values - mean) ** 2, 0.0))
    q = np.empty((3, values.shape[1]))
    for j in range(values.shape[1]):
        order = np.argsort(values[:, j])
        cdf = np.cumsum(w[order])
        q[:, j] = np.interp([0.05, 0.5, 0.95], cdf - 0.5 * w[order], values[order, j])
    return {"mean": mean, "sd": sd, "q5": q[0], "q50": q[1], "q95": q[2]}


ESTIMATOR_NAMES = ("reparam", "stl", "score")


def gradient_variance(model, family, phi: np.ndarray, draws: int, rng: np.random.Generator,
                      batch: int = 8, reference_factor: int = 4) -> dict:
    """Single-draw ELBO gradients of every estimator at phi, from common random numbers.

    Each batch of ``batch`` draws is one pass of the data kernel; every estimator's per-draw
    gradient comes from the same draws (the score function's leave-one-out baseline uses the
    other draws of its batch). A high-precision gradient, the mean of ``reference_factor * draws``
    further reparameterisation draws, is the yardstick for the bias.
    """
    per = {e: [] for e in ESTIMATOR_NAMES}
    reference = []
    n_batches = -(-draws // batch)
    for i in range(n_batches * (1 + reference_factor)):
        eps = rng.standard_normal((batch, model.n_params))
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            logp, g = model.log_joint_grad(family.sample(phi, eps))
            if i < n_batches:
                for e in ESTIMATOR_NAMES:
                    per[e].append(family.draw_grads(phi, eps, logp, g, e))
            else:
                reference.append(family.draw_grads(phi, eps, logp, g, "reparam"))
    ref = np.vstack(reference)
    g_ref = ref.mean(axis=0)
    ref_noise = float(ref.var(axis=0, ddof=1).sum() / ref.shape[0])
    out = {"draws": n_batches * batch, "reference_draws": ref.shape[0], "estimators": {}}
    base_trace = None
    for e in ESTIMATOR_NAMES:
        G = np.vstack(per[e])
        var = G.var(axis=0, ddof=1)
        trace = float(var.sum())
        base_trace = trace if base_trace is None else base_trace
        out["estimators"][e] = {
            "trace_cov": trace,
            "ratio_to_reparam": trace / base_trace,
            "sq_bias": float(np.sum((G.mean(axis=0) - g_ref) ** 2)),
            "sq_bias_noise": trace / G.shape[0] + ref_noise,
            "variances": var,
        }
    return out
