"""The quadratic control variate (inference.quadratic_cv): its matrix against finite differences
of the hand-derived gradient, its correction term against Monte Carlo, and fits with it."""

import numpy as np
import pytest
from test_cli import make_project

import vireg
from vireg.bench import synthetic_model
from vireg.errors import InputError
from vireg.families.fullrank import FullRank
from vireg.families.meanfield import MeanField


def fd_curvature(model, u, h=1e-5):
    """-d2 log p / du2 by central differences of the hand-derived gradient."""
    P = u.size
    C = np.zeros((P, P))
    for j in range(P):
        e = np.zeros(P)
        e[j] = h
        g = model.log_joint_grad(np.vstack([u + e, u - e]))[1]
        C[:, j] = -(g[0] - g[1]) / (2 * h)
    return 0.5 * (C + C.T)


@pytest.mark.parametrize("model_name", ["logistic", "linear"])
def test_curvature_at_matches_finite_differences(model_name):
    model = synthetic_model(model_name, "meanfield", 4000, 5, 8)
    rng = np.random.default_rng(3)
    u = rng.standard_normal(model.n_params) * 0.3
    C = model.curvature_at(u)
    fd = fd_curvature(model, u)
    k = model.n_location
    # Location block exactly (normal priors: their curvature is constant); for linear models
    # also the log sigma row and column (the sigma prior, which C leaves out, adds only to the
    # t-t entry).
    np.testing.assert_allclose(C[:k, :k], fd[:k, :k], rtol=1e-5, atol=1e-4)
    if model_name == "linear":
        np.testing.assert_allclose(C[:k, -1], fd[:k, -1], rtol=1e-5, atol=1e-4)
        assert C[-1, -1] > 0


@pytest.mark.parametrize("family_cls", [MeanField, FullRank])
@pytest.mark.parametrize("estimator", ["reparam", "stl"])
def test_correction_is_the_expectation_of_the_added_terms(family_cls, estimator):
    """E_q[draw_grads with g = C d] - E_q[draw_grads with g = 0] = quadratic_cv_mean(phi, C):
    what the control variate adds to every draw has exactly that mean, so subtracting it
    keeps the gradient unbiased."""
    P = 4
    family = family_cls(P)
    rng = np.random.default_rng(0)
    phi = rng.standard_normal(family.size) * 0.3
    A = rng.standard_normal((P, P))
    C = A @ A.T + np.eye(P)
    m = phi[:P]
    n, batch = 400_000, 20_000
    total = np.zeros(family.size)
    sq = np.zeros(family.size)
    for _ in range(n // batch):
        eps = rng.standard_normal((batch, P))
        d = family.sample(phi, eps) - m
        logp = np.zeros(batch)
        extra = (family.draw_grads(phi, eps, logp, d @ C, estimator)
                 - family.draw_grads(phi, eps, logp, np.zeros((batch, P)), estimator))
        total += extra.sum(axis=0)
        sq += (extra**2).sum(axis=0)
    mc = total / n
    se = np.sqrt(np.maximum(sq / n - mc**2, 0) / n)
    exact = family.quadratic_cv_mean(phi, C)
    assert np.all(np.abs(mc - exact) < 5 * se + 1e-12)


def test_quadratic_cv_cuts_gradient_variance_on_a_large_logistic_model():
    model = synthetic_model("logistic", "meanfield", 50_000, 10, 8)
    family = MeanField(model.n_params)
    P = model.n_params
    m = np.zeros(P)
    for _ in range(8):  # Newton's method to the mode: q sits near the posterior, as late in a fit
        g = model.log_joint_grad(m[None, :])[1][0]
        m = m + np.linalg.solve(model.curvature_at(m), g)
    C = model.curvature_at(m)
    phi = np.concatenate([m, -0.5 * np.log(np.diag(C))])  # mean-field sds at the mode
    rng = np.random.default_rng(1)
    plain, cv = [], []
    for _ in range(60):
        eps = rng.standard_normal((8, model.n_params))
        U = family.sample(phi, eps)
        logp, g = model.log_joint_grad(U)
        plain.append(family.elbo_grad(phi, eps, logp, g, "reparam")[1])
        g_cv = g + (U - m) @ C
        cv.append(family.elbo_grad(phi, eps, logp, g_cv, "reparam")[1]
                  - family.quadratic_cv_mean(phi, C))
    ratio = np.var(plain, axis=0) / np.var(cv, axis=0)
    assert np.min(ratio) > 100  # measured: 10^3 - 10^5 at N = 100,000


@pytest.mark.parametrize("family", ["meanfield", "fullrank"])
def test_fit_with_quadratic_cv_agrees_with_the_plain_fit(tmp_path, family):
    config = make_project(tmp_path)
    est = ["inference.estimator=reparam", f"inference.family={family}"]
    plain = vireg.fit(config, overrides=[*est, "inference.quadratic_cv=false"])
    cv = vireg.fit(config, overrides=[*est, "inference.quadratic_cv=true"])
    assert cv.converged, cv.reason
    assert cv.extras["quadratic_cv"] and not plain.extras["quadratic_cv"]
    sd = plain.summary.sd
    assert np.max(np.abs(cv.summary.mean - plain.summary.mean) / sd) < 0.1
    assert np.max(np.abs(cv.summary.sd / sd - 1)) < 0.1


def test_auto_uses_it_for_reparam_with_many_rows_per_parameter_only(tmp_path):
    from vireg.config import InferenceConfig
    from vireg.engine import uses_quadratic_cv

    big = synthetic_model("logistic", "meanfield", 2000, 5, 8)  # 333 rows per parameter
    small = synthetic_model("logistic", "meanfield", 300, 5, 8)  # 50
    auto = InferenceConfig(estimator="reparam")
    assert uses_quadratic_cv(big, auto) and not uses_quadratic_cv(small, auto)
    assert not uses_quadratic_cv(big, InferenceConfig(estimator="stl"))
    assert not uses_quadratic_cv(big, InferenceConfig(estimator="reparam", quadratic_cv=False))
    assert uses_quadratic_cv(small, InferenceConfig(estimator="reparam", quadratic_cv=True))
    # Minibatches: off when a curvature pass (N x D) costs more than a window of steps
    # (window x batch x (S + 1)): 2000 x 5 = 10,000 against 100 x 10 x 9 = 9,000 and 100 x 20 x 9;
    # with samples: auto, S = 2 there: 100 x 40 x 3 = 12,000.
    eight = {"estimator": "reparam", "samples": 8, "window": 100}
    assert not uses_quadratic_cv(big, InferenceConfig(**eight, batch_size=10))
    assert uses_quadratic_cv(big, InferenceConfig(**eight, batch_size=20))
    auto_s = {"estimator": "reparam", "window": 100}
    assert not uses_quadratic_cv(big, InferenceConfig(**auto_s, batch_size=20))
    assert uses_quadratic_cv(big, InferenceConfig(**auto_s, batch_size=40))
    # The default window, 50 steps: 50 x 20 x 9 = 9,000.
    assert not uses_quadratic_cv(big, InferenceConfig(estimator="reparam", samples=8,
                                                      batch_size=20))


def test_auto_samples_are_two_with_the_control_variate_and_eight_without(tmp_path):
    from vireg.config import InferenceConfig
    from vireg.engine import DEFAULT_SAMPLES, QCV_SAMPLES, draws_per_step, whitened_samples

    big = synthetic_model("logistic", "meanfield", 2000, 5, 8)
    small = synthetic_model("logistic", "meanfield", 300, 5, 8)
    auto = InferenceConfig(estimator="reparam")
    assert (QCV_SAMPLES, DEFAULT_SAMPLES) == (2, 8)
    assert draws_per_step(big, auto) == 2
    assert draws_per_step(big, InferenceConfig(estimator="reparam", samples=5)) == 5
    # Without the control variate: at least eight, and more while a step's kernel work (rows x
    # parameters x draws) stays under 2^20: 2000 x 6 -> 64, 300 x 6 -> 512 (the most).
    assert draws_per_step(big, InferenceConfig(estimator="stl")) == 64 == whitened_samples(2000, 6)
    assert draws_per_step(big, InferenceConfig(estimator="reparam", quadratic_cv=False)) == 64
    assert draws_per_step(small, auto) == 512
    assert whitened_samples(100_000, 51) == 2
    # The fit records the number it used.
    config = make_project(tmp_path)
    fit = vireg.fit(config)
    assert isinstance(fit.config.inference.samples, int)
    assert fit.config.inference.samples == (2 if fit.extras["quadratic_cv"]
                                            else whitened_samples(fit.n_rows, 3))


def test_quadratic_cv_refuses_what_it_cannot_do(tmp_path):
    config = make_project(tmp_path)
    with pytest.raises(InputError, match="applies to the reparam estimator, not score"):
        vireg.fit(config, overrides=["inference.quadratic_cv=true", "inference.estimator=score"])
    with pytest.raises(InputError, match="applies to the reparam estimator, not stl"):
        vireg.fit(config, overrides=["inference.quadratic_cv=true", "inference.family=fullrank"])
    for bad in ("sometimes", "1"):
        with pytest.raises(InputError, match="must be true, false or auto"):
            vireg.fit(config, overrides=[f"inference.quadratic_cv={bad}"])
