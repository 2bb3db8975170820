"""Where the standardised rows live, and one pass of the data kernel over them.

Every row source answers the same questions for S draws U (in the kernel's layout, see
``kernels.likelihood``): the per-draw sums over all rows, ``loglik_grad(U) -> (G, ll)``; the
sums over one block of rows, ``block_loglik_grad(U, b) -> (G, ll)``, for minibatch steps; and
``loglik(U) -> ll``, a full pass without the gradient sums (for the diagnostics). Sources differ
only in where the rows are: in memory (``MemoryRows``), streamed from a binary cache on disk
(``vireg.cache.CacheRows``) or on Dask workers (``vireg.distributed``).

Blocks are contiguous row ranges (so a minibatch step still streams through memory) of near-equal
size, fixed by ``set_blocks``; which block a step reads is the caller's choice.

A model with group terms (``models.multilevel``) whose rows are streamed reads them through
``GroupedRowSource`` instead: the grouped kernel over pieces sorted by the primary factor
(``vireg.group_rows``), from the disk cache (``vireg.cache_groups``) or Dask workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from vireg.kernels.flags import chunk_rows_for, use_parallel


@runtime_checkable
class RowSource(Protocol):
    """The contract every row source keeps (memory, disk cache, Dask workers). U holds S draws
    in the kernel's layout; G (S x P) and ll (S,) are per-draw sums over the rows, added in a
    fixed order (bit-identical at any thread count)."""

    n_rows: int

    @property
    def n_blocks(self) -> int:
        """Number of minibatch blocks (1 until ``set_blocks``)."""

    def set_blocks(self, batch_size: int, draws_per_step: int) -> None:
        """Cut the rows into near-equal contiguous blocks of about ``batch_size`` rows; the
        draws per step may choose how a block is computed (serial or parallel)."""

    def loglik_grad(self, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(G, ll) over all rows: one pass."""

    def loglik(self, U: np.ndarray) -> np.ndarray:
        """ll over all rows, without the gradient sums."""

    def block_loglik_grad(self, U: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(G, ll) over block b only."""

    def curvature(self, u: np.ndarray) -> np.ndarray:
        """-d2/du2 of the log-likelihood over all rows at one draw u in the kernel's layout
        (``curvature_sums``; zeros for no rows)."""

    def describe(self) -> dict:
        """Where the rows are, for fit.json."""

    def warm_up(self, n_kernel_cols: int) -> None:
        """Compile the kernels (or load them from the cache) before the first timed step."""

    def close(self) -> None:
        """Release files, clients and memory."""


@runtime_checkable
class GroupedRowSource(Protocol):
    """The contract of streamed rows for a model with group terms (disk cache, Dask workers):
    the grouped kernel (``kernels.glm.grouped_loglik_grad``) over sorted pieces, added in piece
    order (bit-identical at any thread count)."""

    n_rows: int

    def grouped_pass(self, U: np.ndarray, Bg: np.ndarray, Bx: np.ndarray, with_grad: bool,
                     rows: list | None = None) -> tuple:
        """(G, ll, the primary factor's per-group sums, the other factors' per-effect sums or
        None) over all rows, or over the minibatch block ``rows`` (``grouped_blocks``)."""

    def grouped_blocks(self, batch_size: int) -> list:
        """Minibatch blocks of about ``batch_size`` rows, each of whole primary groups of a
        piece; every row is in exactly one block."""

    def describe(self) -> dict:
        """Where the rows are, for fit.json."""

    def close(self) -> None:
        """Release files, clients and memory."""


def data_kernel(likelihood: str, parallel: bool):
    """The data kernel of a likelihood by name ("gaussian" or "bernoulli"): the parallel build,
    or the serial one for data too small to pay for waking the thread pool."""
    from vireg.kernels import likelihood as kernels

    builds = {"bernoulli": (kernels.bernoulli_loglik_grad, kernels.bernoulli_loglik_grad_serial),
              "gaussian": (kernels.gaussian_loglik_grad, kernels.gaussian_loglik_grad_serial)}
    return builds[likelihood][0 if parallel else 1]


def curvature_sums(Z: np.ndarray, Y: np.ndarray, u: np.ndarray, intercept: bool,
                   likelihood) -> np.ndarray:
    """-d2/du2 of the log-likelihood of some rows at one draw u (kernel layout [a, b, aux]), in
    float64 (they add up over row pieces):

        [[Z1^T diag(w) Z1, Z1^T C], [C^T Z1, D]]

    with the likelihood's per-row curvature in eta (w), in eta and each auxiliary parameter
    (the columns of C) and the auxiliary block D summed over the rows
    (``likelihood.curvature_terms``); Z1 = [1, Z] with an intercept."""
    Z = np.asarray(Z, dtype=np.float64)
    Y2 = np.asarray(Y, dtype=np.float64).reshape(len(Z), -1)
    off, D = int(intercept), Z.shape[1]
    a = u[0] if intercept else 0.0
    eta = a + Z @ u[off:off + D]
    if likelihood.ROW_DATA == "exposure":
        eta = eta + Y2[:, 1]
    aux = u[off + D:]
    with np.errstate(over="ignore", under="ignore"):
        w, C, Daux = likelihood.curvature_terms(Y2, eta, aux)
    k = off + D
    H = np.zeros((k + len(aux), k + len(aux)))
    if np.all(w >= 0):
        # B^T B with B = sqrt(w) Z: BLAS's symmetric product (syrk), half the multiply-adds of
        # Z^T (w Z) (100,000 x 50: 26 ms against 44 ms)
        B = Z * np.sqrt(w)[:, None]
        H[off:k, off:k] = B.T @ B
    else:  # a likelihood that is not log-concave in eta (Student-t): the plain product
        H[off:k, off:k] = Z.T @ (w[:, None] * Z)
    if intercept:
        H[0, 0] = w.sum()
        H[0, 1:k] = H[1:k, 0] = w @ Z
    if len(aux):
        cross = np.vstack([C.sum(axis=0)[None, :], Z.T @ C]) if intercept else Z.T @ C
        H[:k, k:] = cross
        H[k:, :k] = cross.T
        H[k:, k:] = Daux
    return H


def curvature_or_zeros(total: np.ndarray | None, n_kernel_cols: int) -> np.ndarray:
    """Summed ``curvature_sums``, or zeros when there were no rows to sum."""
    return total if total is not None else np.zeros((n_kernel_cols, n_kernel_cols))


def add_sums(total, part):
    """The sum of two partial sums (None: nothing yet)."""
    return part if total is None else total + part


def block_bounds(n_rows: int, batch_size: int) -> np.ndarray:
    """Start offsets of ceil(N / B) near-equal contiguous blocks, with N appended."""
    n_blocks = max(1, -(-n_rows // batch_size))
    return np.linspace(0, n_rows, n_blocks + 1).round().astype(np.int64)


class MemoryRows:
    """Rows held in memory as C-contiguous arrays of the kernel's dtype."""

    def __init__(self, Z: np.ndarray, y: np.ndarray, likelihood, intercept: bool,
                 draws_per_step: int):
        self.Z, self.y = Z, y
        self.n_rows, self.n_cov = Z.shape
        self.intercept = intercept
        self.likelihood = likelihood
        self.chunk_rows = chunk_rows_for(self.n_rows, self.n_cov)
        self.parallel = use_parallel(self.n_rows, self.n_cov, draws_per_step)
        self.kernel = likelihood.loglik_grad_kernel(self.parallel)
        self.bounds = np.array([0, self.n_rows], dtype=np.int64)
        self._block_kernel = self.kernel

    @property
    def n_blocks(self) -> int:
        return len(self.bounds) - 1

    def set_blocks(self, batch_size: int, draws_per_step: int) -> None:
        self.bounds = block_bounds(self.n_rows, batch_size)
        rows = int(np.max(np.diff(self.bounds)))
        self._block_kernel = self.likelihood.loglik_grad_kernel(
            use_parallel(rows, self.n_cov, draws_per_step))

    def loglik_grad(self, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.kernel(self.Z, self.y, U, self.intercept, self.chunk_rows, True)

    def loglik(self, U: np.ndarray) -> np.ndarray:
        return self.kernel(self.Z, self.y, U, self.intercept, self.chunk_rows, False)[1]

    def block_loglik_grad(self, U: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = int(self.bounds[b]), int(self.bounds[b + 1])
        return self._block_kernel(self.Z[lo:hi], self.y[lo:hi], U, self.intercept,
                                  self.chunk_rows, True)

    def curvature(self, u: np.ndarray, rows_per_piece: int = 1 << 16) -> np.ndarray:
        """``curvature_sums`` over all rows, a piece at a time."""
        total = None
        for lo in range(0, self.n_rows, rows_per_piece):
            hi = lo + rows_per_piece
            total = add_sums(total, curvature_sums(self.Z[lo:hi], self.y[lo:hi], u,
                                                   self.intercept, self.likelihood))
        return curvature_or_zeros(total, len(u))

    def describe(self) -> dict:
        """For fit.json: where the rows were read from."""
        return {"backend": "memory"}

    def warm_up(self, n_kernel_cols: int) -> None:
        """Compile the kernels (or load them from Numba's cache) on a one-row slice."""
        U = np.zeros((1, n_kernel_cols))
        self.kernel(self.Z[:1], self.y[:1], U, self.intercept, self.chunk_rows, True)
        self._block_kernel(self.Z[:1], self.y[:1], U, self.intercept, self.chunk_rows, True)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class ResponseSums:
    """What Newton's start needs of the response: its sum, the sum of the trials or exposures
    (None without them) and the row count."""

    response: float
    row_data: float | None
    n_rows: int


def kernel_response(likelihood, y: np.ndarray, row_data: np.ndarray | None) -> np.ndarray:
    """The per-row data the likelihood's kernel reads: the (standardised) response itself for
    the gaussian and logistic kernels, else the response beside the trials or log exposure
    (zeros without them; ``kernels.glm``)."""
    from vireg.kernels.codes import GAUSSIAN, LOGIT

    if likelihood.CODE in (GAUSSIAN, LOGIT):
        return np.ascontiguousarray(y)
    extra = (np.zeros(len(y)) if row_data is None
             else likelihood.kernel_row_data(np.asarray(row_data, dtype=np.float64)))
    return np.ascontiguousarray(np.column_stack([y, extra]))


@dataclass(frozen=True)
class ColumnMoments:
    """What setting up a model needs from the raw data, gathered by a streaming pass when the
    rows are not in memory: counts, means, sums of squared deviations (merged chunk by chunk with
    Chan et al.'s update, which does not cancel catastrophically), ranges, and for a 0/1 response
    the per-class column ranges (the single-column separation check)."""

    n_rows: int
    x_mean: np.ndarray
    x_m2: np.ndarray
    x_min: np.ndarray
    x_max: np.ndarray
    y_mean: float
    y_m2: float
    y_min: float
    y_max: float
    class_extremes: np.ndarray | None  # (4, D): min/max over y=1, min/max over y=0
    # Count likelihoods: the sum of the trials or exposures, of the rows' constant log-likelihood
    # terms, and the response's histogram (2 x K: values, counts; the negative binomial's terms)
    row_sum: float | None = None
    const_sum: float = 0.0
    histogram: np.ndarray | None = None

    @staticmethod
    def of_chunk(X: np.ndarray, y: np.ndarray, binary: bool, x: np.ndarray | None = None,
                 likelihood=None) -> ColumnMoments:
        xm, ym = X.mean(axis=0), float(y.mean())
        ext = None
        if binary:
            ones = y == 1
            ext = np.array([_min(X[ones]), _max(X[ones]), _min(X[~ones]), _max(X[~ones])])
        const, hist = 0.0, None
        if likelihood is not None:
            const = float(np.sum(likelihood.row_constants(y, x)))
            if likelihood.NAME == "negative_binomial":
                hist = np.array(np.unique(y, return_counts=True), dtype=np.float64)
        return ColumnMoments(len(y), xm, ((X - xm) ** 2).sum(axis=0), X.min(axis=0),
                             X.max(axis=0), ym, float(((y - ym) ** 2).sum()), float(y.min()),
                             float(y.max()), ext, None if x is None else float(np.sum(x)),
                             const, hist)

    def merge(self, other: ColumnMoments) -> ColumnMoments:
        n = self.n_rows + other.n_rows
        f = other.n_rows / n
        dx, dy = other.x_mean - self.x_mean, other.y_mean - self.y_mean
        ext = None
        if self.class_extremes is not None:
            a, b = self.class_extremes, other.class_extremes
            ext = np.array([np.minimum(a[0], b[0]), np.maximum(a[1], b[1]),
                            np.minimum(a[2], b[2]), np.maximum(a[3], b[3])])
        hist = self.histogram
        if hist is not None:  # sum the counts of equal values
            values, inverse = np.unique(np.concatenate([hist[0], other.histogram[0]]),
                                        return_inverse=True)
            counts = np.bincount(inverse, np.concatenate([hist[1], other.histogram[1]]))
            hist = np.array([values, counts])
        return ColumnMoments(
            n, self.x_mean + f * dx, self.x_m2 + other.x_m2 + dx**2 * self.n_rows * f,
            np.minimum(self.x_min, other.x_min), np.maximum(self.x_max, other.x_max),
            self.y_mean + f * dy, self.y_m2 + other.y_m2 + dy**2 * self.n_rows * f,
            min(self.y_min, other.y_min), max(self.y_max, other.y_max), ext,
            None if self.row_sum is None else self.row_sum + other.row_sum,
            self.const_sum + other.const_sum, hist)

    @property
    def response_sums(self) -> ResponseSums:
        return ResponseSums(self.y_mean * self.n_rows, self.row_sum, self.n_rows)

    @property
    def x_sd(self) -> np.ndarray:
        return np.sqrt(self.x_m2 / self.n_rows)

    @property
    def y_sd(self) -> float:
        return float(np.sqrt(self.y_m2 / self.n_rows))


def _min(X: np.ndarray) -> np.ndarray:
    return X.min(axis=0) if len(X) else np.full(X.shape[1], np.inf)


def _max(X: np.ndarray) -> np.ndarray:
    return X.max(axis=0) if len(X) else np.full(X.shape[1], -np.inf)


def standardized_gram_f64(Z: np.ndarray, y: np.ndarray, intercept: bool,
                          rows_per_piece: int = 1 << 16) -> tuple[np.ndarray, np.ndarray, float]:
    """``standardized_gram`` in float64 whatever Z's dtype: float32 rows are converted a piece
    at a time (no float64 copy of the whole design)."""
    if Z.dtype == np.float64:
        return standardized_gram(Z, y, intercept)
    total = None
    for lo in range(0, max(len(y), 1), rows_per_piece):
        part = standardized_gram(Z[lo:lo + rows_per_piece].astype(np.float64),
                                 np.asarray(y[lo:lo + rows_per_piece], dtype=np.float64), intercept)
        total = part if total is None else (total[0] + part[0], total[1] + part[1],
                                            total[2] + part[2])
    return total


def standardized_gram(Z: np.ndarray, y: np.ndarray, intercept: bool
                      ) -> tuple[np.ndarray, np.ndarray, float]:
    """(Z1^T Z1, Z1^T y, y^T y) of one chunk of standardised rows, Z1 = [1, Z] with an intercept;
    chunk results add up to the whole data's."""
    ztz, zty = Z.T @ Z, Z.T @ y
    if intercept:  # border Z^T Z with the intercept column, without copying Z
        sums = Z.sum(axis=0)
        ztz = np.block([[np.array([[float(len(y))]]), sums[None, :]], [sums[:, None], ztz]])
        zty = np.concatenate([[y.sum()], zty])
    return ztz, zty, float(y @ y)
