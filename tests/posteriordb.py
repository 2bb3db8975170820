"""Turn the posteriordb reference entries shipped in tests/data/posteriordb into vireg configs."""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).parent / "data" / "posteriordb"


def load_reference() -> dict:
    return json.loads((DATA / "reference.json").read_text())


def _prior(spec: dict, scale: bool) -> str:
    dist = spec["dist"]
    if dist in ("flat", "flat_positive"):
        return "flat"
    if dist == "normal":
        return f"normal({spec['loc']}, {spec['scale']})"
    if dist in ("half_cauchy", "half_normal"):
        assert spec.get("loc", 0) == 0
        return f"{dist}({spec['scale']})"
    raise ValueError(f"prior {dist} not mapped")


def config_for(name: str, entry: dict, **inference) -> dict:
    """A vireg config dict for one reference posterior."""
    priors = entry["priors"]
    coef = _prior(priors["beta"], scale=False)
    prior = {"coefficients": coef, "sigma": _prior(priors["sigma"], scale=True)}
    if entry["intercept"]:
        prior["intercept"] = _prior(priors["alpha"], scale=False) if "alpha" in priors else coef
    return {
        "data": {"path": str(DATA / f"{name}.csv"), "response": entry["response"],
                 "covariates": entry["covariates"]},
        "model": {"family": entry["family"], "intercept": entry["intercept"], "prior": prior},
        "inference": inference,
        "output": {"draws": 0},
    }


def natural_name(entry: dict, parameter: str) -> str:
    """The vireg name of a reference parameter (intercept, a covariate, or sigma)."""
    role = entry["parameter_roles"][parameter]
    return {"(intercept)": "intercept", "(noise sd)": "sigma"}.get(role, role)


def load_wells() -> dict:
    """The arsenic-wells logistic models with importance-sampling figures (computed for this
    project, not by posteriordb): flat priors, intercept first in ``parameters``."""
    return json.loads((DATA / "wells_mle.json").read_text())


def wells_config(name: str, entry: dict, **inference) -> dict:
    return {
        "data": {"path": str(DATA / f"{name}.csv"), "response": entry["response"],
                 "covariates": entry["covariates"]},
        "model": {"family": "bernoulli", "intercept": True},
        "inference": inference,
        "output": {"draws": 0},
    }


def wells_names(entry: dict) -> dict:
    """Reference parameter name -> vireg name (the intercept, then the covariates in order)."""
    return dict(zip(entry["parameters"], ["intercept", *entry["covariates"]], strict=True))
