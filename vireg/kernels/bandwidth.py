"""A streaming read of an array, to measure the machine's read bandwidth for ``vireg bench``."""

import numpy as np
from numba import njit, prange

from vireg.kernels.flags import JIT_OPTIONS


@njit(parallel=True, **JIT_OPTIONS)
def streaming_sum(X, chunk_rows):
    """sum of every element of X, read once, in the same row chunks as the data kernels."""
    N = X.shape[0]
    n_chunks = (N + chunk_rows - 1) // chunk_rows
    partial = np.zeros(n_chunks)
    for c in prange(n_chunks):
        acc = 0.0
        for i in range(c * chunk_rows, min(N, (c + 1) * chunk_rows)):
            row = X[i]
            for j in range(row.shape[0]):
                acc += row[j]
        partial[c] = acc
    return partial.sum()
