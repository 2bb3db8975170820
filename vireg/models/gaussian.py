"""Gaussian likelihood with unknown noise scale: y_i ~ N(alpha + x_i . beta, sigma^2).

Fitted in tau = log sigma. Per row: l = -0.5 log 2pi - tau - 0.5 (y - eta)^2 exp(-2 tau);
dl/deta = (y - eta) exp(-2 tau); dl/dtau = -1 + (y - eta)^2 exp(-2 tau).
"""

import numpy as np

from vireg.errors import InputError
from vireg.kernels.codes import GAUSSIAN

NAME = "gaussian"
HAS_SCALE = True
AUX = ("sigma",)
ROW_DATA = None
CODE = GAUSSIAN  # for the per-observation log-likelihood (``kernels.glm.pointwise_loglik``)


def check_response(y: np.ndarray, name: str) -> None:
    if np.ptp(y) == 0:
        raise InputError(f"response '{name}' is constant ({y[0]:g}): a gaussian model needs a "
                         "response that varies")


def response_scaling(y: np.ndarray, intercept: bool) -> tuple[float, float]:
    """(centre, scale) of y for the internal standardisation; centring needs an intercept."""
    centre = float(y.mean()) if intercept else 0.0
    scale = float(np.sqrt(np.mean((y - centre) ** 2)))
    return centre, scale if scale > 0 else 1.0


def response_scaling_from_moments(mean: float, sd: float, intercept: bool) -> tuple[float, float]:
    """``response_scaling`` from the response's mean and (population) sd."""
    centre = mean if intercept else 0.0
    scale = float(sd if intercept else np.hypot(sd, mean))
    return centre, scale if scale > 0 else 1.0


def loglik_grad_kernel(parallel: bool):
    from vireg.rows import data_kernel

    return data_kernel("gaussian", parallel)


def row_constants(y: np.ndarray, x) -> float:
    return 0.0

