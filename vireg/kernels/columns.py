"""Column statistics in one parallel pass over the rows."""

import numpy as np
from numba import njit, prange

from vireg.kernels.flags import JIT_OPTIONS


@njit(parallel=True, **JIT_OPTIONS)
def class_extremes(X, y, chunk_rows):
    """out[0] = min over rows with y = 1, out[1] = max over them, out[2] = min over rows with
    y = 0, out[3] = max over them, per column (+inf / -inf for an empty class)."""
    N, D = X.shape
    n_chunks = (N + chunk_rows - 1) // chunk_rows
    partial = np.empty((n_chunks, 4, D))
    for c in prange(n_chunks):
        p = partial[c]
        for j in range(D):
            p[0, j] = np.inf
            p[1, j] = -np.inf
            p[2, j] = np.inf
            p[3, j] = -np.inf
        for i in range(c * chunk_rows, min(N, (c + 1) * chunk_rows)):
            k = 0 if y[i] == 1.0 else 2
            row = X[i]
            for j in range(D):
                v = row[j]
                p[k, j] = min(p[k, j], v)
                p[k + 1, j] = max(p[k + 1, j], v)
    out = partial[0].copy()
    for c in range(1, n_chunks):
        for j in range(D):
            out[0, j] = min(out[0, j], partial[c, 0, j])
            out[1, j] = max(out[1, j], partial[c, 1, j])
            out[2, j] = min(out[2, j], partial[c, 2, j])
            out[3, j] = max(out[3, j], partial[c, 3, j])
    return out
