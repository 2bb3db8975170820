"""The Laplace start: Newton's mode and Hessian against exact answers."""

import numpy as np
import pytest
from test_gradients import make_model

from vireg.errors import FitError
from vireg.laplace import find_mode, whitening
from vireg.models.model import Model


@pytest.mark.parametrize("orthogonalize", [False, True])
def test_known_sigma_linear_model_laplace_is_the_exact_posterior(rng, orthogonalize):
    """y ~ N(X1 theta, sigma^2) with sigma known and normal(0, 3) priors: the posterior is
    N(A^-1 X1^T y / sigma^2, A^-1), A = X1^T X1 / sigma^2 + I / 9, exactly the Laplace
    approximation."""
    sigma = 3.0
    model, X, y = make_model(rng, "gaussian", 200, 4, True, "normal(0, 3)", fixed_sigma=sigma)
    if orthogonalize:
        model = Model(model.design, "gaussian", True, model.priors, fixed_sigma=sigma,
                      orthogonalize=True)
    lap = find_mode(model)
    X1 = np.column_stack([np.ones(len(y)), X])
    A = X1.T @ X1 / sigma**2 + np.eye(5) / 9.0
    mean = np.linalg.solve(A, X1.T @ y / sigma**2)
    cov = np.linalg.inv(A)
    np.testing.assert_allclose(model.to_theta(lap.mode[None, :])[0], mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(model.T @ lap.cov @ model.T.T, cov, rtol=1e-8, atol=1e-12)
    assert lap.newton_steps <= 3  # a quadratic log joint: one step from anywhere


def test_whitening_makes_the_curvature_the_identity_even_when_it_is_singular():
    rng = np.random.default_rng(3)
    B = rng.standard_normal((5, 5))
    H = B @ B.T + 1e-3 * np.eye(5)
    W, log_det = whitening(H)
    np.testing.assert_allclose(W.T @ H @ W, np.eye(5), atol=1e-9)
    np.testing.assert_allclose(log_det, -0.5 * np.linalg.slogdet(H)[1], rtol=1e-10)
    Hs = np.diag([4.0, 1.0, 0.0])  # no curvature at all along one direction
    W, _ = whitening(Hs)
    eig = np.linalg.eigvalsh(W.T @ Hs @ W)
    assert np.all(np.isfinite(W)) and np.allclose(eig, [0.0, 1.0, 1.0], atol=1e-9)


def test_a_mode_that_runs_off_is_a_fit_error_not_a_number(rng, monkeypatch):
    model, _, _ = make_model(rng, "bernoulli", 100, 2, True, "flat")
    real = Model.log_joint_grad

    def tilted(self, U):  # log p + 1e3 u_1, steeper than the likelihood can fall: no maximum
        lp, g = real(self, U)
        return lp + 1e3 * U[:, 1], g + np.array([0.0, 1e3, 0.0])

    monkeypatch.setattr(Model, "log_joint_grad", tilted)
    with pytest.raises(FitError, match="mode"):
        find_mode(model)
