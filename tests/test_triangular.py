"""The triangular solves of kernels.triangular against NumPy's general solve."""

import numpy as np
import pytest

from vireg.kernels.triangular import lower_solve, lower_transpose_solve


@pytest.mark.parametrize("n, m", [(1, 1), (7, 1), (40, 3), (200, 2)])
def test_triangular_solves_match_numpy(n, m):
    rng = np.random.default_rng(n)
    # off-diagonals of order 1 / sqrt(n): a well-conditioned factor, like a Cholesky factor
    L = np.tril(rng.standard_normal((n, n)), -1) / np.sqrt(n) + np.diag(1.0 + rng.random(n))
    B = rng.standard_normal((n, m))
    np.testing.assert_allclose(lower_solve(L, B), np.linalg.solve(L, B), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(lower_transpose_solve(L, B), np.linalg.solve(L.T, B), rtol=1e-9,
                               atol=1e-9)
