"""Checks, before any fitting, that the posterior of a model exists (is proper).

Flat priors make the posterior the normalised likelihood, which does not exist when the data
cannot pin the parameters down: collinear or constant columns, too few rows, a linear model that
fits exactly, or logistic data whose classes a covariate separates. Fitting such a model would
return confident nonsense, so each case is an ``InputError`` that names the columns and the fix.
"""

from __future__ import annotations

import numpy as np

from vireg.errors import InputError
from vireg.models import bernoulli

# Eigenvalue ratio of the unit-diagonal Gram matrix below which columns count as collinear
# (singular values 1e-6 apart: exact dependence gives about 1e-16).
COLLINEAR_EIG_RTOL = 1e-12
# The same limit on the singular values of unit-norm columns, when the design was orthogonalised
# by QR (no Gram matrix, so no squaring): a condition number of 1e11 still leaves the least-squares
# solution about 1e-5 relative accuracy.
COLLINEAR_SV_RTOL = 1e-11
# The test for separation by a combination of columns runs Newton's method on the likelihood,
# O(N k^2) per iteration; above this much work only single-column separation is checked.
SEPARATION_MAX_WORK = 2e9


def _quoted(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def check_posterior_exists(model) -> None:
    flat = [i for i in range(model.n_location) if not model.priors[i].is_proper]
    names = (["(intercept)"] if model.intercept else []) + list(model.design.covariates)
    _check_design_rank(model, flat, names)
    if model.likelihood_name == "bernoulli":
        _check_bernoulli(model, flat, names)
    elif model.likelihood_name in ("binomial", "poisson", "negative_binomial"):
        _check_counts(model, flat, names)
    elif model.has_scale:
        _check_gaussian(model, flat)


def _check_design_rank(model, flat: list[int], names: list[str]) -> None:
    if not flat:
        return
    if model.n_rows < len(flat):
        raise InputError(f"{model.n_rows} rows cannot identify {len(flat)} parameters with flat "
                         "priors: give them proper priors (e.g. coefficients: 'normal(0, 10)') or "
                         "use more rows")
    off = int(model.intercept)
    for i in (i for i in flat if i >= off):
        _, _, sd, lo, hi = model.column_stats[1 + i - off]  # (name, mean, sd, min, max)
        if lo == hi and (model.intercept or lo == 0):
            what = "is constant" if model.intercept else "is all zeros"
            raise InputError(f"column '{names[i]}' {what}, so its coefficient is not identified "
                             "under a flat prior: drop it from data.covariates or give it a proper "
                             "prior")
    involved = _dependent_columns(model, flat)
    if involved:
        raise InputError(f"columns {_quoted([names[i] for i in involved])} are collinear (one is "
                         "a linear combination of the others), so with flat priors the posterior "
                         "does not exist: drop one of them or give the coefficients proper priors")


def _dependent_columns(model, flat: list[int]) -> list[int]:
    """The flat-prior parameters whose columns are linearly dependent, to float64's resolution
    (empty if none). With an orthogonalised design, from the singular values of R[:, flat]
    (Z^T Z = N R^T R; the intercept is orthogonal to the centred columns, and a constant column
    was refused before); else from the eigenvalues of the Gram matrix of the flat-prior columns
    (one k x k eigenproblem, no pass over the data), which squares the condition number."""
    off = int(model.intercept)
    R = model.design_map
    if R is not None:
        cols = [i for i in flat if i >= off]
        if not cols:
            return []
        A = R[:, [i - off for i in cols]]
        A = A / np.linalg.norm(A, axis=0)
        _, sv, vt = np.linalg.svd(A, full_matrices=False)
        if sv[-1] >= COLLINEAR_SV_RTOL * sv[0]:
            return []
        v = np.abs(vt[-1])
        return [cols[k] for k in np.flatnonzero(v > 0.1 * v.max())]
    gram = model.gram()[0][np.ix_(flat, flat)]
    d = np.sqrt(np.diag(gram))
    eig, vec = np.linalg.eigh(gram / np.outer(d, d))
    if eig[0] >= COLLINEAR_EIG_RTOL * eig[-1]:
        return []
    v = np.abs(vec[:, 0])
    return [flat[k] for k in np.flatnonzero(v > 0.1 * v.max())]


def _check_gaussian(model, flat: list[int]) -> None:
    response = model.design.response
    if model.residual_fraction() < 1e-12:
        raise InputError(f"the covariates predict '{response}' exactly (zero residuals), so the "
                         "posterior of sigma piles up at 0 and does not exist: check that no "
                         "covariate is a copy of (or computed from) the response")
    # With a flat prior on sigma, p(sigma | y) ~ sigma^-(N - k) exp(-RSS / 2 sigma^2), which is
    # integrable only when N - k >= 2 (k = parameters with flat priors).
    sigma_prior = model.priors[model.n_location + model.positive_names.index("sigma")]
    if not sigma_prior.is_proper and model.n_rows < len(flat) + 2:
        raise InputError(f"{model.n_rows} rows are too few for {len(flat)} flat-prior "
                         "coefficients and a flat prior on sigma (the posterior needs at least "
                         f"{len(flat) + 2} rows): give sigma a proper prior such as "
                         "'half_normal(10)' or use more rows")


def _check_counts(model, flat: list[int], names: list[str]) -> None:
    """A count response that is always 0 (or, binomial, always all its trials) under a flat
    intercept, or a two-valued flat-prior column on one of whose values it is: the mode runs off
    to infinity (a log rate or log odds of minus or plus infinity fits best)."""
    response, binomial = model.design.response, model.likelihood_name == "binomial"
    y, n = model.design.y, model.design.row_data
    if y.size == 0:  # streamed rows: the moments tell whether the response is all zero
        if model.intercept and 0 in flat and model.column_stats[0][4] == 0:
            raise InputError(_count_message(response, "always 0", "intercept"))
        return
    extreme = y == 0 if not binomial else (y == 0) | (y == n)
    if model.intercept and 0 in flat and _one_sided(y, n, binomial):
        raise InputError(_count_message(response, "always 0" if not np.any(y) else
                                        "always 0 or always all its trials", "intercept"))
    off = int(model.intercept)
    for i in (i for i in flat if i >= off):
        x = model.design.X[:, i - off]
        values = np.unique(x)
        if values.size != 2:
            continue
        for v in values:
            rows = x == v
            if np.all(extreme[rows]) and _one_sided(y[rows], None if n is None else n[rows],
                                                    binomial):
                raise InputError(_count_message(
                    response, f"always at its bound where '{names[i]}' is {v:g}",
                    f"'{names[i]}'"))


def _one_sided(y: np.ndarray, n: np.ndarray | None, binomial: bool) -> bool:
    """All counts 0, or (binomial) all equal to their trials."""
    return bool(np.all(y == 0) or (binomial and np.all(y == n)))


def _count_message(response: str, what: str, param: str) -> str:
    return (f"response '{response}' is {what}, so with a flat prior on {param} the posterior "
            f"is improper (its best fit is at infinity): give {param} a proper prior such as "
            "'normal(0, 2.5)'")


def _flat_columns_by_rms(model, flat: list[int]) -> np.ndarray:
    """The design's columns of the flat-prior parameters ``flat`` (ascending; a column of ones
    for the intercept), each divided by its root mean square, written once (n x len(flat))."""
    off = int(model.intercept)
    cov = [i - off for i in flat if i >= off]
    rms = np.array([np.hypot(*model.column_stats[1 + j][1:3]) for j in cov])
    X = model.design.X
    out = np.empty((model.n_rows, len(flat)))
    k = len(flat) - len(cov)  # 1 when the intercept is among them, first
    out[:, :k] = 1.0
    np.divide(X if len(cov) == X.shape[1] else X[:, cov], np.where(rms > 0, rms, 1.0),
              out=out[:, k:])
    return out


def _check_bernoulli(model, flat: list[int], names: list[str]) -> None:
    response = model.design.response
    _, y_mean, _, y_min, y_max = model.column_stats[0]
    if model.intercept and 0 in flat and y_min == y_max:
        raise InputError(f"response '{response}' is always {y_min:g}: with a flat intercept prior "
                         "the posterior is improper; give the intercept a proper prior such as "
                         "'normal(0, 2.5)'")
    if not flat:
        return
    # Only flat-prior directions can run off to infinity; a proper prior bounds the others. The
    # columns are taken on the natural scale (a proper intercept prior pins the natural intercept),
    # scaled by their root mean square for conditioning, which does not change separability.
    off = int(model.intercept)
    flat_cov = [i - off for i in flat if i >= off]
    # Without a free intercept, a single column can only separate at 0.
    through_origin = not (model.intercept and 0 in flat)
    col = bernoulli.separating_column(model.class_extremes()[:, flat_cov],
                                      [names[i + off] for i in flat_cov], y_min < y_max,
                                      through_origin)
    separated = col is not None
    # The test for a combination of columns needs the rows in memory (streamed data: single
    # columns only, as above).
    if (not separated and model.in_memory
            and model.n_rows * len(flat) ** 2 <= SEPARATION_MAX_WORK):
        separated = bernoulli.separation(_flat_columns_by_rms(model, flat), model.design.y)
    if separated:
        which = f"'{col}' separates the 0s from the 1s" if col else (
            "a combination of the flat-prior covariates separates the 0s from the 1s")
        raise InputError(f"{which}, so with flat priors the posterior does not exist (the "
                         "coefficients run off to infinity): give the coefficients a proper "
                         "prior such as 'normal(0, 2.5)'")
