"""Binomial-logit likelihood with trials: y_i ~ Binomial(n_i, sigmoid(alpha + x_i . beta)).

Per row: l = y eta - n softplus(eta) + log C(n, y); dl/deta = y - n sigmoid(eta);
-d2l/deta2 = n p (1 - p). The constant log C(n, y) is in the reported log joint, not in the
kernel (``kernels.glm``).
"""

import math

import numpy as np

from vireg.errors import InputError
from vireg.kernels.codes import BINOMIAL
from vireg.models.counts import (
    check_counts,
    data_row,
    glm_kernel,
    log_factorials,
    response_scaling,
    response_scaling_from_moments,
    shown,
    softplus_sigmoid,
)

NAME = "binomial"
HAS_SCALE = False
AUX: tuple[str, ...] = ()
ROW_DATA = "trials"
CODE = BINOMIAL
__all__ = ["response_scaling", "response_scaling_from_moments"]


def check_rows(y: np.ndarray, n: np.ndarray, response: str, column: str,
               where=data_row) -> None:
    """Counts; trials positive integers with 0 <= y <= n; one line naming the first bad row."""
    check_counts(y, response, NAME, where)
    bad = np.flatnonzero(~((n >= 1) & (n == np.floor(n))))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"trials column '{column}' must hold positive integers, but {where(i)} "
                         f"has {shown(n[i])}: fix the value or drop the row")
    bad = np.flatnonzero(y > n)
    if bad.size:
        i = int(bad[0])
        raise InputError(f"response '{response}' counts successes out of '{column}' trials, but "
                         f"{where(i)} has {shown(y[i])} > {shown(n[i])}: check the two columns")


def kernel_row_data(n: np.ndarray) -> np.ndarray:
    return n


def row_constants(y: np.ndarray, n: np.ndarray) -> np.ndarray:
    """log C(n, y) per row."""
    return log_factorials(n) - log_factorials(y) - log_factorials(n - y)


def curvature_terms(Y: np.ndarray, eta: np.ndarray, aux: np.ndarray):
    """(w, C, D): -d2l/deta2 per row; no auxiliary parameters."""
    _, p = softplus_sigmoid(eta)
    return Y[:, 1] * p * (1.0 - p), np.zeros((eta.size, 0)), np.zeros((0, 0))


def start(sums) -> tuple[float, list[float]]:
    """(intercept, auxiliary parameters) where Newton starts: the log odds of sum y / sum n
    (``ResponseSums``)."""
    rate = min(max(sums.response / sums.row_data, 1e-6), 1.0 - 1e-6)
    return math.log(rate / (1.0 - rate)), []


def loglik_grad_kernel(parallel: bool):
    return glm_kernel(CODE, parallel)
