"""Accuracy of vireg on the NIST StRD linear regressions against NIST's certified values.

    python bench/nist.py [--family fullrank|meanfield] [--set key=value ...] [--seed N]

With flat priors on every coefficient and on sigma the exact posterior of the coefficients is a
multivariate t centred on NIST's certified least-squares estimate, with sds
sd_of_estimate * sqrt((n - p) / (n - p - 3)). Prints, per data set: exit (ok, refused, failed),
converged, steps, passes, the worst |mean error| in exact posterior sds, the range of sd ratios
(vireg / exact t) and k-hat.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

NIST = Path(__file__).resolve().parents[1] / "tests" / "data" / "nist"

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vireg  # noqa: E402
from vireg.errors import FitError, InputError  # noqa: E402


def nist_config(name: str, cert: dict, family: str) -> dict:
    return {"data": {"path": str(NIST / f"{name}.csv"), "response": cert["response"],
                     "covariates": cert["covariates"]},
            "model": {"family": "gaussian", "intercept": cert["intercept"]},
            "inference": {"family": family},
            "output": {"draws": 0}}


def exact_sd(cert: dict) -> np.ndarray:
    n, p = cert["n"], len(cert["parameters"])
    return np.asarray(cert["sd_of_estimate"]) * np.sqrt((n - p) / (n - p - 3))


def run(name: str, cert: dict, family: str, overrides: list[str]) -> dict:
    t0 = time.perf_counter()
    try:
        r = vireg.fit(nist_config(name, cert, family), overrides=overrides)
    except InputError as exc:
        return {"name": name, "exit": "refused", "message": str(exc)}
    except FitError as exc:
        return {"name": name, "exit": "failed", "message": str(exc)}
    k = len(cert["parameters"])
    sd = exact_sd(cert)
    err = np.abs(r.summary.mean[:k] - np.asarray(cert["estimate"])) / sd
    ratio = r.summary.sd[:k] / sd
    return {"name": name, "exit": "ok", "converged": r.converged, "steps": r.steps,
            "passes": r.extras.get("passes"), "seconds": time.perf_counter() - t0,
            "mean_err_sd": float(err.max()), "sd_ratio": (float(ratio.min()), float(ratio.max())),
            "khat": r.khat, "reason": r.reason}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="fullrank")
    parser.add_argument("--set", action="append", default=[], help="key.path=value")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    certified = json.loads((NIST / "certified.json").read_text())
    for name, cert in certified.items():
        row = run(name, cert, args.family, args.set)
        if args.json:
            print(json.dumps(row))
        elif row["exit"] != "ok":
            print(f"{name:10s} {row['exit']:8s} {row['message'][:100]}")
        else:
            print(f"{name:10s} ok conv={row['converged']!s:5s} steps={row['steps']:6d} "
                  f"passes={row['passes']!s:>6s} {row['seconds']:6.2f}s "
                  f"mean_err={row['mean_err_sd']:9.3g} sd "
                  f"sd_ratio={row['sd_ratio'][0]:.3f}-{row['sd_ratio'][1]:.3f} khat={row['khat']:.2f}")


if __name__ == "__main__":
    main()
