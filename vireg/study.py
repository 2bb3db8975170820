"""The gradient-variance study behind ``vireg gradvar``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from vireg.assemble import build, thread_count
from vireg.config import Config, as_config, config_from_dict
from vireg.errors import InputError
from vireg.threads import compute_threads

# The gradient study's random stream: apart from the fit's (spawned from the seed alone).
GRADVAR_STREAM = 7


def u_names(model) -> list[str]:
    """Names of the coordinates of u (the standardised parameters q is defined on)."""
    k = model.n_location
    return model.param_names[:k] + [f"log_{n}" for n in model.positive_names]


# gradvar --at zero: the null model on the standardised scale with sds at most this (where plain
# ADVI starts, away from the posterior).
ZERO_START_SD = 0.1


def gradvar(config: Config | dict | str | Path, at: str = "zero", draws: int = 1000,
            fits: bool = False, fit_steps: int = 2000, overrides: list[str] | None = None) -> dict:
    """The gradient-variance study behind ``vireg gradvar``.

    ``at`` is "zero" (m = 0 on the standardised scale, sds min(ZERO_START_SD, 1/sqrt(diag H*)):
    a start away from the posterior, as plain ADVI's), "init" (where a vireg fit starts: the
    Laplace approximation), "fit" (after fitting the config) or the folder of an
    earlier run (its fit.json). With ``fits``, also short fits from the same start with each
    estimator and the same step budget.
    """
    import json

    doc = None
    if at not in ("zero", "init", "fit"):
        run = Path(at)
        doc_path = run / "fit.json"
        if not doc_path.is_file():
            raise InputError(f"--at '{at}' is neither zero, init, fit, nor a run folder with "
                             "a fit.json")
        try:
            doc = json.loads(doc_path.read_text())
            cfg = config_from_dict(doc["config"], base_dir=doc["config_dir"])
        except (ValueError, KeyError) as exc:
            raise InputError(f"cannot read '{doc_path}' as a vireg result: {exc}") from None
    else:
        cfg = as_config(config, overrides)
    cfg, model = build(cfg)
    try:
        return _gradvar_study(cfg, model, at, draws, fits, fit_steps, doc)
    finally:
        model.rows.close()


def _gradvar_study(cfg: Config, model, at: str, draws: int, fits: bool, fit_steps: int,
                   doc: dict | None) -> dict:
    from vireg.api import fit
    from vireg.diagnostics import ESTIMATOR_NAMES, gradient_variance
    from vireg.engine import initial_phi
    from vireg.errors import FitError
    from vireg.families import make_family
    from vireg.laplace import find_mode

    # q over u itself (no frame), so that every estimator's gradient is in the same coordinates
    family = make_family(cfg.inference.family, model.n_params)
    threads = thread_count(cfg.runtime.threads)
    with compute_threads(threads):
        model.warm_up()
        if at == "zero":
            sd = np.minimum(ZERO_START_SD, find_mode(model).meanfield_sd)
            phi = family.init(sd)
        elif at == "init":
            laplace = find_mode(model)
            start = make_family(cfg.inference.family, model.n_params, laplace)
            phi = family.from_dict(start.to_dict(initial_phi(start, laplace)))
        elif at == "fit":
            phi = family.from_dict(fit(cfg).variational)
        else:
            phi = family.from_dict(doc["variational"])
        t0 = time.perf_counter()
        rng = np.random.default_rng(np.random.SeedSequence([cfg.inference.seed, GRADVAR_STREAM]))
        study = gradient_variance(model, family, phi, draws, rng,
                                  batch=max(2, cfg.inference.samples))
        study["seconds"] = time.perf_counter() - t0
    study.update({"at": at, "family": family.name, "labels": family.labels(u_names(model)),
                  "fits": []})
    if fits:
        for estimator in ESTIMATOR_NAMES:
            run_cfg = [f"inference.estimator={estimator}", f"inference.max_steps={fit_steps}",
                       "output.draws=0"]
            t0 = time.perf_counter()
            try:
                r = fit(config_from_dict(cfg.to_dict(), base_dir=cfg.base_dir,
                                         overrides=run_cfg))
                row = {"estimator": estimator, "elbo": r.elbo, "elbo_se": r.elbo_se,
                       "steps": r.steps, "converged": r.converged}
            except FitError as exc:
                row = {"estimator": estimator, "elbo": None, "elbo_se": None, "steps": None,
                       "converged": False, "error": str(exc)}
            row["seconds"] = time.perf_counter() - t0
            study["fits"].append(row)
    return study
