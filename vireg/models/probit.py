"""Bernoulli-probit likelihood: y_i ~ Bernoulli(Phi(alpha + x_i . beta)), y_i in {0, 1}
(``model.family: bernoulli`` with ``model.link: probit``).

Per row, z = s eta with s = 2y - 1 and lambda = phi(z) / Phi(z) (the inverse Mills ratio):
l = log Phi(z); dl/deta = s lambda; -d2l/deta2 = lambda (z + lambda), through a log Phi that
is stable for every z (``kernels.special.log_ndtr_and_mills``).
"""

import math

import numpy as np

from vireg.kernels.codes import PROBIT
from vireg.models.bernoulli import check_response, response_scaling, response_scaling_from_moments
from vireg.models.counts import glm_kernel

NAME = "bernoulli"
HAS_SCALE = False
AUX: tuple[str, ...] = ()
ROW_DATA = None
CODE = PROBIT
__all__ = ["check_response", "response_scaling", "response_scaling_from_moments"]


def row_constants(y: np.ndarray, x) -> float:
    return 0.0


def curvature_terms(Y: np.ndarray, eta: np.ndarray, aux: np.ndarray):
    from vireg.kernels.special import mills_ratios  # (Numba: only when fitting)

    z = (2.0 * Y[:, 0] - 1.0) * eta
    lam = mills_ratios(np.ascontiguousarray(z))
    return lam * (z + lam), np.zeros((eta.size, 0)), np.zeros((0, 0))


def start(sums) -> tuple[float, list[float]]:
    """The intercept at Phi^-1 of the mean response (by bisection on erfc)."""
    mean = min(max(sums.response / max(sums.n_rows, 1), 1e-6), 1.0 - 1e-6)
    lo, hi = -8.0, 8.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if 0.5 * math.erfc(-mid / math.sqrt(2.0)) < mean else (lo, mid)
    return 0.5 * (lo + hi), []


def loglik_grad_kernel(parallel: bool):
    return glm_kernel(CODE, parallel)
