"""Linear model with Student-t errors: y_i ~ t_nu(alpha + x_i . beta, sigma), fitted in
t = log sigma (on the standardised response, as the gaussian model) and log nu; nu can be fixed
(``model.nu``).

Per row, e = y - eta, w = exp(-2t), q = e^2 w / nu:
l = log Gamma((nu+1)/2) - log Gamma(nu/2) - log(nu pi)/2 - t - (nu+1)/2 log1p(q)
(kernel: ``kernels.glm``). Its curvature per row (a = log nu, r = 1 + q):

    -d2l/deta2   = (nu+1) w (1 - q) / (nu r^2)     (negative for |e| > sqrt(nu) sigma)
    -d2l/deta dt = 2 (nu+1) e w / (nu r^2)
    -d2l/deta da = -e w (nu q - 1) / (nu r^2)
    -d2l/dt2     = 2 (nu+1) q / r^2
    -d2l/dt da   = (nu+1) q / r^2 - nu q / r
    -d2l/da2     = -nu (dA + dB + dC), with dA = (psi((nu+1)/2) - psi(nu/2)) / 2
                   + nu (psi'((nu+1)/2) - psi'(nu/2)) / 4, dB = -log1p(q)/2 + q / (2r),
                   dC = q / (2r) - (nu+1) q / (2 nu r^2)
"""

import math

import numpy as np

from vireg.kernels.codes import STUDENT_T
from vireg.models.counts import glm_kernel
from vireg.models.gaussian import check_response, response_scaling, response_scaling_from_moments

NAME = "student_t"
HAS_SCALE = True
AUX = ("sigma", "nu")
ROW_DATA = None
CODE = STUDENT_T
DEFAULT_PRIORS = {"nu": "gamma(2, 0.1)"}
# Where Newton starts nu (a moderately heavy tail; the prior's mean is 20)
START_NU = 10.0
__all__ = ["check_response", "response_scaling", "response_scaling_from_moments"]


def row_constants(y: np.ndarray, x) -> float:
    return 0.0


def curvature_terms(Y: np.ndarray, eta: np.ndarray, aux: np.ndarray):
    from vireg.kernels.special import digamma, trigamma  # (Numba: only when fitting)

    t, nu = aux[0], math.exp(aux[1])
    w = math.exp(-2.0 * t)
    e = Y[:, 0] - eta
    q = e * e * w / nu
    r = 1.0 + q
    r2 = r * r
    W = (nu + 1.0) * w * (1.0 - q) / (nu * r2)
    C = np.column_stack([2.0 * (nu + 1.0) * e * w / (nu * r2),
                         -e * w * (nu * q - 1.0) / (nu * r2)])
    n = eta.size
    dA = (0.5 * (digamma(0.5 * (nu + 1.0)) - digamma(0.5 * nu))
          + 0.25 * nu * (trigamma(0.5 * (nu + 1.0)) - trigamma(0.5 * nu)))
    dB = -0.5 * np.log1p(q) + q / (2.0 * r)
    dC = q / (2.0 * r) - (nu + 1.0) * q / (2.0 * nu * r2)
    d_tt = np.sum(2.0 * (nu + 1.0) * q / r2)
    d_ta = np.sum((nu + 1.0) * q / r2 - nu * q / r)
    d_aa = -nu * (n * dA + np.sum(dB + dC))
    return W, C, np.array([[d_tt, d_ta], [d_ta, d_aa]])


def loglik_grad_kernel(parallel: bool):
    return glm_kernel(CODE, parallel)
