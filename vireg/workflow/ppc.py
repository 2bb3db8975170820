"""``vireg ppc``: posterior predictive checks of a finished run.

For every draw theta_s from q (draws.csv) a replicated data set y_rep,s is drawn from the
likelihood at the observed covariates, and compared with the observed y: test statistics T
(mean, sd, min, max) with their posterior predictive p-values Pr(T(y_rep) >= T(y)), and a
picture: for a continuous response the density of y over those of replicated data sets; for a
binary one a calibration plot (observed proportion against predicted probability in bins of the
fitted probability, with the range of the replicated proportions); for counts, the frequency of
each value against its replicated range.

The likelihood enters only through ``PREDICTIVE``: one entry per ``model.family``, with the
function that draws y_rep given the linear predictor and the positive parameters, the function
for E[y | theta], and the kind of picture.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vireg.errors import InputError

# Values of draws x rows held at once while replicating (a block of draws at a time).
BLOCK_VALUES = 1 << 24
# Replicated data sets drawn over the observed density.
OVERLAY_DRAWS = 50
# Grid of the binned kernel density estimate.
DENSITY_GRID = 512
# Bins of the calibration plot: about sqrt(N), within these bounds.
MIN_BINS, MAX_BINS = 5, 40
# Count plot: values 0 .. the largest observed or this quantile of it (the tail lumped).
MAX_COUNT_VALUES = 60
STATISTICS = ("mean", "sd", "min", "max")
CSV_COLUMNS = ["statistic", "observed", "rep_mean", "rep_sd", "rep_q5", "rep_q95", "p_value"]


@dataclass(frozen=True)
class PredictiveData:
    """What a family's functions may read besides eta and the parameters: the fitted design
    (``design.X``, ``design.y`` and any per-row columns a family adds, such as trials or an
    exposure) and the model's config section (a known sigma, the link, ...)."""

    design: object
    model: object  # ModelConfig


Params = dict[str, np.ndarray]  # positive parameter name -> (S, 1) draws, e.g. "sigma"


@dataclass(frozen=True)
class Predictive:
    """A likelihood's posterior predictive. ``draw(rng, eta, params, data)`` returns y_rep, and
    ``mean(eta, params, data)`` E[y | theta], both (S, n) for eta (S, n) = alpha + X beta on the
    data's scale (without offsets: a family with an exposure adds its log itself). ``plot``:
    "density" (continuous y), "calibration" (0/1 y) or "counts" (non-negative integers)."""

    draw: Callable[[np.random.Generator, np.ndarray, Params, PredictiveData], np.ndarray]
    mean: Callable[[np.ndarray, Params, PredictiveData], np.ndarray]
    plot: str


def _gaussian_sigma(params: Params, data: PredictiveData) -> np.ndarray | float:
    return params["sigma"] if "sigma" in params else float(data.model.sigma)


def _gaussian_draw(rng, eta, params, data):
    return eta + _gaussian_sigma(params, data) * rng.standard_normal(eta.shape)


def _gaussian_mean(eta, params, data):
    return eta


def _bernoulli_mean(eta, params, data):
    if getattr(data.model, "link", None) == "probit":
        return 0.5 * _erfc(-eta / math.sqrt(2.0)).astype(float)
    return 0.5 * (1.0 + np.tanh(0.5 * eta))


def _bernoulli_draw(rng, eta, params, data):
    return (rng.random(eta.shape) < _bernoulli_mean(eta, params, data)).astype(float)


_erfc = np.frompyfunc(math.erfc, 1, 1)


def _with_offset(eta: np.ndarray, data: PredictiveData) -> np.ndarray:
    """eta plus the log exposure of a count model that has one."""
    if data.design.row_data is None or data.model.family == "binomial":
        return eta
    return eta + np.log(data.design.row_data)


def _predictive_draw(rng, eta, params, data):
    """y_rep from ``predict.response_draws`` (rows x draws there, draws x rows here)."""
    from vireg.predict import response_draws

    positive = {name: value[:, 0] for name, value in params.items()}
    for name in ("sigma", "nu"):  # a known value, from the config
        if name not in positive and getattr(data.model, name, None) is not None:
            positive[name] = np.full(eta.shape[0], float(getattr(data.model, name)))
    return response_draws(data.model.family, None, _with_offset(eta, data).T, positive,
                          data.design.row_data, rng).T


def _count_mean(eta, params, data):
    """E[y | theta]: n sigmoid(eta) for binomial, the mean exp(eta + log t) for the others."""
    if data.model.family == "binomial":
        return data.design.row_data * (0.5 * (1.0 + np.tanh(0.5 * eta)))
    with np.errstate(over="ignore"):
        return np.exp(_with_offset(eta, data))


# One entry per model.family.
PREDICTIVE: dict[str, Predictive] = {
    "gaussian": Predictive(_gaussian_draw, _gaussian_mean, "density"),
    "bernoulli": Predictive(_bernoulli_draw, _bernoulli_mean, "calibration"),
    "student_t": Predictive(_predictive_draw, _gaussian_mean, "density"),
    "binomial": Predictive(_predictive_draw, _count_mean, "counts"),
    "poisson": Predictive(_predictive_draw, _count_mean, "counts"),
    "negative_binomial": Predictive(_predictive_draw, _count_mean, "counts"),
}


@dataclass
class PPCResult:
    """The test statistics and what the picture needs."""

    label: str
    family: str
    plot: str
    n_draws: int
    statistics: list[dict]
    y: np.ndarray
    overlay: np.ndarray  # (OVERLAY_DRAWS, n): replicated data sets
    fitted: np.ndarray  # (n,): E[y | theta] averaged over the draws
    stat_draws: np.ndarray  # (S, len(STATISTICS)): T(y_rep) of every replicated data set
    bins: dict = field(default_factory=dict)  # calibration: per bin predicted, observed, range


def ppc(run_dir: Path | str, seed: int = 0) -> PPCResult:
    """Replicate the data from every draw of a run and compare them with the observed y."""
    from vireg.workflow.run import load_run

    return ppc_of_run(load_run(run_dir), seed)


def ppc_of_run(run, seed: int = 0) -> PPCResult:
    from vireg.assemble import read_design
    from vireg.workflow.run import in_memory_config

    if run.family not in PREDICTIVE:
        raise InputError(f"vireg ppc has no posterior predictive for family '{run.family}' yet: "
                         f"it supports {', '.join(PREDICTIVE)}")
    cfg = in_memory_config(run.config)
    design = read_design(cfg)[0]
    if design.X.shape[1] != len(run.covariates) or design.y.size != run.doc.get("n_rows"):
        raise InputError(f"the data of run '{run.label}' have changed since the fit: refit")
    pred = PREDICTIVE[run.family]
    data = PredictiveData(design, cfg.model)
    y = np.asarray(design.y, dtype=float)
    X = np.asarray(design.X, dtype=float)
    alpha, beta = run.intercepts(), run.coefficients()
    params = {name: run.column(name)[:, None] for name in run.positive_names}
    S, n = beta.shape[0], y.size
    rng = np.random.default_rng(seed)
    overlay_idx = np.sort(rng.choice(S, size=min(OVERLAY_DRAWS, S), replace=False))
    stats = np.empty((S, len(STATISTICS)))
    fitted = np.zeros(n)
    overlay = np.empty((overlay_idx.size, n))
    shift, mean_shift = _group_shifts(run, design)
    order, edges = (_bins_by_fit(pred, X, alpha, beta, params, data, mean_shift)
                    if pred.plot == "calibration" else (None, None))
    bin_props = np.empty((S, len(edges) - 1)) if edges is not None else None
    step = max(1, BLOCK_VALUES // max(n, 1))
    for lo in range(0, S, step):
        hi = min(lo + step, S)
        eta = alpha[lo:hi, None] + beta[lo:hi] @ X.T + shift(lo, hi)
        p = {k: v[lo:hi] for k, v in params.items()}
        rep = pred.draw(rng, eta, p, data)
        fitted += pred.mean(eta, p, data).sum(axis=0)
        stats[lo:hi] = _statistics(rep)
        hit = (overlay_idx >= lo) & (overlay_idx < hi)
        overlay[hit] = rep[overlay_idx[hit] - lo]
        if bin_props is not None:
            sums = np.add.reduceat(rep[:, order], edges[:-1], axis=1)
            bin_props[lo:hi] = sums / np.diff(edges)
    fitted /= S
    observed = _statistics(y[None, :])[0]
    rows = []
    for j, name in enumerate(STATISTICS):
        t = stats[:, j]
        q5, q95 = np.quantile(t, [0.05, 0.95])
        rows.append({"statistic": name, "observed": float(observed[j]), "rep_mean": float(t.mean()),
                     "rep_sd": float(t.std(ddof=1)), "rep_q5": float(q5), "rep_q95": float(q95),
                     "p_value": float(np.mean(t >= observed[j]))})
    bins = {}
    if bin_props is not None:
        f = fitted[order]
        yo = y[order]
        bins = {"predicted": np.add.reduceat(f, edges[:-1]) / np.diff(edges),
                "observed": np.add.reduceat(yo, edges[:-1]) / np.diff(edges),
                "rep_q5": np.quantile(bin_props, 0.05, axis=0),
                "rep_q95": np.quantile(bin_props, 0.95, axis=0),
                "size": np.diff(edges)}
    return PPCResult(run.label, run.family, pred.plot, S, rows, y, overlay, fitted, stats, bins)


def _statistics(v: np.ndarray) -> np.ndarray:
    """(draws, len(STATISTICS)) test statistics of each row of v."""
    sd = v.std(axis=1, ddof=1) if v.shape[1] > 1 else np.zeros(v.shape[0])
    return np.column_stack([v.mean(axis=1), sd, v.min(axis=1), v.max(axis=1)])


def _group_shifts(run, design):
    """For a run with group terms, (f(lo, hi): each row's group effects sum_f w_fi . b_f,g(i)
    for draws lo..hi (draws x rows), their mean over the draws (rows)), from the fit's own
    draws of q (``posterior.redrawn``); (zero, 0) without group terms."""
    if not run.grouped:
        return (lambda lo, hi: 0.0), 0.0
    from vireg.models.multilevel import effects_of_record, records_of
    from vireg.posterior import redrawn

    U = redrawn(run.doc, run.draws.shape[0])
    parts = []
    for rec, terms in zip(records_of(run.doc["design"]["groups"]), design.groups, strict=True):
        if terms.levels != rec["levels"]:
            raise InputError(f"the data of run '{run.label}' have changed since the fit (its "
                             f"'{rec['factor']}' levels): refit")
        parts.append((terms.W, terms.gid, effects_of_record(U, rec)))
    mean = sum(np.einsum("ik,ik->i", W, b.mean(axis=0)[gid]) for W, gid, b in parts)
    return (lambda lo, hi: sum(np.sum(W[None] * b[lo:hi][:, gid, :], axis=2)
                               for W, gid, b in parts)), mean


def _bins_by_fit(pred: Predictive, X, alpha, beta, params, data, shift
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by E[y | theta] at the posterior mean (``shift``: each row's mean group
    effects), and the bin edges (about sqrt(n) bins of equal size) into that order."""
    eta = alpha.mean() + X @ beta.mean(axis=0) + shift
    p = {k: v.mean(axis=0, keepdims=True) for k, v in params.items()}
    fit = pred.mean(eta[None, :], p, data)[0]
    order = np.argsort(fit, kind="stable")
    n = fit.size
    n_bins = int(np.clip(round(math.sqrt(n)), MIN_BINS, MAX_BINS)) if n >= MIN_BINS else 1
    edges = np.unique(np.linspace(0, n, n_bins + 1).round().astype(int))
    return order, edges


def ppc_csv(result: PPCResult) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for row in result.statistics:
        w.writerow([row["statistic"]] + [repr(row[c]) for c in CSV_COLUMNS[1:]])
    return buf.getvalue()


# --- the picture -------------------------------------------------------------------------------

def plot_ppc(result: PPCResult, out: Path) -> Path:
    """Draw the check into ``out`` (.png, .svg or .pdf), written atomically."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("vireg ppc needs matplotlib: pip install 'vireg[plot]'") from None
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise InputError(f"--out '{out}' must end in .png, .svg or .pdf")
    fig = plt.figure(figsize=(11, 4.6))
    grid = fig.add_gridspec(2, 4, width_ratios=[2.2, 2.2, 1, 1])
    main = fig.add_subplot(grid[:, :2])
    {"density": _density_panel, "calibration": _calibration_panel,
     "counts": _counts_panel}[result.plot](main, result)
    for j, row in enumerate(result.statistics):
        ax = fig.add_subplot(grid[j // 2, 2 + j % 2])
        _statistic_panel(ax, row, result.stat_draws[:, j])
    fig.suptitle(f"posterior predictive check: {result.label} ({result.family}, "
                 f"{result.n_draws} draws from q)", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{out.suffix}")
    try:
        fig.savefig(tmp, dpi=110)
        tmp.replace(out)
    except OSError as exc:
        raise InputError(f"cannot write '{out}': {exc.strerror or exc}; choose another "
                         "--out") from None
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return out


def _binned_kde(values: np.ndarray, grid: np.ndarray, h: float) -> np.ndarray:
    """Gaussian kernel density of ``values`` on an even ``grid`` (binned: O(n + grid^2))."""
    step = grid[1] - grid[0]
    edges = np.concatenate([grid - step / 2, [grid[-1] + step / 2]])
    counts = np.histogram(values, bins=edges)[0].astype(float)
    offsets = np.arange(-grid.size + 1, grid.size) * step
    kernel = np.exp(-0.5 * (offsets / h) ** 2)
    dens = np.convolve(counts, kernel, mode="full")[grid.size - 1:2 * grid.size - 1]
    return dens / (values.size * h * math.sqrt(2 * math.pi))


def _density_panel(ax, r: PPCResult) -> None:
    lo = min(r.y.min(), np.quantile(r.overlay, 0.001))
    hi = max(r.y.max(), np.quantile(r.overlay, 0.999))
    pad = 0.05 * (hi - lo or 1.0)
    grid = np.linspace(lo - pad, hi + pad, DENSITY_GRID)
    sd = r.y.std()
    iqr = np.subtract(*np.quantile(r.y, [0.75, 0.25]))
    spread = min(sd, iqr / 1.349) if iqr > 0 else sd
    h = 0.9 * (spread or 1.0) * r.y.size ** -0.2  # Silverman's rule
    for i, rep in enumerate(r.overlay):
        ax.plot(grid, _binned_kde(rep, grid, h), color="#8fb3d9", lw=0.6, alpha=0.6,
                label="y_rep (replicated)" if i == 0 else None)
    ax.plot(grid, _binned_kde(r.y, grid, h), color="#1f2f4d", lw=2.0, label="y (observed)")
    ax.set_xlabel("response")
    ax.set_ylabel("density")
    ax.set_title(f"density of y and of {len(r.overlay)} replicated data sets", fontsize=10)
    ax.legend(frameon=False, fontsize=9)


def _calibration_panel(ax, r: PPCResult) -> None:
    b = r.bins
    ax.plot([0, 1], [0, 1], color="grey", lw=0.7, ls="--")
    ax.vlines(b["predicted"], b["rep_q5"], b["rep_q95"], color="#8fb3d9", lw=3,
              label="90% range of replicated proportions")
    ax.plot(b["predicted"], b["observed"], "o", color="#1f2f4d", ms=4,
            label="observed proportion")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability (bin mean)")
    ax.set_ylabel("proportion of y = 1 in the bin")
    ax.set_title(f"calibration: {len(b['predicted'])} bins of about {int(np.median(b['size']))} "
                 "rows", fontsize=10)
    ax.legend(frameon=False, fontsize=9, loc="upper left")


def _counts_panel(ax, r: PPCResult) -> None:
    top = int(min(max(r.y.max(), 0), MAX_COUNT_VALUES))
    values = np.arange(top + 1)

    def freq(v):
        return np.array([np.mean(np.minimum(v, top) == k) for k in values])

    reps = np.array([freq(rep) for rep in r.overlay])
    ax.bar(values, freq(r.y), color="#c9d6e8", label="observed")
    ax.vlines(values, np.quantile(reps, 0.05, axis=0), np.quantile(reps, 0.95, axis=0),
              color="#1f2f4d", lw=2, label="90% range of replicated")
    ax.set_xlabel(f"value (>= {top} lumped)" if r.y.max() > top else "value")
    ax.set_ylabel("frequency")
    ax.legend(frameon=False, fontsize=9)


def _statistic_panel(ax, row: dict, t_rep: np.ndarray) -> None:
    ax.set_title(f"{row['statistic']}: p = {row['p_value']:.2f}", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.set_yticks([])
    lo, hi = min(t_rep.min(), row["observed"]), max(t_rep.max(), row["observed"])
    bins = np.linspace(lo, hi, 31) if hi > lo else 1
    ax.hist(t_rep, bins=bins, color="#8fb3d9")
    ax.axvline(row["observed"], color="#1f2f4d", lw=2)
