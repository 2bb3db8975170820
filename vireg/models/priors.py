"""Prior distributions given as strings, with hand-derived log densities and gradients.

Location priors (intercept and coefficients) act on the parameter itself. Scale priors act on
sigma > 0; the model is fitted in tau = log sigma, so a scale prior enters the log joint as
log p_tau(tau) = log p_sigma(exp(tau)) + tau (the log-Jacobian), and its gradient is
d/dtau = sigma * d/dsigma log p_sigma(sigma) + 1.

Every ``logpdf`` / ``grad`` pair is checked against central finite differences in the tests.
All functions are vectorised over arrays of parameter values.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass

import numpy as np

from vireg.errors import InputError

LOG_2PI = math.log(2.0 * math.pi)
# Bounds on prior arguments: far beyond any sensible prior, and small enough that 1/s^2 and s^2
# stay finite in float64.
MAX_PRIOR_ARG = 1e100
MIN_PRIOR_SCALE = 1e-100


@dataclass(frozen=True)
class Prior:
    """A parsed prior: its name and numeric arguments (e.g. ``normal``, (0.0, 2.5))."""

    name: str
    args: tuple[float, ...]

    def __str__(self) -> str:
        if not self.args:
            return self.name
        return f"{self.name}({', '.join(f'{a:g}' for a in self.args)})"

    @property
    def is_proper(self) -> bool:
        return self.name not in ("flat", "sigma_flat")

    def logpdf(self, x: np.ndarray) -> np.ndarray:
        """log p(x) of a location prior, or log p_tau(tau) of a scale prior at x = tau."""
        return _FUNCTIONS[self.name][0](x, *self.args)

    def grad(self, x: np.ndarray) -> np.ndarray:
        """d/dx of :meth:`logpdf`."""
        return _FUNCTIONS[self.name][1](x, *self.args)

    def hess(self, x: np.ndarray) -> np.ndarray:
        """d2/dx2 of :meth:`logpdf` (0 at the kink of laplace, where it is not defined)."""
        return _FUNCTIONS[self.name][2](x, *self.args)

    def curvature(self) -> float:
        """-d2/dx2 log p at the mode of a location prior (0 where there is none): used only to
        precondition the optimiser, never in the model."""
        if self.name == "normal":
            return 1.0 / self.args[1] ** 2
        if self.name == "student_t":
            nu, _, s = self.args
            return (nu + 1.0) / (nu * s * s)
        if self.name == "cauchy":
            return 2.0 / self.args[1] ** 2
        return 0.0


# --- location priors: density of the parameter itself -------------------------------------------

def _flat_logpdf(x):
    return np.zeros_like(x)


def _flat_grad(x):
    return np.zeros_like(x)


def _normal_logpdf(x, mu, s):
    z = (x - mu) / s
    return -0.5 * z * z - math.log(s) - 0.5 * LOG_2PI


def _normal_grad(x, mu, s):
    return -(x - mu) / (s * s)


def _student_t_const(nu, s):
    return (math.lgamma(0.5 * (nu + 1.0)) - math.lgamma(0.5 * nu)
            - 0.5 * math.log(nu * math.pi) - math.log(s))


def _student_t_logpdf(x, nu, mu, s):
    z = (x - mu) / s
    return _student_t_const(nu, s) - 0.5 * (nu + 1.0) * np.log1p(z * z / nu)


def _student_t_grad(x, nu, mu, s):
    d = x - mu
    return -(nu + 1.0) * d / (nu * s * s + d * d)


def _cauchy_logpdf(x, mu, s):
    return _student_t_logpdf(x, 1.0, mu, s)


def _cauchy_grad(x, mu, s):
    return _student_t_grad(x, 1.0, mu, s)


def _laplace_logpdf(x, mu, s):
    return -np.abs(x - mu) / s - math.log(2.0 * s)


def _laplace_grad(x, mu, s):
    return -np.sign(x - mu) / s


# --- scale priors on sigma, written in tau = log sigma with the Jacobian ---------------------------

def _sigma_flat_logpdf(tau):
    return np.array(tau, dtype=float, copy=True)


def _sigma_flat_grad(tau):
    return np.ones_like(tau)


def _half_normal_logpdf(tau, s):
    sigma = np.exp(tau)
    return math.log(2.0) + _normal_logpdf(sigma, 0.0, s) + tau


def _half_normal_grad(tau, s):
    sigma = np.exp(tau)
    return 1.0 - sigma * sigma / (s * s)


def _half_student_t_logpdf(tau, nu, s):
    sigma = np.exp(tau)
    return math.log(2.0) + _student_t_logpdf(sigma, nu, 0.0, s) + tau


def _half_student_t_grad(tau, nu, s):
    sigma2 = np.exp(2.0 * tau)
    return 1.0 - (nu + 1.0) * sigma2 / (nu * s * s + sigma2)


def _half_cauchy_logpdf(tau, s):
    return _half_student_t_logpdf(tau, 1.0, s)


def _half_cauchy_grad(tau, s):
    return _half_student_t_grad(tau, 1.0, s)


def _exponential_logpdf(tau, rate):
    return math.log(rate) - rate * np.exp(tau) + tau


def _exponential_grad(tau, rate):
    return 1.0 - rate * np.exp(tau)


def _gamma_logpdf(tau, shape, rate):
    """Gamma(shape, rate) on x = exp(tau), with the Jacobian: a log b - lgamma(a) + a tau
    - b exp(tau)."""
    return shape * math.log(rate) - math.lgamma(shape) + shape * tau - rate * np.exp(tau)


def _gamma_grad(tau, shape, rate):
    return shape - rate * np.exp(tau)


def _gamma_hess(tau, shape, rate):
    return -rate * np.exp(tau)


def _inv_sqrt_half_normal_logpdf(tau, s):
    """1/sqrt(x) ~ half_normal(s) for x = exp(tau): with z = exp(-tau/2) and |dz/dtau| = z/2,
    log p = -log(2 pi)/2 - log s - exp(-tau) / (2 s^2) - tau/2."""
    return -0.5 * LOG_2PI - math.log(s) - np.exp(-tau) / (2.0 * s * s) - 0.5 * tau


def _inv_sqrt_half_normal_grad(tau, s):
    return np.exp(-tau) / (2.0 * s * s) - 0.5


def _inv_sqrt_half_normal_hess(tau, s):
    return -np.exp(-tau) / (2.0 * s * s)


def _zero_hess(x, *args):
    return np.zeros_like(x)


def _normal_hess(x, mu, s):
    return np.full_like(x, -1.0 / (s * s))


def _student_t_hess(x, nu, mu, s):
    d2, a = (x - mu) ** 2, nu * s * s
    return -(nu + 1.0) * (a - d2) / (a + d2) ** 2


def _cauchy_hess(x, mu, s):
    return _student_t_hess(x, 1.0, mu, s)


def _half_normal_hess(tau, s):
    return -2.0 * np.exp(2.0 * tau) / (s * s)


def _half_student_t_hess(tau, nu, s):
    sigma2, a = np.exp(2.0 * tau), nu * s * s
    return -2.0 * (nu + 1.0) * a * sigma2 / (a + sigma2) ** 2


def _half_cauchy_hess(tau, s):
    return _half_student_t_hess(tau, 1.0, s)


def _exponential_hess(tau, rate):
    return -rate * np.exp(tau)


# name -> (log density, its first and its second derivative)
_FUNCTIONS = {
    "flat": (_flat_logpdf, _flat_grad, _zero_hess),
    "normal": (_normal_logpdf, _normal_grad, _normal_hess),
    "student_t": (_student_t_logpdf, _student_t_grad, _student_t_hess),
    "cauchy": (_cauchy_logpdf, _cauchy_grad, _cauchy_hess),
    "laplace": (_laplace_logpdf, _laplace_grad, _zero_hess),
    "sigma_flat": (_sigma_flat_logpdf, _sigma_flat_grad, _zero_hess),
    "half_normal": (_half_normal_logpdf, _half_normal_grad, _half_normal_hess),
    "half_cauchy": (_half_cauchy_logpdf, _half_cauchy_grad, _half_cauchy_hess),
    "half_student_t": (_half_student_t_logpdf, _half_student_t_grad, _half_student_t_hess),
    "exponential": (_exponential_logpdf, _exponential_grad, _exponential_hess),
    "gamma": (_gamma_logpdf, _gamma_grad, _gamma_hess),
    "inv_sqrt_half_normal": (_inv_sqrt_half_normal_logpdf, _inv_sqrt_half_normal_grad,
                             _inv_sqrt_half_normal_hess),
}

# name -> (argument names, indices of arguments that must be > 0)
LOCATION_PRIORS = {
    "flat": ((), ()),
    "normal": (("mu", "s"), (1,)),
    "student_t": (("nu", "mu", "s"), (0, 2)),
    "cauchy": (("mu", "s"), (1,)),
    "laplace": (("mu", "s"), (1,)),
}
SCALE_PRIORS = {
    "flat": ((), ()),
    "half_normal": (("s",), (0,)),
    "half_cauchy": (("s",), (0,)),
    "half_student_t": (("nu", "s"), (0, 1)),
    "exponential": (("rate",), (0,)),
    "gamma": (("shape", "rate"), (0, 1)),
    "inv_sqrt_half_normal": (("s",), (0,)),  # 1/sqrt(x) ~ half_normal(s): for phi
}

_PRIOR_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$")


def _signature(name: str, table: dict) -> str:
    argnames = table[name][0]
    return f"{name}({', '.join(argnames)})" if argnames else name


def parse_prior(text: str, where: str, kind: str) -> Prior:
    """Parse a prior string such as ``"normal(0, 2.5)"``.

    ``kind`` is ``"location"`` (intercept, coefficients) or ``"scale"`` (a positive parameter:
    sigma, phi, nu); ``where`` names the config key for error messages.
    """
    table = LOCATION_PRIORS if kind == "location" else SCALE_PRIORS
    allowed = ", ".join(_signature(n, table) for n in table)
    m = _PRIOR_RE.match(str(text))
    if not m:
        raise InputError(f"{where}: cannot read prior '{text}': write it as name(arguments), "
                         f"one of {allowed}")
    name, argtext = m.group(1).lower(), m.group(2)
    if name not in table:
        other = SCALE_PRIORS if kind == "location" else LOCATION_PRIORS
        if name in other:
            what = ("positive parameters (sigma, phi, nu)" if kind == "location"
                    else "coefficients or the intercept")
            raise InputError(f"{where}: '{name}' is a prior for {what}, not here: use one of {allowed}")
        close = difflib.get_close_matches(name, list(table), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise InputError(f"{where}: unknown prior '{name}': {hint}use one of {allowed}")
    argnames, positive = table[name]
    args: list[float] = []
    if argtext is not None and argtext.strip():
        for part in argtext.split(","):
            try:
                value = float(part)
            except ValueError:
                raise InputError(f"{where}: argument '{part.strip()}' of '{text}' is not a number: "
                                 f"write {_signature(name, table)} with numbers") from None
            if not math.isfinite(value) or abs(value) > MAX_PRIOR_ARG:
                raise InputError(f"{where}: argument '{part.strip()}' of '{text}' must be a finite "
                                 f"number of size at most {MAX_PRIOR_ARG:g}")
            args.append(value)
    if len(args) != len(argnames):
        raise InputError(f"{where}: '{text}' takes {len(argnames)} argument(s): write "
                         f"{_signature(name, table)}")
    for i in positive:
        if not args[i] >= MIN_PRIOR_SCALE:
            raise InputError(f"{where}: argument {argnames[i]} of '{text}' must be positive (at "
                             f"least {MIN_PRIOR_SCALE:g}), got {args[i]:g}")
    if kind == "scale" and name == "flat":
        name = "sigma_flat"
    return Prior(name, tuple(args))


def display_name(prior: Prior) -> str:
    """The prior as the user would write it (``sigma_flat`` is shown as ``flat``)."""
    return str(Prior("flat", ())) if prior.name == "sigma_flat" else str(prior)
