"""Fitted posteriors against exact answers: a conjugate model and long NUTS reference runs."""

import json

import numpy as np
import pytest
from conftest import write_csv
from posteriordb import (
    DATA,
    config_for,
    load_reference,
    load_wells,
    natural_name,
    wells_config,
    wells_names,
)

import vireg

MEAN_TOL_SD = 0.1  # posterior means within 0.1 reference sd
SD_RTOL = 0.1  # full-rank posterior sds within 10% of the reference sd
CONJUGATE_COV_TOL = 0.05  # covariance entries within 0.05 sd_i sd_j
CORR_TOL = 0.1  # full-rank posterior correlations within 0.1 of NUTS (measured worst: 0.059)
CONJUGATE_MEAN_TOL_SD = 0.05
CONJUGATE_SD_RTOL = 0.05


def conjugate_problem(tmp_path, rng, N=300, D=3, sigma=2.0, prior_sd=3.0):
    X = rng.standard_normal((N, D)) * [1.0, 10.0, 0.1] + [0.0, 50.0, -2.0]
    X[:, 1] += 0.8 * X[:, 0] * 10  # correlated covariates
    beta = np.array([1.5, -0.2, 4.0])
    y = 2.0 + X @ beta + rng.standard_normal(N) * sigma
    names = [f"x{j}" for j in range(D)]
    path = write_csv(tmp_path / "conj.csv", {"y": y, **{n: X[:, j] for j, n in enumerate(names)}})
    X1 = np.hstack([np.ones((N, 1)), X])
    A = X1.T @ X1 / sigma**2 + np.eye(D + 1) / prior_sd**2  # posterior precision
    mean = np.linalg.solve(A, X1.T @ y / sigma**2)
    config = {
        "data": {"path": str(path), "response": "y"},
        "model": {"family": "gaussian", "sigma": sigma,
                  "prior": {"intercept": f"normal(0, {prior_sd})",
                            "coefficients": f"normal(0, {prior_sd})"}},
        "inference": {"family": "meanfield", "seed": 1},
        "output": {"draws": 0},
    }
    return config, mean, A


def test_meanfield_recovers_conjugate_mean_and_meanfield_optimal_variances(tmp_path, rng):
    config, mean, A = conjugate_problem(tmp_path, rng)
    result = vireg.fit(config)
    assert result.converged, result.reason
    sd_exact = np.sqrt(np.diag(np.linalg.inv(A)))
    err = np.abs(result.theta_mean - mean) / sd_exact
    assert err.max() < CONJUGATE_MEAN_TOL_SD, err
    # Mean-field is diagonal in the standardised coordinates u (theta = T u + c): its optimum
    # there has variances 1 / diag(A_u), A_u = T^T A T, and maps back to T diag(.) T^T.
    from vireg.api import build_model
    from vireg.config import config_from_dict

    model = build_model(config_from_dict(config))
    A_u = model.T.T @ A @ model.T
    cov_mf = model.T @ np.diag(1.0 / np.diag(A_u)) @ model.T.T
    np.testing.assert_allclose(result.theta_cov, cov_mf, rtol=CONJUGATE_SD_RTOL * 2,
                               atol=1e-12)
    np.testing.assert_allclose(np.sqrt(np.diag(result.theta_cov)), np.sqrt(np.diag(cov_mf)),
                               rtol=CONJUGATE_SD_RTOL)


def test_fullrank_recovers_conjugate_mean_and_full_covariance(tmp_path, rng):
    config, mean, A = conjugate_problem(tmp_path, rng)
    config["inference"]["family"] = "fullrank"
    result = vireg.fit(config)
    assert result.converged, result.reason
    cov = np.linalg.inv(A)
    sd = np.sqrt(np.diag(cov))
    assert (np.abs(result.theta_mean - mean) / sd).max() < CONJUGATE_MEAN_TOL_SD
    np.testing.assert_allclose(np.sqrt(np.diag(result.theta_cov)), sd, rtol=CONJUGATE_SD_RTOL)
    cov_err = np.abs(result.theta_cov - cov) / np.outer(sd, sd)
    assert cov_err.max() < CONJUGATE_COV_TOL, cov_err


REFERENCE = load_reference()
# References outside the bounds at the full-rank Gaussian optimum itself: with 46 rows and 8
# parameters sigma's posterior is skewed and its scale couples to the coefficients', and the
# Gaussian that minimises KL(q || p) has a sigma sd about 0.9x the NUTS one. Measured at
# inference.tolerance 0.002: mesquite-logmesquite 0.895x (seeds 0 and 3: 0.8947, 0.8956),
# mesquite-logmesquite_logvas 0.89x. Strict, so a change is noticed. (mesquite-mesquite's optimum,
# 0.901x, is on the 10% line: a default fit gives 0.904x.)
GAUSSIAN_VI_LIMIT = {
    "mesquite-logmesquite_logvas": "sigma sd 0.89x: full-rank Gaussian VI optimum",
    "mesquite-logmesquite": "sigma sd 0.895x: full-rank Gaussian VI optimum",
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_meanfield_means_match_nuts_reference(name):
    entry = REFERENCE[name]
    result = vireg.fit(config_for(name, entry, family="meanfield"))
    assert result.converged, result.reason
    rows = {r["parameter"]: r for r in result.summary_rows()}
    for p in entry["parameters"]:
        row = rows[natural_name(entry, p)]
        err = abs(row["mean"] - entry["mean"][p]) / entry["sd"][p]
        assert err < MEAN_TOL_SD, f"{name} {p}: mean off by {err:.3f} reference sd"


def test_meanfield_logistic_means_match_importance_sampling_reference():
    ref = json.loads((DATA / "wells_mle.json").read_text())["wells_data-wells_dist100ars_model"]
    names = {"alpha": "intercept", "beta[1]": "dist100", "beta[2]": "arsenic"}
    result = vireg.fit({
        "data": {"path": str(DATA / "wells_data-wells_dist100ars_model.csv"),
                 "response": "switched", "covariates": ["dist100", "arsenic"]},
        "model": {"family": "bernoulli"}, "output": {"draws": 0}})
    assert result.converged, result.reason
    rows = {r["parameter"]: r for r in result.summary_rows()}
    for p, n in names.items():
        err = abs(rows[n]["mean"] - ref["is_mean_NOT_EXTERNAL"][p]) / ref["is_sd_NOT_EXTERNAL"][p]
        assert err < MEAN_TOL_SD, f"{n}: mean off by {err:.3f} sd"


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_fullrank_means_and_sds_match_nuts_reference(name, request):
    if name in GAUSSIAN_VI_LIMIT:
        request.applymarker(pytest.mark.xfail(reason=GAUSSIAN_VI_LIMIT[name], strict=True))
    entry = REFERENCE[name]
    result = vireg.fit(config_for(name, entry, family="fullrank"))
    assert result.converged, result.reason
    rows = {r["parameter"]: r for r in result.summary_rows()}
    for p in entry["parameters"]:
        row = rows[natural_name(entry, p)]
        err = abs(row["mean"] - entry["mean"][p]) / entry["sd"][p]
        assert err < MEAN_TOL_SD, f"{name} {p}: mean off by {err:.3f} reference sd"
        ratio = row["sd"] / entry["sd"][p]
        assert abs(ratio - 1) < SD_RTOL, f"{name} {p}: sd ratio {ratio:.3f}"
    idx = [result.param_names.index(natural_name(entry, p)) for p in entry["parameters"]]
    cov = result.natural_cov[np.ix_(idx, idx)]
    corr = cov / np.outer(np.sqrt(np.diag(cov)), np.sqrt(np.diag(cov)))
    corr_err = np.abs(corr - np.array(entry["corr"])).max()
    assert corr_err < CORR_TOL, f"{name}: a correlation is off by {corr_err:.3f}"


WELLS = load_wells()


@pytest.mark.parametrize("name", sorted(WELLS))
def test_fullrank_logistic_matches_importance_sampling_reference(name):
    entry = WELLS[name]
    result = vireg.fit(wells_config(name, entry, family="fullrank"))
    assert result.converged, result.reason
    rows = {r["parameter"]: r for r in result.summary_rows()}
    for p, n in wells_names(entry).items():
        ref_mean, ref_sd = entry["is_mean_NOT_EXTERNAL"][p], entry["is_sd_NOT_EXTERNAL"][p]
        err = abs(rows[n]["mean"] - ref_mean) / ref_sd
        assert err < MEAN_TOL_SD, f"{name} {n}: mean off by {err:.3f} sd"
        assert abs(rows[n]["sd"] / ref_sd - 1) < SD_RTOL, f"{name} {n}: sd {rows[n]['sd']:.4g}"


def test_natural_scale_covariance_matches_draws_from_q(tmp_path, rng):
    from test_cli import make_project

    config = make_project(tmp_path, family="gaussian")
    result = vireg.fit(config, overrides=["inference.family=fullrank", "output.draws=200000"])
    sample_cov = np.cov(result.draws.T)
    sd = np.sqrt(np.diag(result.natural_cov))
    # 200,000 draws: Monte Carlo error of a covariance entry is about sd_i sd_j / 450.
    assert (np.abs(sample_cov - result.natural_cov) / np.outer(sd, sd)).max() < 0.01
    np.testing.assert_allclose(result.draws.mean(axis=0), result.summary.mean, atol=0.01 * sd.max())


@pytest.mark.parametrize("config_name", ["wells", "kidiq"])
def test_float32_data_give_the_float64_posterior(config_name):
    """Measured over all 38 reference cases: at most 1.1e-4 sd apart in means, 7.5e-6 in sds."""
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "configs" / f"{config_name}.yaml"
    a = vireg.fit(config, overrides=["inference.family=fullrank"])
    b = vireg.fit(config, overrides=["inference.family=fullrank", "inference.dtype=float32"])
    assert np.max(np.abs(a.summary.mean - b.summary.mean) / a.summary.sd) < 1e-3
    np.testing.assert_allclose(b.summary.sd, a.summary.sd, rtol=1e-3)
