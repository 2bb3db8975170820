"""Never confidently wrong: NIST StRD certified values, and synthetic ill-conditioned designs
against exact answers, at several seeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_csv

import vireg
from vireg.errors import FitError, InputError

NIST = Path(__file__).parent / "data" / "nist"
CERTIFIED = json.loads((NIST / "certified.json").read_text())
EXACT_FITS = {"wampler1", "wampler2"}  # residual sd 0: no flat-prior posterior


def nist_config(name: str, family: str) -> dict:
    c = CERTIFIED[name]
    return {"data": {"path": str(NIST / f"{name}.csv"), "response": c["response"],
                     "covariates": c["covariates"]},
            "model": {"family": "gaussian", "intercept": c["intercept"]},
            "inference": {"family": family}, "output": {"draws": 0, "psis_draws": 0}}


def exact_t_sd(c: dict) -> np.ndarray:
    n, p = c["n"], len(c["parameters"])
    return np.asarray(c["sd_of_estimate"]) * np.sqrt((n - p) / (n - p - 3))


def gaussian_optimum_ratio(n: int, p: int) -> float:
    """sd of the ELBO-maximising Gaussian over (beta, log sigma) over the exact posterior sd.

    With v = R (beta - beta_hat) (X^T X = R^T R) and t = log sigma, flat priors on beta and sigma:
    log p = -(n - 1) t - (RSS + |v|^2) exp(-2 t) / 2. For q = N(0, s_v^2 I) x N(mu, s_t^2)
    (independent by the symmetry v -> -v), E_q log p + H(q) is stationary at
    exp(-2 mu + 2 s_t^2) = (n - 1) / (RSS + p s_v^2) and s_v^2 = 1 / exp(-2 mu + 2 s_t^2), so
    s_v^2 = RSS / (n - p - 1), against the exact E[sigma^2] = RSS / (n - p - 3)."""
    return float(np.sqrt((n - p - 3) / (n - p - 1)))


@pytest.mark.parametrize("name", sorted(set(CERTIFIED) - EXACT_FITS))
def test_nist_fullrank_matches_certified_values(name):
    c = CERTIFIED[name]
    r = vireg.fit(nist_config(name, "fullrank"))
    assert r.converged, r.reason
    k = len(c["parameters"])
    sd = exact_t_sd(c)
    err = np.abs(r.summary.mean[:k] - np.asarray(c["estimate"])) / sd
    assert err.max() < 0.01, f"means off by {err.max():.3g} posterior sd"
    # sds: within 1% of the full-rank Gaussian optimum, which the exact answer fixes
    ratio = r.summary.sd[:k] / sd / gaussian_optimum_ratio(c["n"], k)
    assert np.all(np.abs(ratio - 1) < 0.01), f"sd / optimum {ratio.min():.4f}-{ratio.max():.4f}"
    assert r.extras["passes"] < 1000


@pytest.mark.parametrize("name", ["wampler3", "pontius", "longley", "norris"])
def test_nist_meanfield_means_without_runaway(name):
    c = CERTIFIED[name]
    r = vireg.fit(nist_config(name, "meanfield"))
    assert r.converged, r.reason
    k = len(c["parameters"])
    err = np.abs(r.summary.mean[:k] - np.asarray(c["estimate"])) / exact_t_sd(c)
    assert err.max() < 0.05, f"means off by {err.max():.3g} posterior sd"


@pytest.mark.parametrize("name", sorted(EXACT_FITS))
def test_nist_exact_fits_are_refused_in_one_line(name):
    with pytest.raises(InputError, match="exactly") as exc:
        vireg.fit(nist_config(name, "fullrank"))
    assert "\n" not in str(exc.value)


def _exact_linear(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat priors on the coefficients and sigma: the posterior is a multivariate t centred on
    the least-squares estimate (by QR), with sds s_j sqrt((n - p) / (n - p - 3))."""
    X1 = np.column_stack([np.ones(len(y)), X])
    n, p = X1.shape
    Q, R = np.linalg.qr(X1)
    beta = np.linalg.solve(R, Q.T @ y)
    s2 = np.sum((y - X1 @ beta) ** 2) / (n - p)
    R_inv = np.linalg.inv(R)
    cov = s2 * R_inv @ R_inv.T
    return beta, np.sqrt(np.diag(cov) * (n - p) / (n - p - 3))


def _design(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if kind == "correlated":  # r = 0.999999 between two columns, 0.99 with a third
        z = rng.standard_normal(n)
        return np.column_stack([z + 1e-3 * rng.standard_normal(n),
                                z + 1e-3 * rng.standard_normal(n),
                                z + 0.1 * rng.standard_normal(n)])
    if kind == "polynomial":  # raw powers of x on [10, 20]: condition number ~1e10
        x = rng.uniform(10.0, 20.0, n)
        return np.column_stack([x**k for k in range(1, 5)])
    # columns on scales 1e-6 .. 1e6, two of them correlated
    z = rng.standard_normal((n, 3))
    z[:, 2] = z[:, 1] + 1e-2 * z[:, 2]
    return z * np.array([1e-6, 1.0, 1e6])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["correlated", "polynomial", "scales"])
@pytest.mark.parametrize("family", ["fullrank", "meanfield"])
def test_ill_conditioned_linear_designs_are_exact_or_say_so(tmp_path, kind, family, seed):
    rng = np.random.default_rng(seed)
    n = 60
    X = _design(kind, rng, n)
    y = X @ rng.standard_normal(X.shape[1]) / np.std(X, axis=0).max() + rng.standard_normal(n)
    cols = {f"x{j}": X[:, j] for j in range(X.shape[1])}
    path = write_csv(tmp_path / "d.csv", {"y": y, **cols})
    cfg = {"data": {"path": str(path), "response": "y"}, "model": {"family": "gaussian"},
           "inference": {"family": family, "seed": seed}, "output": {"draws": 0}}
    try:
        r = vireg.fit(cfg)
    except InputError as exc:  # refused as collinear: allowed, in one line
        assert "collinear" in str(exc) and "\n" not in str(exc)
        return
    except FitError as exc:
        pytest.fail(f"fit failed: {exc}")
    beta, sd = _exact_linear(X, y)
    if not r.converged:
        assert "did not converge" in r.reason
        return
    err = np.abs(r.summary.mean[:len(beta)] - beta) / sd
    assert err.max() < 0.05, f"converged, yet {err.max():.3g} sd from the exact mean"
    if family == "fullrank":
        ratio = r.summary.sd[:len(beta)] / sd
        assert ratio.min() > 0.85 and ratio.max() < 1.1


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("family", ["fullrank", "meanfield"])
def test_ill_conditioned_logistic_design_converges_near_the_mode(tmp_path, family, seed):
    """Correlated columns (r = 0.9999) in a logistic model with proper priors: no runaway, and
    the means close to the Laplace mode, found independently here by Newton's method."""
    rng = np.random.default_rng(seed)
    n = 400
    z = rng.standard_normal(n)
    X = np.column_stack([z + 0.01 * rng.standard_normal(n), z + 0.01 * rng.standard_normal(n),
                         rng.standard_normal(n) * 1e3])
    eta = 0.5 + 1.0 * X[:, 0] - 0.5 * X[:, 2] / 1e3
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    path = write_csv(tmp_path / "d.csv", {"y": y, "a": X[:, 0], "b": X[:, 1], "c": X[:, 2]})
    cfg = {"data": {"path": str(path), "response": "y"},
           "model": {"family": "bernoulli", "prior": {"intercept": "normal(0, 5)",
                                                      "coefficients": "normal(0, 5)"}},
           "inference": {"family": family, "seed": seed}, "output": {"draws": 0}}
    r = vireg.fit(cfg)
    assert r.converged, r.reason
    X1 = np.column_stack([np.ones(n), X])
    w = np.zeros(4)
    for _ in range(50):  # Newton on log lik + log prior (normal(0, 5) on every coefficient)
        p = 1 / (1 + np.exp(-X1 @ w))
        g = X1.T @ (y - p) - w / 25
        H = (X1 * (p * (1 - p))[:, None]).T @ X1 + np.eye(4) / 25
        w = w + np.linalg.solve(H, g)
    sd = np.sqrt(np.diag(np.linalg.inv(H)))
    err = np.abs(r.summary.mean - w) / sd
    assert err.max() < 0.3, f"{err.max():.3g} Laplace sds from the mode"


def test_nearly_separated_columns_under_weak_priors_fit_and_write_their_results(tmp_path):
    """Columns nonzero in a handful of rows that all share a class (as sparse pixels of images):
    the log joint is far from quadratic within a Laplace sd there, so the start is narrowed; the
    fit ends without a traceback, and an infinite k-hat is written as null in fit.json."""
    import json

    rng = np.random.default_rng(4)
    n = 600
    x = rng.standard_normal((n, 3))
    y = (rng.random(n) < 1 / (1 + np.exp(-(x[:, 0] - 0.5 * x[:, 1])))).astype(float)
    sparse = np.zeros((n, 4))
    for j in range(4):  # each nonzero in 3 rows with y = 1 only
        rows = rng.choice(np.flatnonzero(y == 1), 3, replace=False)
        sparse[rows, j] = rng.uniform(5, 15, 3)
    cols = {f"x{j}": x[:, j] for j in range(3)} | {f"s{j}": sparse[:, j] for j in range(4)}
    path = write_csv(tmp_path / "d.csv", {"y": y, **cols})
    for family in ("fullrank", "meanfield"):
        cfg = {"data": {"path": str(path), "response": "y"},
               "model": {"family": "bernoulli", "prior": {"intercept": "normal(0, 2.5)",
                                                          "coefficients": "normal(0, 2.5)"}},
               "inference": {"family": family}, "output": {"draws": 50}}
        r = vireg.fit(cfg)
        assert np.all(np.isfinite(r.summary.mean)) and np.all(np.isfinite(r.summary.sd))
        assert r.converged or "did not converge" in r.reason
        from vireg import export

        doc = json.loads(export.fit_json(r, {}))
        assert doc["khat_infinite"] == (not np.isfinite(r.khat))
    # an infinite k-hat (one dominating ratio) is written as null with khat_infinite, not a crash
    from dataclasses import replace

    doc = json.loads(export.fit_json(replace(r, khat=float("inf"), log_ratio_sd=float("inf")), {}))
    assert doc["khat"] is None and doc["khat_infinite"] and doc["log_ratio_sd"] is None


@pytest.mark.parametrize("r", [0.0, 0.99, 0.99999])
def test_an_exact_fit_is_refused_whichever_way_the_columns_are_orthogonalised(tmp_path, r):
    """Zero residuals are found from the exact Gram matrix of the columns the kernel reads, by
    the Cholesky route (well-conditioned columns) and the QR route alike."""
    rng = np.random.default_rng(5)
    z = rng.standard_normal(50)
    x1, x2 = z, r * z + np.sqrt(1 - r * r) * rng.standard_normal(50)
    path = write_csv(tmp_path / "d.csv", {"y": 1.0 + x1 + 2.0 * x2, "x1": x1, "x2": x2})
    cfg = {"data": {"path": str(path), "response": "y"}, "model": {"family": "gaussian"},
           "inference": {"family": "fullrank"}}
    with pytest.raises(InputError, match="exactly"):
        vireg.fit(cfg)
