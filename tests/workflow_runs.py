"""Run folders for the workflow tests: small fits written as ``vireg fit --out DIR`` writes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import vireg
from vireg import api, export

ROOT = Path(__file__).resolve().parents[1]
POSTERIORDB = ROOT / "tests" / "data" / "posteriordb"
KIDIQ_MODELS = {"momhs": ["mom_hs"], "momiq": ["mom_iq"], "momhsiq": ["mom_hs", "mom_iq"],
                "interaction": ["mom_hs", "mom_iq", "inter"]}


def kidiq_config(model: str = "momhsiq", data: Path | None = None, draws: int = 1000,
                 family: str = "meanfield", **output) -> dict:
    """A posteriordb kidiq model (flat coefficients, half-Cauchy(2.5) sigma) as a config dict."""
    return {"data": {"path": str(data or POSTERIORDB / f"kidiq-kidscore_{model}.csv"),
                     "response": "kid_score", "covariates": KIDIQ_MODELS[model]},
            "model": {"family": "gaussian", "prior": {"sigma": "half_cauchy(2.5)"}},
            "inference": {"family": family, "seed": 0},
            "output": {"draws": draws, **output}}


def wells_config(draws: int = 1000, **output) -> dict:
    return {"data": {"path": str(ROOT / "data" / "wells.csv"), "response": "switched",
                     "covariates": ["dist100", "arsenic"]},
            "model": {"family": "bernoulli"}, "inference": {"family": "meanfield", "seed": 0},
            "output": {"draws": draws, **output}}


def fit_run(config: dict, out_dir: Path, overrides: list[str] | None = None):
    """Fit a config and write its run folder; returns the ``FitResult``."""
    result = vireg.fit(config, overrides=overrides)
    export.write_results(result, out_dir, api.versions())
    return result


def without_row(csv_path: Path, row: int, out: Path) -> Path:
    """A copy of a CSV without data row ``row`` (0-based)."""
    lines = csv_path.read_text().splitlines()
    out.write_text("\n".join(lines[:row + 1] + lines[row + 2:]) + "\n")
    return out


def gaussian_loglik(draws: np.ndarray, names: list[str], X: np.ndarray, y: np.ndarray
                    ) -> np.ndarray:
    """log N(y_i | alpha + x_i beta, sigma) for every draw (rows) and observation (columns): a
    plain NumPy reference, independent of vireg's kernels."""
    alpha = draws[:, names.index("intercept")]
    beta = draws[:, 1:1 + X.shape[1]]
    sigma = draws[:, names.index("sigma")]
    eta = alpha[:, None] + beta @ X.T
    z = (y[None, :] - eta) / sigma[:, None]
    return -0.5 * np.log(2 * np.pi) - np.log(sigma)[:, None] - 0.5 * z * z
