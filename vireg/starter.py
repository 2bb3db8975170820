"""``vireg init``: a commented starter config, guessed from a data file when one is given."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vireg.errors import InputError


def _numeric_columns(table) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
    """Columns that are all finite numbers, the others, and the numeric values."""
    from vireg.data import numeric_column

    numeric, other, values = [], [], {}
    for name in table.columns:
        try:
            values[name] = numeric_column(table, name)
            numeric.append(name)
        except InputError:
            other.append(name)
    return numeric, other, values


def _guess_family(y: np.ndarray, response: str, notes: list[str]) -> str:
    """bernoulli for a 0/1 response, poisson for other non-negative integers, else gaussian."""
    if np.all((y == 0) | (y == 1)):
        family, why = "bernoulli", "its values are all 0 or 1"
    elif np.all((y >= 0) & (y == np.floor(y))) and np.any(y == 0):
        family, why = "poisson", "its values are non-negative integers with zeros (counts)"
        mean, var = float(np.mean(y)), float(np.var(y))
        if var > 1.5 * mean:
            why += (f"; their variance ({var:.3g}) is well above their mean ({mean:.3g}), so "
                    "consider family: negative_binomial for overdispersed counts")
        else:
            why += "; family: negative_binomial fits overdispersed counts"
    elif np.all((y >= 0) & (y == np.floor(y))):
        family, why = "gaussian", ("its values are positive integers: if they are counts, "
                                   "set family: poisson (or negative_binomial)")
    else:
        family, why = "gaussian", "it is not a 0/1 or count column"
    notes.append(f"family guessed from '{response}': {why}")
    return family


def starter_config(data: Path | None, response: str | None, family: str | None,
                   config_path: Path) -> str:
    """The text of a starter config; paths in it are relative to ``config_path``'s folder."""
    from vireg.data import read_table

    covariates: list[str] = []
    notes: list[str] = []
    data_text = "data.csv"
    if data is not None:
        table = read_table(data)
        numeric, other, values = _numeric_columns(table)
        if response is None:
            if not numeric:
                raise InputError(f"'{data}' has no numeric column to use as the response: "
                                 "give --response")
            response = numeric[0]
        if response not in table.columns:
            raise InputError(f"--response '{response}' is not a column of '{data}': columns are "
                             f"{', '.join(table.columns)}")
        if response not in numeric:
            raise InputError(f"--response '{response}' is not numeric in '{data}': choose a "
                             "numeric column")
        if family is None:
            family = _guess_family(values[response], response, notes)
        covariates = [c for c in numeric if c != response]
        if other:
            notes.append("not numeric, left out (encode categories as 0/1 columns): "
                         + ", ".join(other))
        data_text = os.path.relpath(data.resolve(), config_path.resolve().parent)
    family = family or "gaussian"
    response = response or "y"
    cov_text = "[" + ", ".join(covariates) + "]" if covariates else "[x1, x2]"
    sigma = ('    sigma: flat              # half_normal(s), half_cauchy(s), '
             'half_student_t(nu, s), exponential(rate)\n') if family in ("gaussian",
                                                                           "student_t") else ""
    note_text = "".join(f"# {n}\n" for n in notes)
    return f"""# vireg config: run with  vireg fit {config_path.name}
# Paths are relative to this file. Every key below is optional except data.path,
# data.response and model.family. Check it without fitting:  vireg check {config_path.name}
{note_text}data:
  path: {data_text}
  response: {response}
  covariates: {cov_text}   # leave out to use every other column
model:
  family: {family}          # gaussian, bernoulli, binomial (with data.trials), poisson or
                            # negative_binomial (with data.exposure if any), student_t
  intercept: true
  prior:                    # on the scale of the data as given; flat is the default
    intercept: flat         # flat, normal(mu, s), student_t(nu, mu, s), cauchy(mu, s), laplace(mu, s)
    coefficients: flat      # with few rows or separated classes, use e.g. normal(0, 2.5)
{sigma}inference:
  family: auto              # fullrank up to 200 parameters (sds and correlations to trust), else meanfield
  samples: auto             # draws per step (auto: 2 to 512, more on small data where a step costs little)
  max_steps: 20000
  seed: 0
output:
  dir: runs/{config_path.stem}
  draws: 1000
"""


def write_starter(text: str, out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise InputError(f"'{out}' exists: choose another --out or add --force to overwrite it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text)
        tmp.replace(out)
    except OSError as exc:
        raise InputError(f"cannot write '{out}': {exc.strerror or exc}") from None
