"""Bernoulli-logit likelihood: y_i ~ Bernoulli(sigmoid(alpha + x_i . beta)), y_i in {0, 1}.

Per row: l = y eta - softplus(eta); dl/deta = y - sigmoid(eta).
"""

import numpy as np

from vireg.errors import InputError

HAS_SCALE = False


def check_response(y: np.ndarray, name: str) -> None:
    bad = np.flatnonzero((y != 0) & (y != 1))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"response '{name}' must be 0 or 1 for family bernoulli, but data row "
                         f"{i + 1} has {y[i]:g}: recode it as 0/1 or use family gaussian")


def response_scaling(y: np.ndarray, intercept: bool) -> tuple[float, float]:
    """The response of a logistic model is never rescaled."""
    return 0.0, 1.0


def loglik_grad_kernel(parallel: bool):
    from vireg.kernels import likelihood

    return likelihood.bernoulli_loglik_grad if parallel else likelihood.bernoulli_loglik_grad_serial
