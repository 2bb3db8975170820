"""``vireg predict``: the posterior predictive of a fitted run for new rows.

For every new row, from draws theta ~ q: the linear predictor eta = alpha + x . beta (plus the
row's log exposure for a count model that has one), and on
the response scale the probability (sigmoid(eta), or Phi(eta) with the probit link) for bernoulli
models, and for the others a draw of the response from its predictive distribution, the noise
included: y = eta + sigma z (z ~ N(0, 1), or Student-t with nu degrees of freedom), binomial
counts of the row's trials, Poisson and negative binomial counts with the row's exposure
(overdispersion included); mean, sd and 5/50/95% quantiles of each. New rows get the fit's
encoding: the same columns, categorical levels against the same reference; an unseen level is an
error; the trials or exposure column the fit used must be there too.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from vireg.errors import InputError

COLUMNS = ["row", "eta_mean", "eta_sd", "eta_q5", "eta_q50", "eta_q95",
           "mean", "sd", "q5", "q50", "q95"]


def load_run(run_dir: Path) -> dict:
    path = run_dir / "fit.json"
    if not path.is_file():
        raise InputError(f"'{run_dir}' is not a vireg run folder: fit.json is missing")
    try:
        doc = json.loads(path.read_text())
        complete = all(k in doc.get(section, {}) for section, k in
                       (("design", "columns"), ("affine_map", "T"), ("variational", "m")))
    except (ValueError, AttributeError) as exc:
        raise InputError(f"cannot read '{path}' as a vireg result: {exc}") from None
    if not complete:
        raise InputError(f"'{path}' lacks what predict needs (design, affine_map, variational): "
                         "refit with this version of vireg")
    return doc


def design_for(doc: dict, table) -> np.ndarray:
    """The new rows' design matrix (from a ``data.Table``), encoded as in the fit."""
    from vireg.data import categorical_column, numeric_column

    design, encodings = doc["design"], doc.get("categorical", {})
    if design.get("formula"):  # data.formula: formulaic rebuilds the columns from its saved state
        from vireg.formula import formula_columns

        return _standardized(formula_columns(design["formula"], table), design)
    blocks = []
    for source in dict.fromkeys(design["sources"]):
        if source not in table.columns:
            raise InputError(f"column '{source}' of the fit is missing from '{table.source}': "
                             f"new data need the columns {', '.join(dict.fromkeys(design['sources']))}")
        if source in encodings:
            levels = encodings[source]["levels"]
            cells = table.columns[source]
            cells = [str(c).strip() for c in (cells.tolist() if isinstance(cells, np.ndarray)
                                              else cells)]
            unseen = sorted({c for c in cells if c not in levels and c})
            if unseen:
                raise InputError(f"column '{source}' has level '{unseen[0]}' that the fit never saw "
                                 f"(levels: {', '.join(levels)}): predictions need known levels")
            blocks.append(categorical_column(table, source, levels))
        else:
            blocks.append(numeric_column(table, source)[:, None])
    n = table.n_rows
    return _standardized(np.hstack(blocks) if blocks else np.empty((n, 0)), design)


def _standardized(X: np.ndarray, design: dict) -> np.ndarray:
    st = design.get("standardization")
    if st is not None:  # the fit's z-scoring (data.standardize), with the fit's means and sds
        X = (X - np.asarray(st["mean"])) / np.asarray(st["sd"])
    return X


def predict(run_dir: Path, data: Path, draws: int = 1000, seed: int = 0,
            group_effects: bool = True, notes: list[str] | None = None) -> np.ndarray:
    """Rows of COLUMNS (without the row number) for every new data row. A fit with group terms
    adds each row's group effects: the fitted ones for a level it saw, draws from the fitted
    population (N(0, Psi) per draw, one per new level) for one it did not (how many rows had
    such levels goes into ``notes``); none with ``group_effects=False`` (population-level
    predictions)."""
    from vireg.models.model import positive_parameters

    doc = load_run(run_dir)
    from vireg.data import read_table

    table = read_table(data)
    X = design_for(doc, table)
    T, c = np.asarray(doc["affine_map"]["T"]), np.asarray(doc["affine_map"]["c"])
    rng = np.random.default_rng(seed)
    U = _draws_of_q(doc, draws, rng)
    theta = U[:, :T.shape[0]] @ T.T + c
    design = doc["design"]
    off = int(design["intercept"])
    D = len(design["columns"])
    alpha = theta[:, 0] if design["intercept"] else np.zeros(draws)
    eta = X @ theta[:, off:off + D].T + alpha  # (rows, draws)
    model = doc["config"]["model"]
    names = positive_parameters(design["family"], model.get("link"), model.get("sigma"),
                                model.get("nu"))
    if design.get("groups") and group_effects:
        eta = eta + _group_eta(design["groups"], table, U, rng, notes)
    positive = dict(zip(names, np.exp(theta[:, off + D:off + D + len(names)]).T, strict=True))
    positive.setdefault("sigma", np.full(draws, model.get("sigma") or np.nan))
    positive.setdefault("nu", np.full(draws, model.get("nu") or np.nan))
    row_data = _row_data_for(doc, table)
    if row_data is not None and design["family"] != "binomial":
        eta = eta + np.log(row_data)[:, None]  # the exposure's offset
    response = response_draws(design["family"], model.get("link"), eta, positive, row_data, rng)

    def summary(v):
        q = np.quantile(v, [0.05, 0.5, 0.95], axis=1)
        return [v.mean(axis=1), v.std(axis=1, ddof=1), q[0], q[1], q[2]]

    return np.column_stack(summary(eta) + summary(response))


def _draws_of_q(doc: dict, draws: int, rng: np.random.Generator) -> np.ndarray:
    """Draws of u from the fit's q (fit.json's variational section)."""
    from vireg.posterior import fitted_q

    family, phi = fitted_q(doc)
    return family.sample(phi, rng.standard_normal((draws, family.P)))


def _group_eta(groups: dict, table, U: np.ndarray, rng: np.random.Generator,
               notes: list[str] | None) -> np.ndarray:
    """Each new row's group contribution sum over factors of w_i . b (rows x draws): b of the
    row's level, or for a level the fit never saw a draw from the factor's N(0, Psi) (one per
    level and draw)."""
    from vireg.models.multilevel import records_of

    return sum(_factor_eta(rec, table, U, rng, notes) for rec in records_of(groups))


def _factor_eta(rec: dict, table, U: np.ndarray, rng: np.random.Generator,
                notes: list[str] | None) -> np.ndarray:
    """One factor's part of ``_group_eta``."""
    from vireg.data import numeric_column
    from vireg.models.multilevel import (
        INTERCEPT,
        effects_of_record,
        factor_cells,
        layout_of_record,
        population_cov,
    )

    factor, terms, K = rec["factor"], rec["terms"], len(rec["terms"])
    for column in factor.split(":"):
        if column not in table.columns:
            raise InputError(f"column '{column}' (a group column of the fit) is missing from "
                             f"'{table.source}': add it, or predict with --no-group-effects")
    cells, _ = factor_cells(factor, lambda name: table.columns[name])
    W = np.column_stack([np.ones(table.n_rows) if t == INTERCEPT else numeric_column(table, t)
                         for t in terms])
    b = effects_of_record(U, rec)  # (S, G, K)
    index = {level: j for j, level in enumerate(rec["levels"])}
    new_levels = sorted({c for c in cells if c not in index})
    if new_levels:
        chol = np.linalg.cholesky(population_cov(U, layout_of_record(rec)))
        z = rng.standard_normal((len(new_levels), U.shape[0], K))
        b_new = np.einsum("skl,nsl->snk", chol, z)  # (S, new levels, K)
        b = np.concatenate([b, b_new], axis=1)
        index.update({level: len(rec["levels"]) + i for i, level in enumerate(new_levels)})
        if notes is not None:
            n_rows = sum(c in set(new_levels) for c in cells)
            notes.append(f"{n_rows} of {len(cells)} rows have a level of '{factor}' the fit never "
                         f"saw ({len(new_levels)} levels): their group effects are drawn from "
                         "the fitted population")
    rows = np.array([index[c] for c in cells], dtype=np.int64)
    return np.einsum("rk,srk->rs", W, b[:, rows, :])


def response_draws(family: str, link: str | None, eta: np.ndarray, positive: dict,
                   row_data: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Per row and draw (rows x draws): the probability for bernoulli, else a draw of y."""
    if family == "bernoulli":
        if link == "probit":
            from math import erfc

            return 0.5 * np.vectorize(erfc)(-eta / np.sqrt(2.0))
        return 0.5 * (1.0 + np.tanh(0.5 * eta))
    if family == "gaussian":
        return eta + positive["sigma"] * rng.standard_normal(eta.shape)
    if family == "student_t":
        return eta + positive["sigma"] * rng.standard_t(positive["nu"], eta.shape)
    if family == "binomial":
        p = 0.5 * (1.0 + np.tanh(0.5 * eta))
        return rng.binomial(row_data.astype(np.int64)[:, None], p).astype(np.float64)
    with np.errstate(over="ignore"):
        mu = np.exp(eta)
    if family == "negative_binomial":  # Poisson with a gamma(phi, phi / mu) rate: NB2
        phi = positive["phi"]
        mu = rng.gamma(phi, mu / phi)
    return rng.poisson(np.minimum(mu, 1e15)).astype(np.float64)


def _row_data_for(doc: dict, table) -> np.ndarray | None:
    """The new rows' trials (binomial) or exposure, from the column the fit used (None if it
    used none)."""
    from vireg.data import numeric_column

    cfg, formula = doc["config"]["data"], doc["design"].get("formula") or {}
    column = cfg.get("trials") or cfg.get("exposure") or formula.get("trials") or \
        formula.get("exposure")
    if column is None:
        return None
    if column not in table.columns:
        what = "trials" if doc["design"]["family"] == "binomial" else "exposure"
        raise InputError(f"column '{column}' (the fit's {what}) is missing from "
                         f"'{table.source}': add it to the new data")
    values = numeric_column(table, column)
    if not np.all(values > 0):
        raise InputError(f"column '{column}' of '{table.source}' must be positive in every row")
    if doc["design"]["family"] == "binomial" and not np.all(values == np.floor(values)):
        raise InputError(f"trials column '{column}' of '{table.source}' must hold whole numbers")
    return values


def predictions_csv(values: np.ndarray) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for i, row in enumerate(values):
        w.writerow([i + 1] + [repr(float(v)) for v in row])
    return buf.getvalue()
