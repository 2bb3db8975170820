"""What the count and proportion likelihoods share: an unscaled response of non-negative
integers, checked row by row, and the per-row data (trials or exposure) beside it."""

from __future__ import annotations

import math

import numpy as np

from vireg.errors import InputError


def response_scaling(y: np.ndarray, intercept: bool) -> tuple[float, float]:
    """A count response is never rescaled (its scale is part of the likelihood)."""
    return 0.0, 1.0


def response_scaling_from_moments(mean: float, sd: float, intercept: bool) -> tuple[float, float]:
    return 0.0, 1.0


def data_row(i: int) -> str:
    """Where row i of the data is, in words (the default of the row checks' ``where``)."""
    return f"data row {i + 1}"


def shown(value: float) -> str:
    """A value as it is, every digit (2.0000001 is not 2)."""
    return repr(float(value)).removesuffix(".0")


def check_counts(y: np.ndarray, name: str, family: str, where=data_row) -> None:
    """Every y_i a non-negative integer, else a one-line error naming the first bad row
    (``where(i)``: its place in the file, for a streamed piece or after dropped rows)."""
    bad = np.flatnonzero(~((y >= 0) & (y == np.floor(y))))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"response '{name}' must be a non-negative integer count for family "
                         f"{family}, but {where(i)} has {shown(y[i])}: fix the value, or use "
                         "family gaussian for a continuous response")


def check_exposure(t: np.ndarray, name: str, where=data_row) -> None:
    bad = np.flatnonzero(~(t > 0))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"exposure column '{name}' must be positive, but {where(i)} has "
                         f"{shown(t[i])}: fix the value or drop the row")


def check_count_rows(family: str, y: np.ndarray, x: np.ndarray | None, response: str,
                     column: str | None, where=data_row) -> None:
    """The row checks of a count likelihood with an optional exposure."""
    check_counts(y, response, family, where)
    if x is not None:
        check_exposure(x, column, where)


def log_factorials(y: np.ndarray) -> np.ndarray:
    """log y! for each entry (y non-negative integers; one lgamma per distinct value)."""
    values, inverse = np.unique(y, return_inverse=True)
    return np.array([math.lgamma(v + 1.0) for v in values])[inverse.reshape(y.shape)]


def glm_kernel(code: int, parallel: bool):
    """The data kernel of ``kernels.glm`` for a likelihood code, in the data-kernel signature
    (Z, Y, U, has_intercept, chunk_rows, with_grad)."""
    from vireg.kernels import glm

    kernel = glm.glm_loglik_grad if parallel else glm.glm_loglik_grad_serial

    def loglik_grad(Z, Y, U, has_intercept, chunk_rows, with_grad):
        return kernel(code, Z, Y, U, has_intercept, chunk_rows, with_grad)

    return loglik_grad


def softplus_sigmoid(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(softplus(x), sigmoid(x)) without overflow, elementwise."""
    e = np.exp(-np.abs(x))
    sig = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return np.maximum(x, 0.0) + np.log1p(e), sig


def log_mean_rate(sums) -> float:
    """log(sum y / sum t) (t = 1 without an exposure): the intercept of a model with no
    covariates (Newton's start), from ``ResponseSums``."""
    total = sums.row_data if sums.row_data is not None else float(sums.n_rows)
    return math.log(max(sums.response, 0.5) / max(total, 1e-300))
