"""``vireg compare``: PSIS-LOO of several runs on the same observations, side by side, as
``loo::loo_compare`` and ArviZ's ``az.compare`` lay it out.

Runs are ranked by elpd_loo; for each, elpd_diff = elpd_loo - elpd_loo of the best run and
se_diff = sqrt(N var_i(elpd_i - elpd_best,i)) from the paired pointwise values (ddof 0, as
ArviZ). Weights:

- stacking (default; Yao et al. 2018): w on the simplex maximising
  sum_i log sum_k w_k exp(elpd_k,i), found by the EM fixed point
  w_k <- mean_i w_k p_ki / sum_j w_j p_ji (monotone, to the maximum of this concave problem);
- pseudo-BMA+: Bayesian bootstrap of the pointwise values (Dirichlet(1) weights a over the
  observations, z_k = N sum_i a_i elpd_k,i), the softmax of z averaged over BOOTSTRAP_DRAWS
  replicates (seeded).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vireg.errors import InputError
from vireg.workflow.loo import LooResult

METHODS = ("stacking", "pseudo-bma+")
BOOTSTRAP_DRAWS = 1000
STACKING_MAX_ITER = 100_000
STACKING_TOL = 1e-12
CSV_COLUMNS = ["run", "rank", "elpd_loo", "se", "elpd_diff", "se_diff", "p_loo", "weight",
               "k_bad", "warning"]


@dataclass(frozen=True)
class CompareRow:
    run: str
    rank: int
    elpd_loo: float
    se: float
    elpd_diff: float
    se_diff: float
    p_loo: float
    weight: float
    k_bad: int
    warning: bool


def stacking_weights(elpd_i: np.ndarray) -> np.ndarray:
    """Stacking weights from pointwise elpd values (n observations x K models)."""
    n, K = elpd_i.shape
    if K == 1:
        return np.ones(1)
    p = np.exp(elpd_i - elpd_i.max(axis=1, keepdims=True))  # row scaling leaves w unchanged
    w = np.full(K, 1.0 / K)
    for _ in range(STACKING_MAX_ITER):
        mix = p @ w
        new = w * (p / mix[:, None]).mean(axis=0)
        new /= new.sum()
        if np.max(np.abs(new - w)) < STACKING_TOL:
            w = new
            break
        w = new
    return w


def pseudo_bma_plus_weights(elpd_i: np.ndarray, seed: int = 0,
                            draws: int = BOOTSTRAP_DRAWS) -> np.ndarray:
    """Pseudo-BMA+ weights (Bayesian bootstrap) from pointwise elpd values (n x K)."""
    n, K = elpd_i.shape
    rng = np.random.default_rng(seed)
    a = rng.dirichlet(np.ones(n), size=draws)  # (draws, n)
    z = n * (a @ elpd_i)  # (draws, K)
    z -= z.max(axis=1, keepdims=True)
    w = np.exp(z)
    w /= w.sum(axis=1, keepdims=True)
    return w.mean(axis=0)


def compare_results(results: list[LooResult], method: str = "stacking", seed: int = 0
                    ) -> list[CompareRow]:
    """The comparison table of LOO results over the same observations, best first."""
    if method not in METHODS:
        raise InputError(f"--method '{method}' is not known: use {' or '.join(METHODS)}")
    if len(results) < 2:
        raise InputError("compare needs at least two runs")
    n = {r.n_obs for r in results}
    if len(n) > 1 or any(r.n_subsample is not None for r in results):
        raise InputError("the runs were fitted to different numbers of observations "
                         f"({', '.join(str(r.n_obs) for r in results)}): compare runs fitted to "
                         "the same rows")
    _check_same_observations(results)
    elpd_i = np.column_stack([r.pointwise.elpd for r in results])
    weights = (stacking_weights(elpd_i) if method == "stacking"
               else pseudo_bma_plus_weights(elpd_i, seed))
    order = sorted(range(len(results)), key=lambda k: -results[k].elpd_loo)
    best = order[0]
    rows = []
    for rank, k in enumerate(order):
        r = results[k]
        diff = elpd_i[:, k] - elpd_i[:, best]
        rows.append(CompareRow(r.label, rank, r.elpd_loo, r.se, float(diff.sum()),
                               float(np.sqrt(diff.size * np.var(diff))), r.p_loo,
                               float(weights[k]), r.k_counts[2], r.warning))
    return rows


def compare(run_dirs: list[Path | str], method: str = "stacking", seed: int = 0,
            correct: bool = True) -> tuple[list[CompareRow], list[LooResult]]:
    """PSIS-LOO of every run and the comparison table (``vireg compare``). The runs must have
    been fitted to the same observations (same number of rows and the same response values)."""
    from vireg.workflow.loo import loo_of_run
    from vireg.workflow.run import load_run

    if method not in METHODS:
        raise InputError(f"--method '{method}' is not known: use {' or '.join(METHODS)}")
    runs = [load_run(d) for d in run_dirs]
    if len(runs) < 2:
        raise InputError("compare needs at least two run folders")
    labels = [r.label for r in runs]
    if len(set(labels)) < len(labels):  # the same folder name under different parents
        runs = [_relabel(r, str(Path(d))) for r, d in zip(runs, run_dirs, strict=True)]
    results = [loo_of_run(r, correct=correct) for r in runs]
    return compare_results(results, method, seed), results


def _relabel(run, label: str):
    from dataclasses import replace

    return replace(run, label=label)


def _check_same_observations(results: list[LooResult]) -> None:
    """Refuse runs whose responses differ (elpd values of different data cannot be compared)."""
    first = results[0]
    for r in results[1:]:
        if r.response_digest != first.response_digest:
            raise InputError(f"runs '{first.label}' and '{r.label}' were fitted to different "
                             "observations (their responses differ): compare models of the same "
                             "rows")


def compare_csv(rows: list[CompareRow]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow([r.run, r.rank, repr(r.elpd_loo), repr(r.se), repr(r.elpd_diff),
                    repr(r.se_diff), repr(r.p_loo), repr(r.weight), r.k_bad,
                    "true" if r.warning else "false"])
    return buf.getvalue()
