"""Models whose posterior does not exist are refused before fitting, with a message naming the
columns, instead of returning confident nonsense."""

import numpy as np
import pytest
from conftest import write_csv

from vireg.api import build_model
from vireg.config import config_from_dict
from vireg.errors import InputError


def build(tmp_path, columns, family, covariates=None, **model):
    path = write_csv(tmp_path / "d.csv", columns)
    return build_model(config_from_dict({
        "data": {"path": str(path), "response": "y", "covariates": covariates},
        "model": {"family": family, **model}}))


@pytest.fixture
def x(rng):
    return rng.standard_normal(60)


def test_collinear_columns_with_flat_priors_are_refused(tmp_path, x, rng):
    y = x + rng.standard_normal(60)
    with pytest.raises(InputError, match="'x', 'x2' are collinear"):
        build(tmp_path, {"y": y, "x": x, "x2": 2 * x}, "gaussian")
    # A proper prior on the coefficients makes the same model proper.
    build(tmp_path, {"y": y, "x": x, "x2": 2 * x}, "gaussian",
          prior={"coefficients": "normal(0, 1)"})


def test_constant_covariate_with_an_intercept_is_refused(tmp_path, x, rng):
    y = (rng.random(60) < 0.5).astype(int)
    with pytest.raises(InputError, match="'c' is constant"):
        build(tmp_path, {"y": y, "x": x, "c": np.full(60, 5.0)}, "bernoulli")


def test_separation_by_a_flat_prior_covariate_is_refused_even_with_a_proper_intercept(tmp_path):
    x = np.r_[np.arange(20.0) - 30, np.arange(20.0) + 1]
    columns = {"y": (x > 0).astype(int), "x": x}
    with pytest.raises(InputError, match="'x' separates"):
        build(tmp_path, columns, "bernoulli", prior={"intercept": "normal(0, 2.5)"})
    build(tmp_path, columns, "bernoulli", prior={"coefficients": "normal(0, 2.5)"})


@pytest.mark.parametrize(("intercept_prior", "offset"), [(None, 1.0), ("normal(0, 2.5)", 0.0)])
def test_separation_by_a_combination_of_flat_prior_covariates_is_refused(tmp_path, rng,
                                                                          intercept_prior, offset):
    """y = 1 exactly when x1 + x2 > offset, while each column alone overlaps between the
    classes. With a flat intercept any line separates; with a proper one only a line through the
    origin lets the flat coefficients run off to infinity."""
    x1, x2 = rng.standard_normal(200), rng.standard_normal(200)
    y = (x1 + x2 > offset).astype(int)
    assert x1[y == 1].min() < x1[y == 0].max() and x2[y == 1].min() < x2[y == 0].max()
    columns = {"y": y, "x1": x1, "x2": x2}
    prior = {} if intercept_prior is None else {"prior": {"intercept": intercept_prior}}
    with pytest.raises(InputError, match="a combination of the flat-prior covariates separates"):
        build(tmp_path, columns, "bernoulli", **prior)
    flip = rng.random(200) < 0.1  # a few rows on the wrong side: the MLE exists
    build(tmp_path, {**columns, "y": np.where(flip, 1 - y, y)}, "bernoulli", **prior)


def test_a_line_off_the_origin_with_a_proper_intercept_prior_leaves_the_posterior_proper(tmp_path,
                                                                                         rng):
    """The coefficients could only run off along with the intercept, which its prior holds."""
    x1, x2 = rng.standard_normal(200), rng.standard_normal(200)
    build(tmp_path, {"y": (x1 + x2 > 1).astype(int), "x1": x1, "x2": x2}, "bernoulli",
          prior={"intercept": "normal(0, 2.5)"})


def test_overlapping_classes_are_accepted(tmp_path, x, rng):
    y = (rng.random(60) < 1 / (1 + np.exp(-x))).astype(int)
    build(tmp_path, {"y": y, "x": x}, "bernoulli")


def test_too_few_rows_for_a_flat_sigma_prior(tmp_path):
    columns = {"y": [1.0, 2.5, 2.9], "x": [0.0, 1.0, 2.0]}
    with pytest.raises(InputError, match="at least 4 rows"):
        build(tmp_path, columns, "gaussian")
    build(tmp_path, columns, "gaussian", prior={"sigma": "half_normal(5)"})


def test_exact_linear_fit_is_refused(tmp_path, x):
    with pytest.raises(InputError, match="exactly"):
        build(tmp_path, {"y": 1 + 2 * x, "x": x}, "gaussian", prior={"sigma": "half_normal(1)"})


def test_model_without_parameters_is_refused(tmp_path, x):
    with pytest.raises(InputError, match="no parameters"):
        build(tmp_path, {"y": x, "x": x}, "gaussian", covariates=[], intercept=False, sigma=1.0)


def test_covariate_named_like_a_parameter_is_refused(tmp_path, x, rng):
    with pytest.raises(InputError, match="rename the column"):
        build(tmp_path, {"y": x + rng.standard_normal(60), "sigma": x}, "gaussian")
    build(tmp_path, {"y": (x > 0).astype(int) ^ (rng.random(60) < 0.3), "sigma": x}, "bernoulli")


def test_all_zero_column_under_a_prior_without_curvature_fits(tmp_path):
    # Found by the property test: no data curvature and a laplace prior (none at its mode) made
    # the optimiser's curvature matrix zero and singular. The posterior is the prior here.
    import numpy as np
    from conftest import write_csv

    import vireg

    write_csv(tmp_path / "t.csv", {"a": [0, 1] * 10, "b": [0.0] * 20})
    r = vireg.fit({"data": {"path": str(tmp_path / "t.csv"), "response": "a"},
                   "model": {"family": "bernoulli", "intercept": False,
                             "prior": {"coefficients": "laplace(0, 1)"}},
                   "inference": {"max_steps": 300}, "output": {"draws": 5, "psis_draws": 0}})
    assert np.isfinite(r.summary.mean).all() and abs(r.summary.mean[0]) < 0.3
    assert 0.8 < r.summary.sd[0] < 1.6  # the laplace(0, 1) prior's sd is sqrt(2)
