"""Every hand-derived gradient against central finite differences, and every density against an
independent reference (scipy.stats)."""

import numpy as np
import pytest
import reference

from vireg.data import Design
from vireg.families.fullrank import FullRank
from vireg.families.meanfield import MeanField
from vireg.models.model import Model
from vireg.models.priors import parse_prior

FD_STEP = 1e-5
FD_RTOL = 1e-5
FD_ATOL = 1e-6

LOCATION_PRIORS = ["flat", "normal(0.5, 2)", "student_t(3, -1, 2.5)", "cauchy(0, 2.5)",
                   "laplace(0.3, 1.5)"]
SCALE_PRIORS = ["flat", "half_normal(2)", "half_cauchy(2.5)", "half_student_t(3, 10)",
                "exponential(0.7)"]


def central_diff(f, x, h=FD_STEP):
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


@pytest.mark.parametrize("text", LOCATION_PRIORS)
def test_location_prior_density_and_gradient(text):
    prior = parse_prior(text, "test", "location")
    x = np.array([-3.1, -0.4, 0.2, 0.9, 4.5])  # avoids the laplace kink at mu
    np.testing.assert_allclose(prior.logpdf(x), reference.log_prior(prior.name, prior.args, x),
                               rtol=1e-12, atol=1e-12)
    fd = np.array([(prior.logpdf(np.array([v + FD_STEP])) - prior.logpdf(np.array([v - FD_STEP])))[0]
                   / (2 * FD_STEP) for v in x])
    np.testing.assert_allclose(prior.grad(x), fd, rtol=FD_RTOL, atol=FD_ATOL)


@pytest.mark.parametrize("text", SCALE_PRIORS)
def test_scale_prior_density_and_gradient_in_log_sigma(text):
    prior = parse_prior(text, "test", "scale")
    tau = np.array([-2.0, -0.3, 0.0, 1.1, 3.0])
    np.testing.assert_allclose(prior.logpdf(tau), reference.log_prior(prior.name, prior.args, tau),
                               rtol=1e-12, atol=1e-12)
    fd = np.array([(prior.logpdf(np.array([v + FD_STEP])) - prior.logpdf(np.array([v - FD_STEP])))[0]
                   / (2 * FD_STEP) for v in tau])
    np.testing.assert_allclose(prior.grad(tau), fd, rtol=FD_RTOL, atol=FD_ATOL)


def make_model(rng, family, N, D, intercept, coef_prior, sigma_prior="flat", fixed_sigma=None):
    X = rng.standard_normal((N, D)) * rng.uniform(0.5, 50, D) + rng.uniform(-100, 100, D)
    beta = rng.standard_normal(D) / X.std(axis=0)
    eta = X @ beta - (X.mean(axis=0) @ beta) + 0.3
    if family == "gaussian":
        y = 40 + 5 * eta + rng.standard_normal(N) * 3
    else:
        y = (rng.random(N) < 1 / (1 + np.exp(-eta))).astype(float)
    priors = ([parse_prior(coef_prior, "t", "location")] if intercept else [])
    priors += [parse_prior(coef_prior, "t", "location")] * D
    if family == "gaussian" and fixed_sigma is None:
        priors.append(parse_prior(sigma_prior, "t", "scale"))
    design = Design(y=y, X=np.ascontiguousarray(X), response="y",
                    covariates=[f"x{j}" for j in range(D)])
    return Model(design, family, intercept, priors, fixed_sigma), X, y


SIZES = [(5, 1), (50, 3), (3000, 10)]


@pytest.mark.parametrize(("N", "D"), SIZES)
@pytest.mark.parametrize("family", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("prior", LOCATION_PRIORS)
def test_model_log_joint_matches_reference_and_its_gradient_matches_finite_differences(
        rng, N, D, family, prior):
    sigma_prior = SCALE_PRIORS[(LOCATION_PRIORS.index(prior) + D) % len(SCALE_PRIORS)]
    model, X, y = make_model(rng, family, N, D, True, prior, sigma_prior)
    u = rng.standard_normal(model.n_params) * 0.3

    def log_joint(u_):
        return model.log_joint_grad(u_[None, :])[0][0]

    theta = model.to_theta(u[None, :])[0]
    expected = reference.log_joint_theta(X, y, theta, family, True, model.priors)
    np.testing.assert_allclose(log_joint(u), expected, rtol=1e-10)
    grad = model.log_joint_grad(u[None, :])[1][0]
    scale = max(1.0, np.abs(grad).max())
    np.testing.assert_allclose(grad, central_diff(log_joint, u), rtol=FD_RTOL, atol=FD_ATOL * scale)


@pytest.mark.parametrize("intercept", [True, False])
def test_fixed_sigma_and_no_intercept_models_match_reference(rng, intercept):
    model, X, y = make_model(rng, "gaussian", 40, 2, intercept, "normal(0, 3)", fixed_sigma=2.5)
    u = rng.standard_normal(model.n_params) * 0.3
    theta = model.to_theta(u[None, :])[0]
    expected = reference.log_joint_theta(X, y, theta, "gaussian", intercept, model.priors, 2.5)
    np.testing.assert_allclose(model.log_joint_grad(u[None, :])[0][0], expected, rtol=1e-10)

    def log_joint(u_):
        return model.log_joint_grad(u_[None, :])[0][0]

    np.testing.assert_allclose(model.log_joint_grad(u[None, :])[1][0], central_diff(log_joint, u),
                               rtol=FD_RTOL, atol=1e-5)


def mc_elbo(model, family, phi, eps):
    """The Monte Carlo ELBO at fixed eps (what the reparameterisation gradient differentiates)."""
    logp, _ = model.log_joint_grad(family.sample(phi, eps))
    return logp.mean() + family.entropy(phi)


@pytest.mark.parametrize(("N", "D"), SIZES)
@pytest.mark.parametrize("family_name", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("S", [1, 4])
def test_meanfield_reparam_gradient_is_the_derivative_of_the_mc_elbo_at_fixed_eps(
        rng, N, D, family_name, S):
    model, _, _ = make_model(rng, family_name, N, D, True, "student_t(4, 0, 5)", "half_cauchy(3)")
    fam = MeanField(model.n_params)
    phi = np.concatenate([rng.standard_normal(model.n_params) * 0.2,
                          np.log(rng.uniform(0.05, 0.3, model.n_params))])
    eps = rng.standard_normal((S, model.n_params))
    logp, g = model.log_joint_grad(fam.sample(phi, eps))
    elbo, grad = fam.elbo_grad(phi, eps, logp, g, "reparam")
    np.testing.assert_allclose(elbo, mc_elbo(model, fam, phi, eps), rtol=1e-12)
    fd = central_diff(lambda p: mc_elbo(model, fam, p, eps), phi)
    scale = max(1.0, np.abs(grad).max())
    np.testing.assert_allclose(grad, fd, rtol=FD_RTOL, atol=FD_ATOL * scale)


@pytest.mark.parametrize("family_name", ["gaussian", "bernoulli"])
def test_meanfield_stl_gradient_is_the_path_derivative_with_q_parameters_held(rng, family_name):
    model, _, _ = make_model(rng, family_name, 200, 3, True, "normal(0, 5)")
    fam = MeanField(model.n_params)
    P = model.n_params
    phi0 = np.concatenate([rng.standard_normal(P) * 0.2, np.log(rng.uniform(0.05, 0.3, P))])
    eps = rng.standard_normal((3, P))

    def log_q(u, phi):
        m, omega = phi[:P], phi[P:]
        return np.sum(-0.5 * ((u - m) / np.exp(omega)) ** 2 - omega - 0.5 * np.log(2 * np.pi),
                      axis=1)

    def path_objective(phi):
        u = fam.sample(phi, eps)
        return np.mean(model.log_joint_grad(u)[0] - log_q(u, phi0))

    logp, g = model.log_joint_grad(fam.sample(phi0, eps))
    _, grad = fam.elbo_grad(phi0, eps, logp, g, "stl")
    scale = max(1.0, np.abs(grad).max())
    np.testing.assert_allclose(grad, central_diff(path_objective, phi0), rtol=FD_RTOL,
                               atol=FD_ATOL * scale)


def fullrank_phi(rng, fam, P):
    return np.concatenate([rng.standard_normal(P) * 0.2, np.log(rng.uniform(0.05, 0.3, P)),
                           rng.standard_normal(fam.rows.size) * 0.4])


@pytest.mark.parametrize(("N", "D"), SIZES)
@pytest.mark.parametrize("family_name", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("S", [1, 4])
def test_fullrank_reparam_gradient_is_the_derivative_of_the_mc_elbo_at_fixed_eps(
        rng, N, D, family_name, S):
    model, _, _ = make_model(rng, family_name, N, D, True, "laplace(0, 3)", "half_normal(5)")
    fam = FullRank(model.n_params)
    phi = fullrank_phi(rng, fam, model.n_params)
    eps = rng.standard_normal((S, model.n_params))
    logp, g = model.log_joint_grad(fam.sample(phi, eps))
    elbo, grad = fam.elbo_grad(phi, eps, logp, g, "reparam")
    np.testing.assert_allclose(elbo, mc_elbo(model, fam, phi, eps), rtol=1e-12)
    fd = central_diff(lambda p: mc_elbo(model, fam, p, eps), phi)
    scale = max(1.0, np.abs(grad).max())
    np.testing.assert_allclose(grad, fd, rtol=FD_RTOL, atol=FD_ATOL * scale)


@pytest.mark.parametrize("family_name", ["gaussian", "bernoulli"])
def test_fullrank_stl_gradient_is_the_path_derivative_with_q_parameters_held(rng, family_name):
    model, _, _ = make_model(rng, family_name, 200, 3, True, "normal(0, 5)")
    P = model.n_params
    fam = FullRank(P)
    phi0 = fullrank_phi(rng, fam, P)
    L0 = fam.cholesky_factor(phi0)
    m0 = phi0[:P]
    eps = rng.standard_normal((3, P))

    def log_q0(u):
        z = np.linalg.solve(L0, (u - m0).T).T
        return -0.5 * np.sum(z**2, axis=1) - np.sum(np.log(np.diag(L0))) - 0.5 * P * np.log(2 * np.pi)

    def path_objective(phi):
        u = fam.sample(phi, eps)
        return np.mean(model.log_joint_grad(u)[0] - log_q0(u))

    logp, g = model.log_joint_grad(fam.sample(phi0, eps))
    _, grad = fam.elbo_grad(phi0, eps, logp, g, "stl")
    scale = max(1.0, np.abs(grad).max())
    np.testing.assert_allclose(grad, central_diff(path_objective, phi0), rtol=FD_RTOL,
                               atol=FD_ATOL * scale)


def test_stl_per_draw_gradient_is_zero_at_the_exact_conjugate_posterior(rng):
    """Known sigma and normal priors: the posterior is exactly Gaussian, so with q equal to it
    every single-draw STL gradient vanishes (while the reparameterisation gradient does not)."""
    model, X, y = make_model(rng, "gaussian", 300, 3, True, "normal(0, 4)", fixed_sigma=2.0)
    P = model.n_params
    X1 = np.hstack([np.ones((300, 1)), X])
    A = X1.T @ X1 / 4.0 + np.eye(P) / 16.0  # posterior precision of theta
    mean_theta = np.linalg.solve(A, X1.T @ y / 4.0)
    # The same posterior in u (theta = T u + c): precision T^T A T, mean T^-1 (mean - c).
    A_u = model.T.T @ A @ model.T
    mean_u = np.linalg.solve(model.T, mean_theta - model.c)
    fam = FullRank(P)
    phi = fam.init(np.ones(P), np.linalg.inv(A_u))
    phi[:P] = mean_u
    for _ in range(5):
        eps = rng.standard_normal((1, P))
        logp, g = model.log_joint_grad(fam.sample(phi, eps))
        _, stl = fam.elbo_grad(phi, eps, logp, g, "stl")
        _, reparam = fam.elbo_grad(phi, eps, logp, g, "reparam")
        assert np.abs(stl).max() < 1e-6 * np.abs(g).max()
        assert np.abs(reparam).max() > 1e-2


def exact_gaussian_elbo_grad(fam, phi, A, mu):
    """The exact ELBO gradient for log p(u) = -(u - mu)^T A (u - mu) / 2 + const."""
    P = fam.P
    m = phi[:P]
    grad_m = -A @ (m - mu)
    if isinstance(fam, MeanField):
        s2 = np.exp(2 * phi[P:])
        return np.concatenate([grad_m, -np.diag(A) * s2 + 1.0])
    L = fam.cholesky_factor(phi)
    dL = np.tril(-A @ L)
    grad_lambda = np.sum(dL * L, axis=1) + 1.0
    grad_B = dL[fam.rows, fam.cols] * np.exp(phi[P:2 * P])[fam.rows]
    return np.concatenate([grad_m, grad_lambda, grad_B])


@pytest.mark.parametrize("family_cls", [MeanField, FullRank])
@pytest.mark.parametrize("estimator", ["reparam", "stl", "score"])
def test_every_estimator_is_unbiased_for_the_exact_gradient(rng, family_cls, estimator):
    """Known sigma and normal priors make log p(u) exactly Gaussian, so the exact ELBO gradient is
    known in closed form; the mean of many draws of each estimator must agree with it within
    Monte Carlo error."""
    model, X, y = make_model(rng, "gaussian", 200, 2, True, "normal(0, 4)", fixed_sigma=2.0)
    P = model.n_params
    X1 = np.hstack([np.ones((200, 1)), X])
    A = X1.T @ X1 / 4.0 + np.eye(P) / 16.0
    A_u = model.T.T @ A @ model.T
    mu_u = np.linalg.solve(model.T, np.linalg.solve(A, X1.T @ y / 4.0) - model.c)
    fam = family_cls(P)
    # A point away from the optimum: shifted mean, too-wide scales, some correlation.
    sd = 1.5 / np.sqrt(np.diag(A_u))
    cov = np.outer(sd, sd) * (0.3 + 0.7 * np.eye(P))
    phi = fam.init(sd, cov)
    phi[:P] = mu_u + sd * rng.standard_normal(P)
    grads = []
    for _ in range(2500):
        eps = rng.standard_normal((8, P))
        logp, g = model.log_joint_grad(fam.sample(phi, eps))
        grads.append(fam.draw_grads(phi, eps, logp, g, estimator))
    grads = np.vstack(grads)
    exact = exact_gaussian_elbo_grad(fam, phi, A_u, mu_u)
    se = grads.std(axis=0, ddof=1) / np.sqrt(grads.shape[0])
    z = np.abs(grads.mean(axis=0) - exact) / np.maximum(se, 1e-12)
    assert z.max() < 5.0, (estimator, z.round(1))


@pytest.mark.parametrize(("text", "kind"), [(t, "location") for t in LOCATION_PRIORS]
                         + [(t, "scale") for t in SCALE_PRIORS])
def test_prior_second_derivative_matches_finite_differences_of_the_gradient(text, kind):
    prior = parse_prior(text, "test", kind)
    x = np.array([-2.0, -0.4, 0.2, 0.9, 3.0])  # away from the laplace kink at 0.3
    fd = (prior.grad(x + FD_STEP) - prior.grad(x - FD_STEP)) / (2 * FD_STEP)
    np.testing.assert_allclose(prior.hess(x), fd, rtol=FD_RTOL, atol=FD_ATOL)


@pytest.mark.parametrize(("N", "D"), [(50, 3), (3000, 10)])
@pytest.mark.parametrize("family", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("prior", LOCATION_PRIORS)
@pytest.mark.parametrize("orthogonalize", [False, True])
def test_model_hessian_matches_finite_differences_of_the_gradient(rng, N, D, family, prior,
                                                                   orthogonalize):
    """``Model.hessian_at`` (the Laplace start's exact Hessian) against central differences of
    the kernel's gradient, with and without the orthogonalised columns."""
    sigma_prior = SCALE_PRIORS[(LOCATION_PRIORS.index(prior) + D) % len(SCALE_PRIORS)]
    model, _, _ = make_model(rng, family, N, D, True, prior, sigma_prior)
    if orthogonalize:
        model = Model(model.design, family, True, model.priors, orthogonalize=True)
        assert model.design_map is not None
    u = rng.standard_normal(model.n_params) * 0.3

    def grad(u_):
        return model.log_joint_grad(u_[None, :])[1][0]

    fd = np.column_stack([(grad(u + e) - grad(u - e)) / (2 * FD_STEP)
                          for e in np.eye(model.n_params) * FD_STEP])
    H = model.hessian_at(u)
    scale = max(1.0, np.abs(H).max())
    np.testing.assert_allclose(-H, fd, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("family", ["gaussian", "bernoulli"])
def test_orthogonalised_columns_describe_the_same_model(rng, family):
    """Q = Z R^-1 with the map folded into T: log p(y, theta) at the same theta is unchanged."""
    plain, _, _ = make_model(rng, family, 400, 4, True, "normal(0, 3)", "half_normal(5)")
    ortho = Model(plain.design, family, True, plain.priors, orthogonalize=True)
    Q = np.asarray(ortho.Z)
    np.testing.assert_allclose(Q.T @ Q / Q.shape[0], np.eye(4), atol=1e-10)
    u_plain = rng.standard_normal((3, plain.n_params)) * 0.3
    theta = plain.to_theta(u_plain)
    u_ortho = np.linalg.solve(ortho.T, (theta - ortho.c).T).T
    np.testing.assert_allclose(ortho.to_theta(u_ortho), theta, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ortho.log_joint(u_ortho), plain.log_joint(u_plain), rtol=1e-10)
    # the ELBO's constant log |det T| loses log |det R| (u_coef = R b)
    log_det_R = np.sum(np.log(np.abs(np.diag(ortho.design_map))))
    np.testing.assert_allclose(ortho.log_det_T, plain.log_det_T - log_det_R, rtol=1e-12)


@pytest.mark.parametrize("family_name", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("estimator", ["reparam", "stl"])
def test_whitened_fullrank_gradient_is_the_derivative_of_the_mc_elbo_in_its_frame(
        rng, family_name, estimator):
    """A full-rank q in the frame u = o + W z (the Laplace start's): the reparam gradient is the
    derivative of the MC ELBO at fixed eps in z's parameters, the STL one its path derivative
    (stl = reparam minus the score term's draws), and mean, covariance, log q and entropy are
    those of the same q written over u with an identity frame."""
    from vireg.laplace import find_mode, whitening

    model, _, _ = make_model(rng, family_name, 300, 3, True, "normal(0, 5)", "half_normal(5)")
    laplace = find_mode(model)
    W, log_det = whitening(laplace.hessian)
    fam = FullRank(model.n_params, laplace.mode, W, log_det)
    phi = fullrank_phi(rng, fam, model.n_params)
    eps = rng.standard_normal((4, model.n_params))
    logp, g = model.log_joint_grad(fam.sample(phi, eps))
    elbo, grad = fam.elbo_grad(phi, eps, logp, g, "reparam")
    np.testing.assert_allclose(elbo, mc_elbo(model, fam, phi, eps), rtol=1e-12)
    fd = central_diff(lambda p: mc_elbo(model, fam, p, eps), phi)
    np.testing.assert_allclose(grad, fd, rtol=FD_RTOL, atol=FD_ATOL * max(1.0, np.abs(grad).max()))
    if estimator == "stl":  # stl - reparam, draw by draw, is the entropy's score term: mean 0
        big = rng.standard_normal((20000, model.n_params))
        lp, gg = model.log_joint_grad(fam.sample(phi, big))
        d = fam.draw_grads(phi, big, lp, gg, "stl") - fam.draw_grads(phi, big, lp, gg, "reparam")
        se = d.std(axis=0) / np.sqrt(d.shape[0])
        assert np.all(np.abs(d.mean(axis=0)) < 5 * se + 1e-12)
    plain = FullRank(model.n_params)
    phi_u = plain.from_dict(fam.to_dict(phi))
    for a, b in zip(fam.mean_cov(phi), plain.mean_cov(phi_u), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fam.entropy(phi), plain.entropy(phi_u), rtol=1e-12)
    u = fam.sample(phi, eps)
    eps_u = np.linalg.solve(plain.cholesky_factor(phi_u), (u - phi_u[:model.n_params]).T).T
    np.testing.assert_allclose(fam.log_q(phi, eps), plain.log_q(phi_u, eps_u), rtol=1e-10)
