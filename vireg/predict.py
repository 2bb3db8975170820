"""``vireg predict``: the posterior predictive of a fitted run for new rows.

For every new row, from draws theta ~ q: the linear predictor eta = alpha + x . beta and the
response scale, the probability sigmoid(eta) for logistic models and y = eta + sigma z (z ~ N(0, 1),
the noise included) for linear ones; mean, sd and 5/50/95% quantiles of each. New rows get the fit's
encoding: the same columns, categorical levels against the same reference; an unseen level is an
error.
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


def design_for(doc: dict, data: Path) -> np.ndarray:
    """The new rows' design matrix, encoded as in the fit."""
    from vireg.data import categorical_column, numeric_column, read_table

    table = read_table(data)
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


def predict(run_dir: Path, data: Path, draws: int = 1000, seed: int = 0) -> np.ndarray:
    """Rows of COLUMNS (without the row number) for every new data row."""
    from vireg.families import make_family

    doc = load_run(run_dir)
    X = design_for(doc, data)
    T, c = np.asarray(doc["affine_map"]["T"]), np.asarray(doc["affine_map"]["c"])
    P = T.shape[0]
    family = make_family(doc["variational"]["family"], P)
    phi = family.from_dict(doc["variational"])
    rng = np.random.default_rng(seed)
    theta = family.sample(phi, rng.standard_normal((draws, P))) @ T.T + c
    design = doc["design"]
    off = int(design["intercept"])
    D = len(design["columns"])
    alpha = theta[:, 0] if design["intercept"] else np.zeros(draws)
    eta = X @ theta[:, off:off + D].T + alpha  # (rows, draws)
    if design["family"] == "bernoulli":
        response = 0.5 * (1.0 + np.tanh(0.5 * eta))
    else:
        fitted_sigma = off + D + 1 == P  # else sigma was known (model.sigma)
        sigma = (np.exp(theta[:, -1]) if fitted_sigma
                 else np.full(draws, doc["config"]["model"]["sigma"]))
        response = eta + sigma * rng.standard_normal(eta.shape)

    def summary(v):
        q = np.quantile(v, [0.05, 0.5, 0.95], axis=1)
        return [v.mean(axis=1), v.std(axis=1, ddof=1), q[0], q[1], q[2]]

    return np.column_stack(summary(eta) + summary(response))


def predictions_csv(values: np.ndarray) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for i, row in enumerate(values):
        w.writerow([i + 1] + [repr(float(v)) for v in row])
    return buf.getvalue()
