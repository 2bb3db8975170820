"""Accuracy of vireg's count, proportion, probit and Student-t fits against the long-NUTS
references in tests/data/families (made by bench/references/families.py).

    python bench/family_accuracy.py [--family auto|fullrank|meanfield]

Prints, per reference: the family and rows, steps, whether the fit converged, the worst |mean
error| in reference sds, the range of sd ratios (vireg sd / reference sd) and k-hat.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from families import config_for, load_reference  # noqa: E402

import vireg  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="auto")
    args = parser.parse_args()
    print("| reference | likelihood | rows | steps | converged | worst mean error (sd) | "
          "sd ratio | k-hat |\n|---|---|---|---|---|---|---|---|")
    for name, entry in load_reference().items():
        result = vireg.fit(config_for(name, entry, family=args.family))
        idx = [result.param_names.index(p) for p in entry["parameters"]]
        ref_mean = np.array([entry["mean"][p] for p in entry["parameters"]])
        ref_sd = np.array([entry["sd"][p] for p in entry["parameters"]])
        err = np.abs(result.summary.mean[idx] - ref_mean) / ref_sd
        ratio = result.summary.sd[idx] / ref_sd
        kind = entry["family"] + (f" ({entry['link']})" if entry["family"] == "bernoulli" else "")
        print(f"| {name} | {kind} | {entry['n_rows']} | {result.steps} | {result.converged} | "
              f"{err.max():.3f} ({entry['parameters'][int(err.argmax())]}) | "
              f"{ratio.min():.3f}-{ratio.max():.3f} | {result.khat:.2f} |")


if __name__ == "__main__":
    main()
