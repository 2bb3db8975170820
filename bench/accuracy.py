"""Accuracy of vireg against the posteriordb NUTS references shipped in tests/data/posteriordb.

    python bench/accuracy.py [--family meanfield] [--set key=value ...]

Prints, per posterior: steps, fit seconds, the worst |mean error| in reference sds, and the range
of sd ratios (vireg sd / reference sd); then the worst over the suite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from posteriordb import config_for, load_reference, natural_name  # noqa: E402

import vireg  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="meanfield")
    parser.add_argument("--set", action="append", default=[], help="inference.key=value")
    args = parser.parse_args()
    worst_mean, worst_ratio = 0.0, 1.0
    print(f"{'posterior':45s} {'steps':>6s} {'seconds':>8s} {'mean err':>9s} {'sd ratio':>16s}")
    for name, entry in load_reference().items():
        result = vireg.fit(config_for(name, entry, family=args.family), overrides=args.set)
        rows = {r["parameter"]: r for r in result.summary_rows()}
        errs, ratios = [], []
        for p in entry["parameters"]:
            row = rows[natural_name(entry, p)]
            errs.append(abs(row["mean"] - entry["mean"][p]) / entry["sd"][p])
            ratios.append(row["sd"] / entry["sd"][p])
        worst_mean = max(worst_mean, max(errs))
        worst_ratio = max([worst_ratio, *ratios], key=lambda r: abs(r - 1))
        flag = "" if result.converged else "  (did not converge)"
        print(f"{name:45s} {result.steps:6d} {result.fit_seconds:8.2f} {max(errs):9.3f} "
              f"[{min(ratios):.3f}, {max(ratios):.3f}]{flag}")
    print(f"worst mean error {worst_mean:.3f} reference sd; sd ratio furthest from 1: {worst_ratio:.3f}")


if __name__ == "__main__":
    main()
