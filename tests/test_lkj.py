"""LKJ correlation matrices through canonical partial correlations (vireg.models.lkj): the Cholesky
map, its hand-derived reverse mode, the log density of c and its gradient against central finite
differences, its normaliser, the shape it implies on R, and the CPC distribution behind it."""

import math

import numpy as np
import pytest
from scipy import stats

from vireg.models.lkj import (
    corr_cholesky,
    corr_cholesky_vjp,
    corr_of,
    cpc_shapes,
    lkj_log_density,
    n_corr,
)

FD_STEP = 1e-6
FD_RTOL = 1e-6
FD_ATOL = 1e-7
KS = [2, 3, 4, 5]
ETAS = [0.5, 1.0, 2.0, 4.0]


def lkj_logpdf_two_terms(rho, eta):
    """log p(c) for rho = tanh(c) ~ LKJ(eta), K = 2 (the formula multilevel used for two terms):
    eta log(1 - rho^2) + (1 - 2 eta) log 2 - log B(eta, eta)."""
    return (eta * np.log1p(-rho * rho) + (1 - 2 * eta) * math.log(2)
            - (2 * math.lgamma(eta) - math.lgamma(2 * eta)))


def central_diff(f, c, h=FD_STEP):
    """d f / d c (S, n_c) of a per-draw scalar f (S,) by central differences, entry by entry."""
    g = np.zeros_like(c)
    for p in range(c.shape[1]):
        e = np.zeros_like(c)
        e[:, p] = h
        g[:, p] = (f(c + e) - f(c - e)) / (2 * h)
    return g


def fd_jacobian(c, K, h=FD_STEP):
    """d (R_10, R_20, R_21, ...) / dc (n_c x n_c) at one c (n_c,), by central differences, the
    correlations in np.tril_indices(K, -1) order."""
    rows, cols = np.tril_indices(K, -1)

    def corr(x):
        L = corr_cholesky(x[None], K)[0]
        return (L @ L.T)[rows, cols]

    J = np.zeros((c.size, c.size))
    for p in range(c.size):
        e = np.zeros_like(c)
        e[p] = h
        J[:, p] = (corr(c + e) - corr(c - e)) / (2 * h)
    return J


def random_c(K, S=7, scale=1.5, seed=0):
    return np.random.default_rng(seed + K).normal(0.0, scale, (S, n_corr(K)))


@pytest.mark.parametrize("K", KS)
def test_corr_cholesky_is_the_cholesky_factor_of_a_correlation_matrix(K):
    L = corr_cholesky(random_c(K), K)
    assert L.shape == (7, K, K)
    np.testing.assert_array_equal(np.triu(L, 1), 0.0)
    assert np.all(np.diagonal(L, axis1=1, axis2=2) > 0)
    R = L @ np.swapaxes(L, 1, 2)
    np.testing.assert_allclose(np.diagonal(R, axis1=1, axis2=2), 1.0, rtol=0, atol=1e-14)
    np.testing.assert_allclose(np.linalg.cholesky(R), L, rtol=0, atol=1e-12)  # R is positive definite
    assert np.all(np.linalg.eigvalsh(R) > 0)


@pytest.mark.parametrize("K", KS)
def test_corr_cholesky_stays_valid_at_large_c(K):
    rng = np.random.default_rng(K)
    c = rng.choice([-40.0, -20.0, -8.0, 8.0, 20.0, 40.0], size=(50, n_corr(K)))
    L = corr_cholesky(c, K)
    assert np.all(np.isfinite(L))
    assert np.all(np.diagonal(L, axis1=1, axis2=2) > 0)  # L nonsingular: R positive definite
    R = L @ np.swapaxes(L, 1, 2)
    np.testing.assert_allclose(np.diagonal(R, axis1=1, axis2=2), 1.0, rtol=0, atol=1e-14)
    assert np.all(np.abs(R) <= 1.0 + 1e-14)
    lp, grad = lkj_log_density(c, K, 2.0)
    gc = corr_cholesky_vjp(c, K, rng.standard_normal((50, K, K)))
    assert np.all(np.isfinite(lp)) and np.all(np.isfinite(grad)) and np.all(np.isfinite(gc))


def test_corr_cholesky_for_two_terms_is_the_multilevel_factor():
    c = np.array([[-3.0], [-0.4], [0.0], [1.2], [8.0]])
    rho = np.tanh(c[:, 0])
    L = corr_cholesky(c, 2)
    np.testing.assert_allclose(L[:, 1, 0], rho, rtol=1e-15)
    np.testing.assert_allclose(L[:, 1, 1], np.sqrt(1 - rho**2), rtol=1e-9)
    np.testing.assert_array_equal(L[:, 0], [[1.0, 0.0]] * 5)


def test_corr_of_reads_the_upper_triangle_row_by_row():
    K = 4
    L = corr_cholesky(random_c(K), K)
    R = L @ np.swapaxes(L, 1, 2)
    expected = np.stack([R[:, 0, 1], R[:, 0, 2], R[:, 0, 3], R[:, 1, 2], R[:, 1, 3], R[:, 2, 3]], axis=1)
    np.testing.assert_allclose(corr_of(L), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("K", KS)
def test_corr_cholesky_vjp_matches_finite_differences(K):
    c = random_c(K)
    gL = np.random.default_rng(10 + K).standard_normal((7, K, K))

    def f(x):
        return (np.tril(gL) * corr_cholesky(x, K)).sum(axis=(1, 2))

    gc = corr_cholesky_vjp(c, K, gL)
    np.testing.assert_allclose(gc, central_diff(f, c), rtol=FD_RTOL, atol=FD_ATOL)


def test_corr_cholesky_vjp_reads_only_the_lower_triangle():
    K = 4
    c = random_c(K)
    gL = np.random.default_rng(1).standard_normal((7, K, K))
    np.testing.assert_array_equal(corr_cholesky_vjp(c, K, gL), corr_cholesky_vjp(c, K, np.tril(gL)))


@pytest.mark.parametrize("eta", ETAS)
@pytest.mark.parametrize("K", KS)
def test_lkj_log_density_gradient_matches_finite_differences(K, eta):
    c = random_c(K)
    _, grad = lkj_log_density(c, K, eta)
    fd = central_diff(lambda x: lkj_log_density(x, K, eta)[0], c)
    np.testing.assert_allclose(grad, fd, rtol=FD_RTOL, atol=FD_ATOL)


@pytest.mark.parametrize("eta", ETAS)
def test_lkj_log_density_for_two_terms_is_the_multilevel_formula(eta):
    c = np.linspace(-5.0, 5.0, 21)[:, None]
    rho = np.tanh(c[:, 0])
    lp, grad = lkj_log_density(c, 2, eta)
    np.testing.assert_allclose(lp, lkj_logpdf_two_terms(rho, eta), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(grad[:, 0], -2 * eta * rho, rtol=1e-14, atol=0)


@pytest.mark.parametrize("eta", [1.0, 2.0])
def test_lkj_log_density_integrates_to_one_for_three_terms(eta):
    # The trapezoid rule on an analytic, exponentially decaying integrand converges geometrically:
    # this grid's error is about 1e-12.
    h = 0.25
    grid = np.arange(-16.0, 16.0 + h / 2, h)
    c = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), axis=-1).reshape(-1, 3)
    lp, _ = lkj_log_density(c, 3, eta)
    assert abs(np.exp(lp).sum() * h**3 - 1.0) < 1e-6


@pytest.mark.parametrize("eta", ETAS)
def test_lkj_log_density_has_the_lkj_shape_on_r(eta):
    # exp(lp(c1) - lp(c2)) = [det R1 / det R2]^(eta - 1) |J(c1)| / |J(c2)|, J = d(R_10, R_20, R_21)/dc
    K = 3
    c1, c2 = np.random.default_rng(3).normal(0.0, 0.8, (2, n_corr(K)))
    lp, _ = lkj_log_density(np.stack([c1, c2]), K, eta)
    L = corr_cholesky(np.stack([c1, c2]), K)
    det = np.linalg.det(L @ np.swapaxes(L, 1, 2))
    jac = [abs(np.linalg.det(fd_jacobian(c, K))) for c in (c1, c2)]
    expected = (det[0] / det[1]) ** (eta - 1) * jac[0] / jac[1]
    np.testing.assert_allclose(np.exp(lp[0] - lp[1]), expected, rtol=1e-6)


def test_lkj_density_with_eta_one_is_uniform_on_the_elliptope():
    # LKJ(1) for K = 3 is uniform on the 3 x 3 correlation matrices, a set of volume pi^2 / 2 in
    # (R_10, R_20, R_21): lp = log(2 / pi^2) + log |J(c)|.
    K = 3
    c = np.random.default_rng(4).normal(0.0, 1.0, (5, n_corr(K)))
    lp, _ = lkj_log_density(c, K, 1.0)
    log_jac = [math.log(abs(np.linalg.det(fd_jacobian(x, K)))) for x in c]
    np.testing.assert_allclose(lp, math.log(2 / math.pi**2) + np.array(log_jac), rtol=0, atol=1e-6)


@pytest.mark.parametrize("eta", ETAS)
@pytest.mark.parametrize("K", [3, 4])
def test_lkj_log_density_is_the_normalised_lkj_density_times_the_jacobian(K, eta):
    # LKJ 2009 eq. 16 (d = K, k = 1..d-1): p(R) = det(R)^(eta-1) / c_d with
    # c_d = 2^(sum_k (2 eta - 2 + d - k)(d - k)) prod_k B(eta + (d-k-1)/2, eta + (d-k-1)/2)^(d-k).
    d = K
    log_c = sum((2 * eta - 2 + d - k) * (d - k) * math.log(2)
                + (d - k) * (2 * math.lgamma(eta + (d - k - 1) / 2) - math.lgamma(2 * eta + d - k - 1))
                for k in range(1, d))
    c = np.random.default_rng(5).normal(0.0, 0.8, (3, n_corr(K)))
    lp, _ = lkj_log_density(c, K, eta)
    L = corr_cholesky(c, K)
    log_det = np.linalg.slogdet(L @ np.swapaxes(L, 1, 2))[1]
    log_jac = np.array([math.log(abs(np.linalg.det(fd_jacobian(x, K)))) for x in c])
    np.testing.assert_allclose(lp, (eta - 1) * log_det - log_c + log_jac, rtol=0, atol=1e-6)


def test_cpcs_from_their_betas_give_the_lkj_marginal_correlations():
    # Under LKJ(eta) every correlation is Beta(a, a) on (-1, 1), a = eta - 1 + K/2: mean 0,
    # variance 1 / (2 a + 1) = 1 / (2 (eta - 1) + K + 1).
    K, eta, n = 4, 2.0, 200_000
    b = cpc_shapes(K, eta)
    x = np.random.default_rng(6).beta(b, b, size=(n, n_corr(K)))
    c = 0.5 * (np.log(x) - np.log1p(-x))  # atanh(2 x - 1)
    r = corr_of(corr_cholesky(c, K))
    a = eta - 1 + K / 2
    var = 1 / (2 * (eta - 1) + K + 1)
    se_mean = math.sqrt(var / n)
    se_var = (r**2).std(axis=0) / math.sqrt(n)
    for p in range(n_corr(K)):
        assert abs(r[:, p].mean()) < 5 * se_mean
        assert abs((r[:, p] ** 2).mean() - var) < 5 * se_var[p]
        assert stats.kstest((r[:, p] + 1) / 2, stats.beta(a, a).cdf).pvalue > 1e-3


@pytest.mark.parametrize("bad", [np.zeros(3), np.zeros((2, 2)), np.zeros((2, 3, 1))])
def test_wrong_shape_of_c_is_refused(bad):
    with pytest.raises(ValueError, match="c must be"):
        corr_cholesky(bad, 3)


def test_nonpositive_eta_is_refused():
    with pytest.raises(ValueError, match="eta"):
        lkj_log_density(np.zeros((1, 3)), 3, 0.0)
