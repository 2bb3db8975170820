"""Accuracy of vireg against the posteriordb NUTS references shipped in tests/data/posteriordb.

    python bench/accuracy.py [--family meanfield] [--set key=value ...]

Prints, per posterior: steps, fit seconds, the worst |mean error| in reference sds, the range of
sd ratios (vireg sd / reference sd) and the largest correlation error; then the worst over the
suite. Then the same for the logistic wells models against their importance-sampling figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from posteriordb import (  # noqa: E402
    config_for,
    load_reference,
    load_wells,
    natural_name,
    wells_config,
    wells_names,
)

import vireg  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="meanfield")
    parser.add_argument("--set", action="append", default=[], help="inference.key=value")
    args = parser.parse_args()
    t0 = time.perf_counter()
    print(f"{'posterior':45s} {'steps':>6s} {'seconds':>8s} {'mean err':>9s} {'sd ratio':>16s} "
          f"{'corr err':>9s}")
    cases = [(name, entry, config_for(name, entry, family=args.family), natural_name,
              entry["mean"], entry["sd"]) for name, entry in load_reference().items()]
    cases += [(name, entry, wells_config(name, entry, family=args.family),
               lambda e, p: wells_names(e)[p], entry["is_mean_NOT_EXTERNAL"],
               entry["is_sd_NOT_EXTERNAL"]) for name, entry in load_wells().items()]
    worst_mean, worst_ratio, worst_corr = 0.0, 1.0, 0.0
    for name, entry, config, to_name, ref_mean, ref_sd in cases:
        result = vireg.fit(config, overrides=args.set)
        rows = {r["parameter"]: r for r in result.summary_rows()}
        errs, ratios = [], []
        for p in entry["parameters"]:
            row = rows[to_name(entry, p)]
            errs.append(abs(row["mean"] - ref_mean[p]) / ref_sd[p])
            ratios.append(row["sd"] / ref_sd[p])
        corr_err = float("nan")
        if "corr" in entry:
            idx = [result.param_names.index(to_name(entry, p)) for p in entry["parameters"]]
            cov = result.natural_cov[np.ix_(idx, idx)]
            sd = np.sqrt(np.diag(cov))
            corr_err = float(np.abs(cov / np.outer(sd, sd) - np.array(entry["corr"])).max())
            worst_corr = max(worst_corr, corr_err)
        worst_mean = max(worst_mean, max(errs))
        worst_ratio = max([worst_ratio, *ratios], key=lambda r: abs(r - 1))
        flag = "" if result.converged else "  (did not converge)"
        print(f"{name:45s} {result.steps:6d} {result.fit_seconds:8.2f} {max(errs):9.3f} "
              f"[{min(ratios):.3f}, {max(ratios):.3f}] {corr_err:9.3f}{flag}")
    print(f"worst mean error {worst_mean:.3f} reference sd; sd ratio furthest from 1: "
          f"{worst_ratio:.3f}; worst correlation error {worst_corr:.3f}; "
          f"{time.perf_counter() - t0:.1f} s in all")


if __name__ == "__main__":
    main()
