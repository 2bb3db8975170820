"""Negative binomial (NB2) likelihood with exposure: y_i ~ NB(mu_i, phi), mean
mu_i = t_i exp(alpha + x_i . beta), variance mu + mu^2 / phi, fitted in log phi.

With eta = alpha + x . beta + log t and x' = eta - log phi, per row
l = log Gamma(y + phi) - log Gamma(phi) - log y! + y x' - (y + phi) softplus(x'). The kernel
(``kernels.glm``) sums the last two terms and their derivatives; the Gamma terms depend on phi
and y only and are summed from the response's histogram (``kernels.glm.dispersion_terms``).
Curvature per row, s = sigmoid(x'), v = s (1 - s):

    -d2l/deta2        = (y + phi) v
    -d2l/deta dlogphi = phi s - (y + phi) v
    -d2l/dlogphi2     = phi softplus(x') - 2 phi s + (y + phi) v   (+ the Gamma terms')
"""

import numpy as np

from vireg.kernels.codes import NEGATIVE_BINOMIAL
from vireg.models.counts import (
    check_count_rows,
    data_row,
    glm_kernel,
    log_mean_rate,
    response_scaling,
    response_scaling_from_moments,
    softplus_sigmoid,
)
from vireg.models.poisson import kernel_row_data, row_constants

NAME = "negative_binomial"
HAS_SCALE = False
AUX = ("phi",)
ROW_DATA = "exposure"
CODE = NEGATIVE_BINOMIAL
DEFAULT_PRIORS = {"phi": "inv_sqrt_half_normal(1)"}
# The exposure's offset and -log y!, as for poisson
__all__ = ["kernel_row_data", "response_scaling", "response_scaling_from_moments",
           "row_constants"]


def check_rows(y: np.ndarray, t: np.ndarray | None, response: str, column: str | None,
               where=data_row) -> None:
    """Counts, and a positive exposure; one line naming the first bad row."""
    check_count_rows(NAME, y, t, response, column, where)


def curvature_terms(Y: np.ndarray, eta: np.ndarray, aux: np.ndarray):
    log_phi = aux[0]
    phi = np.exp(log_phi)
    y = Y[:, 0]
    sp, s = softplus_sigmoid(eta - log_phi)
    v = (y + phi) * s * (1.0 - s)
    c = phi * s - v
    d = np.sum(phi * sp - 2.0 * phi * s + v)
    return v, c[:, None], np.array([[d]])


def start(sums) -> tuple[float, list[float]]:
    """The log mean rate, and log phi = 0 (phi = 1: overdispersed, as counts usually are)."""
    return log_mean_rate(sums), [0.0]


def loglik_grad_kernel(parallel: bool):
    return glm_kernel(CODE, parallel)
