"""Fitted posteriors against exact answers: a conjugate model and long NUTS reference runs."""

import json

import numpy as np
import pytest
from conftest import write_csv
from posteriordb import DATA, config_for, load_reference, natural_name

import vireg

MEAN_TOL_SD = 0.1  # posterior means within 0.1 reference sd
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


REFERENCE = load_reference()


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
