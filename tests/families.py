"""Turn the reference posteriors of the count, proportion, probit and Student-t families shipped
in tests/data/families (long NUTS runs by bench/references/families.py) into vireg configs."""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).parent / "data" / "families"


def load_reference() -> dict:
    return json.loads((DATA / "reference.json").read_text())


def config_for(name: str, entry: dict, **inference) -> dict:
    """A vireg config dict for one reference posterior (its priors as the reference states)."""
    data = {"path": str(DATA / f"{name}.csv"), "response": entry["response"],
            "covariates": entry["covariates"]}
    for key in ("trials", "exposure"):
        if entry.get(key):
            data[key] = entry[key]
    model = {"family": entry["family"], "intercept": entry["intercept"],
             "prior": dict(entry["priors"])}
    if entry["family"] == "bernoulli":
        model["link"] = entry.get("link", "logit")
    return {"data": data, "model": model, "inference": inference, "output": {"draws": 0}}
