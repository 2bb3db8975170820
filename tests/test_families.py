"""The count, proportion, probit and Student-t likelihoods: their kernel against plain NumPy and
SciPy references, the model's gradients and curvature against finite differences, the special
functions against SciPy, and extreme linear predictors."""

import numba
import numpy as np
import pytest
import reference
from scipy import special

from vireg.data import Design
from vireg.kernels import glm
from vireg.kernels.flags import chunk_rows_for
from vireg.kernels.special import digamma, log_ndtr_and_mills, trigamma
from vireg.models.model import Model, positive_parameters, resolve_priors

CODES = {"binomial": glm.BINOMIAL, "poisson": glm.POISSON,
         "negative_binomial": glm.NEGATIVE_BINOMIAL, "student_t": glm.STUDENT_T,
         "probit": glm.PROBIT}
N_AUX = {"negative_binomial": 1, "student_t": 2}


def kernel_problem(rng, family, N, D, S, intercept, scale=0.5):
    """(Z, Y, U) in the kernel's layout, with data drawn from the family."""
    Z = np.ascontiguousarray(rng.standard_normal((N, D)))
    eta = 0.3 + Z @ (0.3 * rng.standard_normal(D))
    x = np.zeros(N)
    if family == "binomial":
        x = rng.integers(1, 30, N).astype(float)
        y = rng.binomial(x.astype(int), special.expit(eta)).astype(float)
    elif family in ("poisson", "negative_binomial"):
        x = np.log(rng.uniform(0.5, 4.0, N))
        y = rng.poisson(np.exp(eta + x) * rng.gamma(2.0, 0.5, N)).astype(float)
    elif family == "student_t":
        y = eta + 0.8 * rng.standard_t(3, N)
    else:
        y = (rng.random(N) < special.ndtr(eta)).astype(float)
    P = int(intercept) + D + N_AUX.get(family, 0)
    U = rng.standard_normal((S, P)) * scale
    return Z, np.ascontiguousarray(np.column_stack([y, x])), U


@pytest.mark.parametrize("family", list(CODES))
@pytest.mark.parametrize("intercept", [True, False])
# S = 1, 2 (byte-sized blocks, both draws in one loop), 5 and 9 (the four- and eight-draw
# blocked paths with remainders); N not a multiple of four
@pytest.mark.parametrize(("N", "D", "S"), [(1, 1, 1), (203, 6, 5), (517, 40, 2), (97, 5, 9)])
@pytest.mark.parametrize("parallel", [True, False])
def test_glm_kernel_matches_reference(rng, family, intercept, N, D, S, parallel):
    Z, Y, U = kernel_problem(rng, family, N, D, S, intercept)
    kernel = glm.glm_loglik_grad if parallel else glm.glm_loglik_grad_serial
    G, ll = kernel(CODES[family], Z, Y, U, intercept, chunk_rows_for(N, D), True)
    G_ref, ll_ref = reference.glm_loglik_grad(family, Z, Y, U, intercept)
    np.testing.assert_allclose(ll, ll_ref, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(G, G_ref, rtol=1e-6, atol=1e-5)
    _, ll_only = kernel(CODES[family], Z, Y, U, intercept, chunk_rows_for(N, D), False)
    np.testing.assert_array_equal(ll_only, ll)


@pytest.mark.parametrize("family", list(CODES))
def test_glm_kernel_is_bit_identical_at_one_and_two_threads(rng, family):
    Z, Y, U = kernel_problem(rng, family, 30000, 8, 3, True)
    chunk = chunk_rows_for(*Z.shape)
    results = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        results.append(glm.glm_loglik_grad(CODES[family], Z, Y, U, True, chunk, True))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("family", list(CODES))
def test_glm_kernel_is_finite_for_linear_predictors_up_to_700(rng, family):
    """|eta| up to 700: no overflow, and the log-likelihood as the reference computes it."""
    N = 64
    Z = np.linspace(-1.0, 1.0, N)[:, None].copy()
    U = np.array([[0.0, 700.0] + [0.0] * N_AUX.get(family, 0)])
    y = np.where(Z[:, 0] > 0, 1.0, 0.0) if family in ("probit",) else np.ones(N)
    x = np.full(N, 2.0) if family == "binomial" else np.zeros(N)
    Y = np.ascontiguousarray(np.column_stack([y, x]))
    G, ll = glm.glm_loglik_grad(CODES[family], Z, Y, U, True, N, True)
    assert np.all(np.isfinite(G)) and np.all(np.isfinite(ll))
    _, ll_ref = reference.glm_loglik_grad(family, Z, Y, U, True)
    np.testing.assert_allclose(ll, ll_ref, rtol=1e-9)


def test_log_normal_cdf_and_mills_ratio_match_scipy_everywhere():
    z = np.concatenate([np.linspace(-1000, -30, 50), np.linspace(-30, 37, 2001)])
    out = np.array([log_ndtr_and_mills(v) for v in z])
    # Numba's erfc (a port of CPython's series and continued fraction) is good to about 1e-11
    np.testing.assert_allclose(out[:, 0], special.log_ndtr(z), rtol=1e-10, atol=1e-300)
    body = z >= -30  # phi / Phi from SciPy's log densities, exact enough while z^2 is moderate
    mills = np.exp(-0.5 * z * z - 0.5 * np.log(2 * np.pi) - special.log_ndtr(z))
    np.testing.assert_allclose(out[body, 1], mills[body], rtol=1e-10, atol=1e-300)
    u = -z[z <= -40]  # the tail's asymptotic series u + 1/u - 2/u^3 + 10/u^5 - 74/u^7
    series = u + 1 / u - 2 / u**3 + 10 / u**5 - 74 / u**7
    np.testing.assert_allclose(out[z <= -40, 1], series, rtol=1e-13)


def test_digamma_and_trigamma_match_scipy():
    x = np.concatenate([np.geomspace(1e-6, 1.0, 50), np.linspace(1.0, 1e4, 500)])
    np.testing.assert_allclose([digamma(v) for v in x], special.digamma(x), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose([trigamma(v) for v in x], special.polygamma(1, x), rtol=1e-13)


def make_model(rng, family, N=300, D=3, intercept=True, link=None, fixed_nu=None):
    Z, Y, _ = kernel_problem(rng, family, N, D, 1, intercept)
    X = 2.0 * Z + 1.0
    y, x = Y[:, 0], Y[:, 1]
    likelihood = "bernoulli" if family == "probit" else family
    link = "probit" if family == "probit" else link
    row_data = {"binomial": x, "poisson": np.exp(x), "negative_binomial": np.exp(x)}.get(family)
    design = Design(y=y, X=X, response="y", covariates=[f"x{j}" for j in range(D)],
                    row_data=row_data, row_data_name="n" if row_data is not None else None)
    from vireg.config import PriorConfig

    positive = positive_parameters(likelihood, link, None, fixed_nu)
    priors = resolve_priors(PriorConfig(intercept="normal(0, 5)", coefficients="normal(0, 2)",
                                        sigma="half_normal(3)" if family == "student_t" else None),
                            likelihood, intercept, design.covariates, positive)
    model = Model(design, likelihood, intercept, priors, link=link, fixed_nu=fixed_nu)
    return model, X, y, row_data


@pytest.mark.parametrize("family", list(CODES))
@pytest.mark.parametrize("intercept", [True, False])
def test_log_joint_matches_scipy_on_the_natural_scale(rng, family, intercept):
    """The model's log p(y, theta) (kernel, constants, response terms, priors) against SciPy's
    densities of the data as given, and its per-observation log-likelihood too."""
    model, X, y, row_data = make_model(rng, family, intercept=intercept)
    U = 0.3 * rng.standard_normal((3, model.n_params))
    lp, _ = model.log_joint_grad(U)
    theta = model.to_theta(U)
    off, D = int(intercept), X.shape[1]
    for s in range(3):
        eta = (theta[s, 0] if intercept else 0.0) + X @ theta[s, off:off + D]
        if family in ("poisson", "negative_binomial"):
            eta = eta + np.log(row_data)
        aux = np.exp(theta[s, off + D:])
        rows = reference.glm_row_loglik(family, y, row_data, eta, aux)
        prior = sum(float(reference.log_prior(p.name, p.args, np.array([theta[s, i]]))[0])
                    for i, p in enumerate(model.priors))
        np.testing.assert_allclose(lp[s], rows.sum() + prior, rtol=1e-10)
        np.testing.assert_allclose(model.pointwise_loglik(U[s:s + 1])[0], rows, rtol=1e-10,
                                   atol=1e-10)


@pytest.mark.parametrize("family", list(CODES))
def test_gradient_and_hessian_match_finite_differences(rng, family):
    model, *_ = make_model(rng, family)
    U = 0.3 * rng.standard_normal((2, model.n_params))
    _, G = model.log_joint_grad(U)
    h = 1e-6
    for j in range(model.n_params):
        E = np.zeros_like(U)
        E[:, j] = h
        fd = (model.log_joint_grad(U + E)[0] - model.log_joint_grad(U - E)[0]) / (2 * h)
        np.testing.assert_allclose(G[:, j], fd, rtol=1e-6, atol=1e-5)
    H = model.hessian_at(U[0])
    fd = np.empty_like(H)
    for j in range(model.n_params):
        e = np.zeros(model.n_params)
        e[j] = 1e-5
        fd[:, j] = -(model.log_joint_grad((U[0] + e)[None])[1][0]
                     - model.log_joint_grad((U[0] - e)[None])[1][0]) / 2e-5
    np.testing.assert_allclose(H, fd, rtol=1e-5, atol=1e-4 * np.abs(H).max())


def test_fixed_nu_is_not_fitted_and_enters_the_likelihood(rng):
    model, X, y, _ = make_model(rng, "student_t", fixed_nu=4.0)
    assert model.param_names[-1] == "sigma"
    U = 0.2 * rng.standard_normal((1, model.n_params))
    theta = model.to_theta(U)[0]
    eta = theta[0] + X @ theta[1:4]
    rows = reference.glm_row_loglik("student_t", y, None, eta, (np.exp(theta[-1]), 4.0))
    np.testing.assert_allclose(model.pointwise_loglik(U)[0], rows, rtol=1e-10)


@pytest.mark.parametrize("family", ["gaussian", "logit", *CODES])
@pytest.mark.parametrize("S", [1, 2, 9])
@pytest.mark.parametrize("crossed", [False, True])
def test_grouped_kernel_adds_group_terms_and_sums_them_per_group(rng, family, S, crossed):
    """eta_is = a + z_i b + W_i . Bg[g_i, :, s] (+ a second, crossed factor's
    sum_e Xw[i, e] Bx[Xi[i, e], s]): the grouped kernel against NumPy, its per-group sums, and
    (crossed) the per-row r it stores and ``gather_effect_sums`` of the second factor's."""
    codes = {"gaussian": glm.GAUSSIAN, "logit": glm.LOGIT, **CODES}
    N, D, K, n_groups = 400, 3, 2, 13
    gid = np.sort(rng.integers(0, n_groups, N))
    W = np.ascontiguousarray(np.column_stack([np.ones(N), rng.standard_normal(N)]))
    ref_family = {"gaussian": "student_t", "logit": "probit"}.get(family, family)
    Z, Y, U = kernel_problem(rng, ref_family, N, D, S, True)
    if family == "gaussian":
        U = np.ascontiguousarray(U[:, :-1])  # t only
    if family == "logit":
        Y[:, 0] = (Y[:, 0] > 0).astype(float)
    Bg = 0.3 * rng.standard_normal((n_groups, K, S))
    starts = np.searchsorted(gid, [0, 5, 9, n_groups]).astype(np.int64)  # chunks of whole groups
    G2 = 7  # the second factor: intercept and slope on its own column, unsorted
    second = rng.integers(0, G2, N) if crossed else np.zeros(N, dtype=np.int64)
    Xw = np.column_stack([np.ones(N), rng.standard_normal(N)])[:, :2 if crossed else 0]
    Xi = np.ascontiguousarray(np.column_stack([2 * second, 2 * second + 1])[:, :Xw.shape[1]])
    Bx = 0.3 * rng.standard_normal((2 * G2 if crossed else 0, S))
    R = np.empty((N if crossed else 0, S))
    G, ll, Sg = glm.grouped_loglik_grad(codes[family], Z, Y, W, gid, starts, U, Bg, True, True,
                                        Xi, np.ascontiguousarray(Xw), Bx, R)
    if crossed:
        order = np.argsort(Xi.ravel(), kind="stable")
        ptr = np.searchsorted(Xi.ravel()[order], np.arange(2 * G2 + 1)).astype(np.int64)
        Sx = glm.gather_effect_sums(R, ptr, (order // 2).astype(np.int64), Xw.ravel()[order])
    # reference: each draw alone, the group part of eta moved into the intercept per row
    for s in range(S):
        extra = np.einsum("ik,ik->i", W, Bg[gid, :, s]) + np.einsum("ik,ik->i", Xw, Bx[Xi, s])
        eta = U[s, 0] + Z @ U[s, 1:1 + D] + extra
        if family in ("poisson", "negative_binomial"):
            eta = eta + Y[:, 1]
        h = 1e-6
        total = _row_total(family, Y, eta, U[s, 1 + D:])
        r = (_row_total(family, Y, eta + h, U[s, 1 + D:], rows=True)
             - _row_total(family, Y, eta - h, U[s, 1 + D:], rows=True)) / (2 * h)
        np.testing.assert_allclose(ll[s], total, rtol=1e-10)
        np.testing.assert_allclose(G[s, 0], r.sum(), rtol=1e-5, atol=1e-5)
        for g in range(n_groups):
            np.testing.assert_allclose(Sg[g, :, s], (r[gid == g, None] * W[gid == g]).sum(axis=0),
                                       rtol=1e-5, atol=1e-5)
        if crossed:
            np.testing.assert_allclose(R[:, s], r, rtol=1e-5, atol=1e-5)
            for j in range(G2):
                np.testing.assert_allclose(Sx[2 * j:2 * j + 2, s],
                                           (r[second == j, None] * Xw[second == j]).sum(axis=0),
                                           rtol=1e-5, atol=1e-5)


def _row_total(family, Y, eta, aux, rows=False):
    """The kernel part of the log-likelihood (``kernels.glm`` module doc) per row or summed."""
    y, x = Y[:, 0], Y[:, 1]
    if family == "gaussian":
        v = -0.5 * np.log(2 * np.pi) - aux[0] - 0.5 * (y - eta) ** 2 * np.exp(-2 * aux[0])
    elif family == "logit":
        v = y * eta - np.logaddexp(0.0, eta)
    elif family == "binomial":
        v = y * eta - x * np.logaddexp(0.0, eta)
    elif family == "poisson":
        v = y * eta - np.exp(eta)
    elif family == "negative_binomial":
        xs = eta - aux[0]
        v = y * xs - (y + np.exp(aux[0])) * np.logaddexp(0.0, xs)
    elif family == "student_t":
        from scipy import stats

        v = stats.t(np.exp(aux[1]), eta, np.exp(aux[0])).logpdf(y)
    else:
        v = special.log_ndtr((2 * y - 1) * eta)
    return v if rows else v.sum()


def test_negative_binomial_with_phi_far_above_the_mean_matches_scipy(rng):
    """x' = eta - log phi below the vector exp's floor (-40): the kernel recomputes those
    entries, and the response's Gamma terms stay exact at large phi."""
    from vireg.kernels.glm import dispersion_terms

    N = 50
    Z = np.zeros((N, 1))
    y = rng.poisson(2.0, N).astype(float)
    Y = np.ascontiguousarray(np.column_stack([y, np.zeros(N)]))
    for log_phi in (10.0, 30.0, 46.0, 60.0):
        U = np.array([[np.log(2.0), 0.0, log_phi]])
        _, ll = glm.glm_loglik_grad(glm.NEGATIVE_BINOMIAL, Z, Y, U, True, N, True)
        values, counts = np.unique(y, return_counts=True)
        gamma_terms = dispersion_terms(values, counts.astype(float), np.array([log_phi]))[0, 0]
        total = ll[0] + gamma_terms - special.gammaln(y + 1).sum()
        # SciPy's nbinom loses its digits beyond phi ~ 1e10 (-inf at e^46): there the Poisson
        # limit, within mu^2 / phi (below 1e-12) of the negative binomial, is the reference
        ref = (reference.glm_row_loglik("negative_binomial", y, None, np.full(N, np.log(2.0)),
                                        (np.exp(log_phi),)).sum() if log_phi < 20 else
               reference.glm_row_loglik("poisson", y, None, np.full(N, np.log(2.0)), ()).sum())
        np.testing.assert_allclose(total, ref, rtol=1e-9)


def test_binomial_with_huge_trials_and_tiny_probabilities_is_exact(rng):
    N = 20
    Z = np.zeros((N, 1))
    Y = np.ascontiguousarray(np.column_stack([np.zeros(N), np.full(N, 1e12)]))
    U = np.array([[-45.0, 0.0]])  # n p = 1e12 e^-45 ~ 3e-8: the floored exp was 4e-6
    G, ll = glm.glm_loglik_grad(glm.BINOMIAL, Z, Y, U, True, N, True)
    np.testing.assert_allclose(ll[0], -N * 1e12 * np.logaddexp(0.0, -45.0), rtol=1e-12)
    np.testing.assert_allclose(G[0, 0], -N * 1e12 * special.expit(-45.0), rtol=1e-12)


def test_student_t_kernel_is_exact_for_residuals_of_any_size(rng):
    """q = e^2 / (nu sigma^2) beyond the vector log1p's range (1e19) goes through libm."""
    N = 16
    Z = np.zeros((N, 1))
    y = np.concatenate([rng.standard_normal(N - 3), [1e10, -3e12, 1e150]])
    Y = np.ascontiguousarray(np.column_stack([y, np.zeros(N)]))
    U = np.array([[0.1, 0.0, -0.5, np.log(3.0)]])
    G, ll = glm.glm_loglik_grad(glm.STUDENT_T, Z, Y, U, True, N, True)
    G_ref, ll_ref = reference.glm_loglik_grad("student_t", Z, Y, U, True)
    np.testing.assert_allclose(ll, ll_ref, rtol=1e-12)
    np.testing.assert_allclose(G[:, :2], G_ref[:, :2], rtol=1e-6, atol=1e-6)
