"""PSIS-LOO for the variational posterior, behind ``vireg loo``.

Leave-one-out by importance sampling (Vehtari, Gelman and Gabry 2017): for observation i, the
draws theta_s from the posterior are reweighted by 1 / p(y_i | theta_s) to draws from the posterior
without y_i, and the weights are Pareto smoothed (PSIS), whose shape k_i says whether they can be
trusted. vireg's draws come from q, not from the posterior, so the ratios carry q's own
correction as well (Magnusson et al. 2019; ``loo::loo_approximate_posterior``):

    log r_is = -log p(y_i | theta_s) + log p(theta_s, y) - log q(theta_s)

(log p - log q from draws.csv: theta with positive parameters on the log scale, the same space
for both densities, and a normalising constant that the normalised weights cancel). With the
weights lw_is normalised over s,

    elpd_i = log sum_s exp(lw_is) p(y_i | theta_s),   elpd_loo = sum_i elpd_i,
    se = sqrt(N var_i(elpd_i)),   p_loo = sum_i (lpd_i - elpd_i),   looic = -2 elpd_loo,

where lpd_i = log sum_s w_s p(y_i | theta_s) is the in-sample predictive density under the
posterior (w_s: the Pareto-smoothed weights of log p - log q alone). Without the correction
(``correct=False``) the ratios are -log p(y_i | theta_s) alone and the weights w_s uniform:
ordinary PSIS-LOO treating q's draws as the posterior, as ArviZ's ``az.loo`` computes it for
one chain (relative efficiency 1, since the draws are independent; the same tail length,
generalized Pareto fit and se, ddof 0).

Subsampling (Magnusson et al. 2019, the difference estimator of ``loo::loo_subsample``): a
cheap approximation pi_i = log p(y_i | theta_hat) at the mean of the draws is computed for every
row (one kernel pass with one draw), and the exact elpd_i only for a simple random sample of m
rows without replacement:

    elpd_hat = sum_i pi_i + (N / m) sum_j (elpd_j - pi_j),
    subsampling variance  N^2 (1 - m / N) s_e^2 / m   (s_e^2: sample variance of elpd_j - pi_j),
    se^2 = t_hat - (elpd_hat^2 - v_sub) / N,   t_hat = sum_i pi_i^2 + (N / m) sum_j (elpd_j^2 - pi_j^2)

so that se estimates sqrt(N var_i(elpd_i)) as without subsampling; p_loo is the simple sample
estimate N mean_j p_j.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vireg.diagnostics import KHAT_BAD, KHAT_GOOD, psis
from vireg.errors import InputError

# Rows of log ratios smoothed at once by psis_rows (its generalized Pareto fit holds
# rows x (30 + sqrt(tail)) x tail numbers: about 1000 x 39 x 95 for 1,000 draws).
PSIS_ROWS_PER_BLOCK = 1000
# A subsample smaller than this cannot estimate its own variance usefully.
MIN_SUBSAMPLE = 10

CSV_COLUMNS = ["elpd_loo", "se", "p_loo", "p_loo_se", "looic", "looic_se", "mcse", "subsampling_se",
               "n_obs", "n_subsample", "n_draws", "corrected", "k_good", "k_ok", "k_bad",
               "k_threshold", "khat_max", "khat_posterior"]


def good_k(n_draws: int) -> float:
    """The sample-size-aware threshold on Pareto k (Vehtari et al. 2024): min(1 - 1/log10 S,
    0.7). Above it the importance-sampling estimate for that observation is unreliable."""
    return min(1.0 - 1.0 / math.log10(n_draws), KHAT_BAD)


# --- Pareto smoothing of many sets of ratios at once ------------------------------------------

def psis_rows(log_ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``diagnostics.psis`` applied to every row of an (n, S) array of log ratios, vectorised over
    the rows: (normalised smoothed log weights (n, S), k-hat (n,)). Row for row the same
    arithmetic as ``psis`` (the tests compare them)."""
    lr = np.asarray(log_ratios, dtype=float)
    out = np.empty_like(lr)
    k = np.empty(lr.shape[0])
    for lo in range(0, lr.shape[0], PSIS_ROWS_PER_BLOCK):
        hi = lo + PSIS_ROWS_PER_BLOCK
        out[lo:hi], k[lo:hi] = _psis_block(lr[lo:hi])
    return out, k


def _logsumexp_rows(a: np.ndarray) -> np.ndarray:
    m = np.max(a, axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return (m + np.log(np.sum(np.exp(a - m), axis=1, keepdims=True)))[:, 0]


def _psis_block(lr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, S = lr.shape
    k = np.full(n, np.inf)
    lw = lr.copy()
    if n == 0:
        return lw, k
    fine = np.all(np.isfinite(lw), axis=1)
    if S < 10:
        fine[:] = False
    top = np.max(lw, axis=1, keepdims=True)
    flat = fine & (top[:, 0] - np.min(lw, axis=1) <= 1e-12 * np.maximum(1.0, np.abs(top[:, 0])))
    lw[fine] -= top[fine]
    tail_len = int(math.ceil(min(0.2 * S, 3.0 * math.sqrt(S))))
    fit = fine & ~flat
    if tail_len >= 5 and np.any(fit):
        rows = np.flatnonzero(fit)
        sub = lw[rows]
        order = np.argsort(sub, axis=1, kind="stable")
        cutoff = np.take_along_axis(sub, order[:, S - tail_len - 1:S - tail_len], axis=1)[:, 0]
        tail_idx = order[:, S - tail_len:]
        exceed = np.exp(np.take_along_axis(sub, tail_idx, axis=1)) - np.exp(cutoff)[:, None]
        ok = np.any(exceed > 0, axis=1)
        kk, sigma = np.full(rows.size, np.inf), np.full(rows.size, np.nan)
        if np.any(ok):
            kk[ok], sigma[ok] = gpd_fit_rows(exceed[ok])
        smooth = np.isfinite(kk)
        if np.any(smooth):
            p = (np.arange(1, tail_len + 1) - 0.5) / tail_len
            q = _gpd_quantiles_rows(p, kk[smooth], sigma[smooth])
            smoothed = np.minimum(np.log(q + np.exp(cutoff[smooth])[:, None]), 0.0)
            block = sub[smooth]
            np.put_along_axis(block, tail_idx[smooth], smoothed, axis=1)
            sub[smooth] = block
        lw[rows] = sub
        k[rows] = kk
    k[flat] = 0.0
    with np.errstate(invalid="ignore"):  # inf - inf in a row with an infinite ratio: NaN weights
        out = lw - _logsumexp_rows(lw)[:, None]
    if np.any(flat):
        out[flat] = -math.log(S)
    return out, k


def gpd_fit_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``diagnostics.gpd_fit`` for every row of x (exceedances, each row sorted ascending)."""
    n_rows, n = x.shape
    prior_bs, prior_k = 3.0, 10.0
    quartile = x[:, int(n / 4 + 0.5) - 1]
    k_out, s_out = np.full(n_rows, np.inf), np.full(n_rows, np.nan)
    good = (quartile > 0) & np.isfinite(x[:, -1])
    if not np.any(good):
        return k_out, s_out
    xg = x[good]
    m_est = 30 + int(math.sqrt(n))
    b = 1.0 - np.sqrt(m_est / (np.arange(1, m_est + 1) - 0.5))
    b = b[None, :] / (prior_bs * quartile[good][:, None]) + 1.0 / xg[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        k = np.log1p(-b[:, :, None] * xg[:, None, :]).mean(axis=2)
        len_scale = n * (np.log(-(b / k)) - k - 1.0)
        weights = 1.0 / np.exp(len_scale[:, None, :] - len_scale[:, :, None]).sum(axis=2)
        weights = np.where(weights >= 10 * np.finfo(float).eps, weights, 0.0)
        weights /= weights.sum(axis=1, keepdims=True)
        b_post = np.sum(b * weights, axis=1)
        k_post = np.log1p(-b_post[:, None] * xg).mean(axis=1)
        sigma = -k_post / b_post
    k_post = (n * k_post + prior_k * 0.5) / (n + prior_k)
    valid = np.isfinite(b_post) & (b_post != 0.0)
    k_out[np.flatnonzero(good)[valid]] = k_post[valid]
    s_out[np.flatnonzero(good)[valid]] = sigma[valid]
    return k_out, s_out


def _gpd_quantiles_rows(p: np.ndarray, k: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    k_, s_ = k[:, None], sigma[:, None]
    small = np.abs(k_) < 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        general = s_ * np.expm1(-k_ * np.log1p(-p)[None, :]) / np.where(small, 1.0, k_)
    return np.where(small, -s_ * np.log1p(-p)[None, :], general)


# --- LOO from arrays ---------------------------------------------------------------------------

@dataclass
class Pointwise:
    """Per observation: elpd_i, p_loo_i = lpd_i - elpd_i, the Pareto k_i of its weights and
    the Monte Carlo variance of elpd_i (self-normalised importance sampling, delta method:
    sum_s w_s^2 (p_s - p_bar)^2 / p_bar^2 with p_s = p(y_i | theta_s), p_bar = sum_s w_s p_s)."""

    elpd: np.ndarray
    p_loo: np.ndarray
    k: np.ndarray
    mc_var: np.ndarray


def loo_pointwise(log_lik: np.ndarray, log_ratio: np.ndarray | None = None,
                  posterior_log_w: np.ndarray | None = None) -> Pointwise:
    """PSIS-LOO for each column of ``log_lik`` (S draws x n observations). ``log_ratio`` (S,):
    log p(theta_s, y) - log q(theta_s), the correction for draws from q (None: the draws are
    taken as posterior draws). ``posterior_log_w``: the normalised Pareto-smoothed weights of
    ``log_ratio`` (computed here if not given)."""
    ll = np.asarray(log_lik, dtype=float).T  # (n, S)
    S = ll.shape[1]
    ratios = -ll if log_ratio is None else np.asarray(log_ratio, dtype=float)[None, :] - ll
    lw, k = psis_rows(ratios)
    elpd = _logsumexp_rows(lw + ll)
    with np.errstate(invalid="ignore", over="ignore"):
        w = np.exp(lw)
        p = np.exp(ll - np.max(ll, axis=1, keepdims=True))
        p_bar = np.sum(w * p, axis=1, keepdims=True)
        mc_var = np.sum(w * w * (p - p_bar) ** 2, axis=1) / p_bar[:, 0] ** 2
    if log_ratio is None:
        lpd = _logsumexp_rows(ll) - math.log(S)
    else:
        if posterior_log_w is None:
            posterior_log_w = psis(log_ratio)[0]
        lpd = _logsumexp_rows(ll + posterior_log_w[None, :])
    return Pointwise(elpd, lpd - elpd, k, mc_var)


@dataclass
class LooResult:
    """PSIS-LOO estimates of one run (see the module docstring)."""

    elpd_loo: float
    se: float
    p_loo: float
    p_loo_se: float
    n_obs: int
    n_draws: int
    corrected: bool
    k_counts: tuple[int, int, int]  # observations with k <= 0.5, <= k_threshold, above
    k_threshold: float
    khat_max: float
    khat_posterior: float | None  # k-hat of log p - log q over the same draws (None: uncorrected)
    mcse: float  # Monte Carlo se of elpd_loo from the draws (sqrt of the summed pointwise variances)
    subsampling_se: float = 0.0
    n_subsample: int | None = None  # m with --subsample, else None (every observation)
    rows: np.ndarray | None = field(default=None, repr=False)  # observations of pointwise
    pointwise: Pointwise | None = field(default=None, repr=False)
    label: str = ""
    response_digest: str = ""  # of the observed responses: compare checks runs share them

    @property
    def looic(self) -> float:
        return -2.0 * self.elpd_loo

    @property
    def looic_se(self) -> float:
        return 2.0 * self.se

    @property
    def warning(self) -> bool:
        return self.k_counts[2] > 0

    def as_row(self) -> dict:
        return {"elpd_loo": self.elpd_loo, "se": self.se, "p_loo": self.p_loo,
                "p_loo_se": self.p_loo_se, "looic": self.looic, "looic_se": self.looic_se,
                "mcse": self.mcse, "subsampling_se": self.subsampling_se, "n_obs": self.n_obs,
                "n_subsample": self.n_subsample if self.n_subsample is not None else self.n_obs,
                "n_draws": self.n_draws, "corrected": self.corrected,
                "k_good": self.k_counts[0], "k_ok": self.k_counts[1], "k_bad": self.k_counts[2],
                "k_threshold": self.k_threshold, "khat_max": self.khat_max,
                "khat_posterior": self.khat_posterior}

    def messages(self) -> list[str]:
        """Warnings a user must read with the estimate."""
        out = []
        good, ok, bad = self.k_counts
        of = (f"of the {self.n_subsample} subsampled observations" if self.n_subsample
              else "observations")
        if bad:
            out.append(f"warning: {bad} {of} have Pareto k > {self.k_threshold:.2f}: their "
                       "leave-one-out estimates are unreliable (influential observations, or a "
                       "model that misfits them); check them, or refit without them exactly")
        if self.khat_posterior is not None and not self.khat_posterior <= KHAT_BAD:
            out.append(f"warning: the draws' own Pareto k-hat (log p - log q) is "
                       f"{self.khat_posterior:.2f}: q is a poor proposal for the posterior, so "
                       "the corrected estimate is unreliable too")
        return out


def summarize(pw: Pointwise, n_draws: int, corrected: bool, khat_posterior: float | None,
              label: str = "") -> LooResult:
    """Totals and standard errors of pointwise LOO values over every observation."""
    n = pw.elpd.size
    thr = good_k(n_draws)
    counts = (int(np.sum(pw.k <= KHAT_GOOD)), int(np.sum((pw.k > KHAT_GOOD) & (pw.k <= thr))),
              int(np.sum(~(pw.k <= thr))))
    return LooResult(
        elpd_loo=float(pw.elpd.sum()), se=float(math.sqrt(n * np.var(pw.elpd))),
        p_loo=float(pw.p_loo.sum()), p_loo_se=float(math.sqrt(n * np.var(pw.p_loo))),
        n_obs=n, n_draws=n_draws, corrected=corrected, k_counts=counts, k_threshold=thr,
        khat_max=float(np.max(pw.k)) if n else float("nan"), khat_posterior=khat_posterior,
        mcse=float(math.sqrt(np.sum(pw.mc_var))), rows=np.arange(n), pointwise=pw, label=label)


def loo_arrays(log_lik: np.ndarray, log_ratio: np.ndarray | None = None) -> LooResult:
    """PSIS-LOO from an (S draws x n observations) log-likelihood array, corrected for draws
    from q by ``log_ratio`` = log p - log q per draw (None: plain PSIS-LOO, as ``az.loo``)."""
    khat_post, w = None, None
    if log_ratio is not None:
        w, khat_post = psis(log_ratio)
    pw = loo_pointwise(log_lik, log_ratio, w)
    return summarize(pw, log_lik.shape[0], log_ratio is not None, khat_post)


def subsample_estimate(approx: np.ndarray, rows: np.ndarray, pw: Pointwise, n_draws: int,
                       corrected: bool, khat_posterior: float | None,
                       label: str = "") -> LooResult:
    """The difference estimator from the approximations ``approx`` (every observation) and the
    exact pointwise values ``pw`` of the observations ``rows`` (a simple random sample)."""
    N, m = approx.size, rows.size
    e = pw.elpd - approx[rows]
    elpd = float(approx.sum() + N * e.mean())
    v_sub = float(N * N * (1.0 - m / N) * np.var(e, ddof=1) / m) if m > 1 else float("inf")
    t_hat = float(np.sum(approx**2) + N * np.mean(pw.elpd**2 - approx[rows] ** 2))
    se2 = t_hat - (elpd * elpd - v_sub) / N
    p_loo = float(N * pw.p_loo.mean())
    p_se = float(math.sqrt(N * np.var(pw.p_loo)))
    thr = good_k(n_draws)
    counts = (int(np.sum(pw.k <= KHAT_GOOD)), int(np.sum((pw.k > KHAT_GOOD) & (pw.k <= thr))),
              int(np.sum(~(pw.k <= thr))))
    return LooResult(
        elpd_loo=elpd, se=math.sqrt(max(se2, 0.0)), p_loo=p_loo, p_loo_se=p_se, n_obs=N,
        n_draws=n_draws, corrected=corrected, k_counts=counts, k_threshold=thr,
        khat_max=float(np.max(pw.k)), khat_posterior=khat_posterior,
        mcse=float(math.sqrt(N * np.mean(pw.mc_var))),
        subsampling_se=math.sqrt(max(v_sub, 0.0)), n_subsample=m, rows=rows, pointwise=pw,
        label=label)


# --- LOO of a run ------------------------------------------------------------------------------

def loo(run_dir: Path | str, subsample: int | None = None, seed: int = 0,
        correct: bool = True) -> LooResult:
    """PSIS-LOO of a finished run (``vireg loo``): the per-observation log-likelihood of the
    run's draws from a kernel pass over the rows (a block of rows at a time), corrected for q
    by the draws' log p - log q unless ``correct`` is False. ``subsample``: estimate from that
    many observations (a seeded simple random sample) with the difference estimator."""
    from vireg.workflow.run import load_run

    return loo_of_run(load_run(run_dir), subsample, seed, correct)


def loo_of_run(run, subsample: int | None = None, seed: int = 0, correct: bool = True
               ) -> LooResult:
    from vireg.workflow.run import block_rows, pointwise_loglik, rebuild, threads_of, to_u

    if subsample is not None and subsample < MIN_SUBSAMPLE:
        raise InputError(f"--subsample must be at least {MIN_SUBSAMPLE}, got {subsample}")
    log_ratio = run.log_p - run.log_q if correct else None
    if log_ratio is not None and not np.all(np.isfinite(log_ratio)):
        raise InputError(f"run '{run.label}' has draws with a non-finite log p or log q: the "
                         "correction for q is undefined; use --uncorrected, or refit")
    khat_post, w = (None, None) if log_ratio is None else psis(log_ratio)[::-1]
    S = run.draws.shape[0]
    with threads_of(run), rebuild(run) as rb:
        model = rb.model
        digest = hashlib.sha256(np.ascontiguousarray(rb.y, dtype=np.float64).tobytes()).hexdigest()
        U = to_u(model, run)
        N = model.n_rows
        if subsample is not None and subsample < N:
            rng = np.random.default_rng(np.random.SeedSequence([seed, N]))
            rows = np.sort(rng.choice(N, size=subsample, replace=False)).astype(np.int64)
            center = U.mean(axis=0, keepdims=True)
            approx = np.concatenate([pointwise_loglik(model, center, np.arange(lo, min(lo + step, N),
                                                                                dtype=np.int64))[0]
                                     for lo, step in _blocks(N, block_rows(1, N))])
            pw = loo_pointwise(pointwise_loglik(model, U, rows), log_ratio, w)
            result = subsample_estimate(approx, rows, pw, S, correct, khat_post, run.label)
            result.response_digest = digest
            return result
        parts = []
        for lo, step in _blocks(N, block_rows(S, N)):
            ll = pointwise_loglik(model, U, np.arange(lo, min(lo + step, N), dtype=np.int64))
            parts.append(loo_pointwise(ll, log_ratio, w))
    pw = Pointwise(*(np.concatenate([getattr(p, f) for p in parts])
                     for f in ("elpd", "p_loo", "k", "mc_var")))
    result = summarize(pw, S, correct, khat_post, run.label)
    result.response_digest = digest
    return result


def _blocks(n: int, step: int):
    return ((lo, step) for lo in range(0, n, step))


def loo_csv(results: list[LooResult]) -> str:
    """One row per result: the CSV_COLUMNS (with a leading ``run`` column for several)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", *CSV_COLUMNS])
    for r in results:
        row = r.as_row()
        w.writerow([r.label] + [_cell(row[c]) for c in CSV_COLUMNS])
    return buf.getvalue()


def pointwise_csv(result: LooResult) -> str:
    """Per observation (1-based row of the data as fitted): elpd_loo, p_loo and Pareto k."""
    lines = ["row,elpd_loo,p_loo,pareto_k"]
    pw = result.pointwise
    for r, e, p, k in zip(result.rows, pw.elpd, pw.p_loo, pw.k, strict=True):
        lines.append(f"{int(r) + 1},{_cell(e)},{_cell(p)},{_cell(k)}")
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool | np.bool_):
        return "true" if v else "false"
    if isinstance(v, int | np.integer):
        return str(int(v))
    return repr(float(v))
