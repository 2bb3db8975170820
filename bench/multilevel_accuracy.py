"""Accuracy of vireg's fits of models with group terms against the long-NUTS references in
tests/data/multilevel (radon varying intercepts and slopes, verbal aggression, cbpp,
sleepstudy, the crossed and nested Penicillin, Pastes and oats, and Contraception, Orthodont
and grouseticks), for the
structured family (the default) beside mean-field.

    python bench/multilevel_accuracy.py [--families structured,meanfield]

Prints one markdown row per reference and family: steps, whether the fit converged, the worst
|mean error| of the fixed effects and sigma in reference sds and their sd ratios (vireg /
NUTS), each group sd's (and correlation's) mean error and sd ratio, the worst group effect's
mean error and the range of their sd ratios, k-hat and the fit's seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from multilevel_references import CASES, errors_against, reference  # noqa: E402

import vireg  # noqa: E402


def row(name: str, family: str) -> str:
    ref = reference(name)
    result = vireg.fit({**ref["config"], "inference": {"family": family, "seed": 1},
                        "output": {"draws": 4000}})
    fixed, effects = errors_against(result, ref)
    group = {p: v for p, v in fixed.items() if p.startswith(("sd(", "cor("))}
    base = {p: v for p, v in fixed.items() if p not in group}
    worst = max(base, key=lambda p: abs(base[p][0]))
    ratios = [r for _, r in base.values()]
    sds = "; ".join(f"{p} {e:+.2f} sd, x{r:.2f}" for p, (e, r) in group.items())
    e_mean = max(abs(e) for e, _ in effects.values())
    e_ratio = [r for _, r in effects.values()]
    return (f"| {name} | {family} | {result.steps} | {result.converged} | "
            f"{abs(base[worst][0]):.3f} ({worst}) | {min(ratios):.2f}-{max(ratios):.2f} | {sds} | "
            f"{e_mean:.3f} | {min(e_ratio):.2f}-{max(e_ratio):.2f} | {result.khat:.2f} | "
            f"{result.fit_seconds:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="structured,meanfield")
    args = parser.parse_args()
    print("| reference | family | steps | converged | fixed: worst mean error (sd) | fixed: sd "
          "ratio | group sds: mean error, sd ratio | effects: worst mean error (sd) | effects: "
          "sd ratio | k-hat | fit s |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for name in CASES:
        for family in args.families.split(","):
            print(row(name, family), flush=True)


if __name__ == "__main__":
    main()
