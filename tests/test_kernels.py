"""The Numba data kernels against the plain NumPy reference, and their determinism."""

import numba
import numpy as np
import pytest
import reference

from vireg.kernels.flags import chunk_rows_for
from vireg.kernels.likelihood import (
    bernoulli_loglik_grad,
    bernoulli_loglik_grad_serial,
    gaussian_loglik_grad,
    gaussian_loglik_grad_serial,
)

RTOL = 1e-10
KERNELS = {
    "gaussian": (gaussian_loglik_grad, reference.gaussian_loglik_grad),
    "bernoulli": (bernoulli_loglik_grad, reference.bernoulli_loglik_grad),
}
SERIAL = {"gaussian": gaussian_loglik_grad_serial, "bernoulli": bernoulli_loglik_grad_serial}


def make_problem(rng, family, N, D, S, intercept, scale=1.0):
    Z = rng.standard_normal((N, D)) * scale
    y = rng.standard_normal(N) if family == "gaussian" else (rng.random(N) < 0.4).astype(float)
    P = int(intercept) + D + (family == "gaussian")
    U = rng.standard_normal((S, P)) * 0.5
    return np.ascontiguousarray(Z), y, U


@pytest.mark.parametrize("family", list(KERNELS))
@pytest.mark.parametrize("intercept", [True, False])
# S = 5, 6, 9 and row counts that are not multiples of four reach every remainder path of the
# four-rows-by-four-draws blocking; D = 100 and 40 with S < 4 the byte-sized blocks (8 and 20 rows)
# with a last, partial block (517 rows: an odd last block, for the rows-in-pairs gradient loops,
# S = 2 both draws in one loop); S = 9, 13 and 16 the four-rows-by-eight-draws microkernel (one or
# two groups of eight, then the four-draw and one-draw paths).
@pytest.mark.parametrize(("N", "D", "S"), [(1, 1, 1), (7, 3, 2), (300, 10, 8), (5001, 4, 3),
                                            (2000, 0, 2), (203, 6, 5), (97, 5, 9), (4099, 7, 6),
                                            (1003, 100, 1), (517, 40, 2), (301, 13, 16),
                                            (150, 7, 13)])
@pytest.mark.parametrize("build", ["parallel", "serial"])
def test_kernel_matches_numpy_reference(rng, family, intercept, N, D, S, build):
    kernel, ref = KERNELS[family]
    kernel = kernel if build == "parallel" else SERIAL[family]
    Z, y, U = make_problem(rng, family, N, D, S, intercept)
    chunk = chunk_rows_for(N, D)
    G, ll = kernel(Z, y, U, intercept, chunk, True)
    G_ref, ll_ref = ref(Z, y, U, intercept)
    np.testing.assert_allclose(ll, ll_ref, rtol=RTOL, atol=1e-9)
    np.testing.assert_allclose(G, G_ref, rtol=RTOL, atol=1e-9)


@pytest.mark.parametrize("family", list(KERNELS))
def test_kernel_result_does_not_depend_on_chunk_boundaries(rng, family):
    kernel, _ = KERNELS[family]
    Z, y, U = make_problem(rng, family, 1000, 3, 4, True)
    G1, ll1 = kernel(Z, y, U, True, 1000, True)
    G2, ll2 = kernel(Z, y, U, True, 256, True)  # 4 chunks, last one short
    np.testing.assert_allclose(G1, G2, rtol=1e-12)
    np.testing.assert_allclose(ll1, ll2, rtol=1e-12)


def test_bernoulli_kernel_is_stable_for_huge_linear_predictors(rng):
    Z, y, U = make_problem(rng, "bernoulli", 200, 2, 3, True, scale=1e3)
    G, ll = bernoulli_loglik_grad(Z, y, U, True, 64, True)
    G_ref, ll_ref = reference.bernoulli_loglik_grad(Z, y, U, True)
    assert np.all(np.isfinite(G)) and np.all(np.isfinite(ll))
    np.testing.assert_allclose(ll, ll_ref, rtol=RTOL)
    np.testing.assert_allclose(G, G_ref, rtol=RTOL, atol=1e-9)


def test_gaussian_kernel_handles_constant_and_huge_columns(rng):
    Z, y, U = make_problem(rng, "gaussian", 500, 3, 2, True)
    Z[:, 0] = 1.0  # constant column
    Z[:, 1] *= 1e6
    U[:, 2] *= 1e-6
    G, ll = gaussian_loglik_grad(Z, y, U, True, 128, True)
    G_ref, ll_ref = reference.gaussian_loglik_grad(Z, y, U, True)
    np.testing.assert_allclose(ll, ll_ref, rtol=1e-9)
    np.testing.assert_allclose(G, G_ref, rtol=1e-8, atol=1e-6)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two threads")
@pytest.mark.parametrize("family", list(KERNELS))
def test_kernel_is_bit_identical_at_one_and_two_threads(rng, family):
    kernel, _ = KERNELS[family]
    Z, y, U = make_problem(rng, family, 20000, 6, 8, True)
    chunk = chunk_rows_for(*Z.shape)
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        G1, ll1 = kernel(Z, y, U, True, chunk, True)
        numba.set_num_threads(2)
        G2, ll2 = kernel(Z, y, U, True, chunk, True)
    finally:
        numba.set_num_threads(saved)
    assert np.array_equal(G1, G2) and np.array_equal(ll1, ll2)


def test_chunk_size_depends_only_on_data_shape():
    assert chunk_rows_for(10**6, 100) == chunk_rows_for(10**6, 100)
    assert 256 <= chunk_rows_for(10**6, 1000) <= chunk_rows_for(10**6, 1) <= 8192


def test_vectorisable_exp_and_log1p_match_libm_over_their_ranges():
    from numba import njit

    from vireg.kernels.elementary import exp_nonpositive, log1p_unit

    @njit
    def apply(f, x):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = f(x[i])
        return out

    x = -np.linspace(0.0, 40.0, 400001)
    assert np.max(np.abs(apply(exp_nonpositive, x) / np.exp(x) - 1)) < 1e-13
    e = np.r_[np.exp(-np.linspace(0, 40, 10001)), np.linspace(1e-6, 1, 100001)]
    assert np.max(np.abs(apply(log1p_unit, e) / np.log1p(e) - 1)) < 2e-15
    assert apply(log1p_unit, np.zeros(1))[0] == 0.0


def test_eight_draw_logistic_terms_match_libm_to_a_few_ulp():
    """One row, no covariates, eta = the intercept of each of 80,000 draws (a multiple of eight,
    so every draw goes through the vector exp and log1p of ``simd``): ll = -softplus(eta) and
    G = -sigmoid(eta) against NumPy's libm over [-40, 40] (below -40 both saturate by design)."""
    g = np.geomspace(1e-14, 40.0, 40000)
    eta = np.r_[-g, g, np.linspace(-40.0, 40.0, 8000)]
    G, ll = bernoulli_loglik_grad_serial(np.zeros((1, 0)), np.zeros(1), eta[:, None].copy(), True,
                                         256, True)
    softplus = np.logaddexp(0.0, eta)
    e = np.exp(-np.abs(eta))
    sigmoid = np.where(eta >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    assert np.max(np.abs(-ll / softplus - 1)) < 1e-15
    assert np.max(np.abs(-G[:, 0] / sigmoid - 1)) < 1e-15


@pytest.mark.parametrize("family", list(KERNELS))
# 2: the two-draw loops convert each float32 element once for both draws; 8: the eight-draw
# elementwise step widens float32 y; 11: the eight-draw microkernel float32 rows
@pytest.mark.parametrize("S", [2, 4, 8, 11])
def test_float32_data_are_summed_in_float64(rng, family, S):
    """With float32 X and y the kernel's sums are those of the rounded data, in float64."""
    kernel, ref = KERNELS[family]
    Z, y, U = make_problem(rng, family, 3000, 7, S, True)
    Z32, y32 = Z.astype(np.float32), y.astype(np.float32)
    G, ll = kernel(Z32, y32, U, True, chunk_rows_for(3000, 7), True)
    G_ref, ll_ref = ref(Z32.astype(np.float64), y32.astype(np.float64), U, True)
    np.testing.assert_allclose(ll, ll_ref, rtol=RTOL)
    np.testing.assert_allclose(G, G_ref, rtol=RTOL, atol=1e-9)


def test_class_extremes_match_numpy(rng):
    from vireg.kernels.columns import class_extremes

    X = rng.standard_normal((5000, 7))
    y = (rng.random(5000) < 0.3).astype(float)
    out = class_extremes(X, y, 512)
    ones, zeros = X[y == 1], X[y == 0]
    np.testing.assert_array_equal(out, np.vstack([ones.min(0), ones.max(0), zeros.min(0),
                                                  zeros.max(0)]))
    only_zeros = class_extremes(X, np.zeros(5000), 512)
    assert np.all(np.isinf(only_zeros[0])) and np.all(np.isinf(only_zeros[1]))


@pytest.mark.parametrize("family", list(KERNELS))
@pytest.mark.parametrize("S", [1, 8])
def test_kernel_without_gradient_gives_the_same_log_likelihood(rng, family, S):
    kernel, _ = KERNELS[family]
    Z, y, U = make_problem(rng, family, 3001, 6, S, True)
    G, ll = kernel(Z, y, U, True, 256, True)
    _, ll0 = kernel(Z, y, U, True, 256, False)
    np.testing.assert_array_equal(ll0, ll)


@pytest.mark.parametrize(("N", "D"), [(1, 1), (5, 3), (1000, 7), (3001, 0), (10007, 13)])
def test_column_kernels_match_numpy(rng, N, D):
    from vireg.data import _rows_from_blocks
    from vireg.kernels.columns import column_moments, standardize_into

    X = rng.standard_normal((N, D)) * 3.0 + 1e6  # a large offset: M2 must not cancel
    chunk = 97  # many chunks, the last one short: exercises the chunk merge
    blocks = [X[:, :1], X[:, 1:4], *[X[:, j:j + 1] for j in range(4, D)]] if D > 4 else [X]
    np.testing.assert_array_equal(_rows_from_blocks(blocks, N), X)  # 8-column groups, any rest
    mean, m2, lo, hi = column_moments(X, chunk)
    np.testing.assert_allclose(mean, X.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(m2, ((X - X.mean(axis=0)) ** 2).sum(axis=0), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(lo, X.min(axis=0, initial=np.inf))
    np.testing.assert_array_equal(hi, X.max(axis=0, initial=-np.inf))
    scale = np.arange(1.0, D + 1.0)
    for dtype in (np.float64, np.float32):  # float32: the float64 result rounded once
        Z = np.empty((N, D), dtype=dtype)
        standardize_into(X, mean, scale, Z, chunk)
        np.testing.assert_allclose(Z, ((X - mean) / scale).astype(dtype),
                                   rtol=1e-12 if dtype == np.float64 else 2e-7, atol=1e-9)


def test_float32_model_keeps_only_float32_rows_and_a_float64_gram():
    from vireg.bench import synthetic_model

    m64 = synthetic_model("logistic", "meanfield", 3000, 6, 8, dtype="float64")
    m32 = synthetic_model("logistic", "meanfield", 3000, 6, 8, dtype="float32")
    assert m32.Z.dtype == np.float32 and m32.rows.Z is m32.Z  # one copy, the kernel's
    np.testing.assert_array_equal(m32.Z, m64.Z.astype(np.float32))
    g32, g64 = m32.gram(), m64.gram()
    assert g32[0].dtype == np.float64
    np.testing.assert_allclose(g32[0], g64[0], rtol=1e-6, atol=1e-6 * len(m64.y))


def test_parallel_and_serial_builds_have_their_own_cache_files():
    """Numba's cache index does not key on the compiler flags: two builds of one function under
    one name would load each other's machine code (the serial kernel ran on every thread and the
    parallel one on one). Each build must be cached under its own name."""
    from vireg.kernels import likelihood

    for parallel, serial in [(likelihood.bernoulli_loglik_grad,
                               likelihood.bernoulli_loglik_grad_serial),
                              (likelihood.gaussian_loglik_grad,
                               likelihood.gaussian_loglik_grad_serial)]:
        assert parallel.targetoptions["parallel"] and not serial.targetoptions.get("parallel")
        assert parallel.py_func.__qualname__ != serial.py_func.__qualname__
        assert parallel._cache._cache_file._index_name != serial._cache._cache_file._index_name


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_data_kernels_can_be_cached(rng, dtype):
    """A kernel that Numba cannot cache (it refuses functions holding "dynamic globals", such as
    numba.get_thread_id) compiles again in every process: 12 s before every fit."""
    from vireg.kernels import likelihood

    for family, kernel in [("bernoulli", likelihood.bernoulli_loglik_grad),
                           ("bernoulli", likelihood.bernoulli_loglik_grad_serial),
                           ("gaussian", likelihood.gaussian_loglik_grad),
                           ("gaussian", likelihood.gaussian_loglik_grad_serial)]:
        for S in (1, 8):
            Z, y, U = make_problem(rng, family, 600, 3, S, True)
            kernel(Z.astype(dtype), y.astype(dtype), U, True, 256, True)
        assert kernel.overloads
        for cres in kernel.overloads.values():
            assert not cres.library.has_dynamic_globals, kernel.py_func.__qualname__


def test_log1p_any_matches_libm_from_tiny_to_huge_arguments():
    from numba import njit

    from vireg.kernels.elementary import LOG1P_MAX, log1p_any

    q = np.concatenate([[0.0], np.geomspace(1e-300, 1.0, 2000),
                        np.geomspace(1.0, LOG1P_MAX, 4000)])
    values = njit(lambda a: np.array([log1p_any(x) for x in a]))(q)
    np.testing.assert_allclose(values, np.log1p(q), rtol=1e-13, atol=0)
