"""Poisson-log likelihood with exposure: y_i ~ Poisson(t_i exp(alpha + x_i . beta)).

With eta = alpha + x . beta + log t (the exposure as an offset), per row:
l = y eta - exp(eta) - log y!; dl/deta = y - exp(eta); -d2l/deta2 = exp(eta).
"""

import numpy as np

from vireg.kernels.codes import POISSON
from vireg.models.counts import (
    check_count_rows,
    data_row,
    glm_kernel,
    log_factorials,
    log_mean_rate,
    response_scaling,
    response_scaling_from_moments,
)

NAME = "poisson"
HAS_SCALE = False
AUX: tuple[str, ...] = ()
ROW_DATA = "exposure"
CODE = POISSON
__all__ = ["response_scaling", "response_scaling_from_moments"]


def check_rows(y: np.ndarray, t: np.ndarray | None, response: str, column: str | None,
               where=data_row) -> None:
    """Counts, and a positive exposure; one line naming the first bad row."""
    check_count_rows(NAME, y, t, response, column, where)


def kernel_row_data(t: np.ndarray) -> np.ndarray:
    """The offset log t."""
    return np.log(t)


def row_constants(y: np.ndarray, t: np.ndarray | None) -> np.ndarray:
    return -log_factorials(y)


def curvature_terms(Y: np.ndarray, eta: np.ndarray, aux: np.ndarray):
    with np.errstate(over="ignore"):
        return np.exp(eta), np.zeros((eta.size, 0)), np.zeros((0, 0))


def start(sums) -> tuple[float, list[float]]:
    return log_mean_rate(sums), []


def loglik_grad_kernel(parallel: bool):
    return glm_kernel(CODE, parallel)
