"""The multilevel NUTS references in tests/data/multilevel, as vireg configs and the
comparison of a fit against them (tests/test_multilevel_accuracy.py,
bench/multilevel_accuracy.py)."""

import json
from pathlib import Path

DATA = Path(__file__).parent / "data" / "multilevel"
CROSSED = ["penicillin_crossed", "pastes_nested", "oats_slopes_crossed"]
# bench/references/glmm_public.py: mlmRev's Contraception (logistic, varying urban slopes),
# nlme's Orthodont (varying age slopes) and lme4's grouseticks (Poisson, brood intercepts)
PUBLIC = ["contraception_slopes", "orthodont_slopes", "grouseticks_brood"]
CASES = ["radon_mn_intercepts", "verbagg_logit", "cbpp_binomial", "radon_mn_slopes",
         "sleepstudy", *CROSSED, *PUBLIC]


def reference(name: str) -> dict:
    """The reference as {parameter: (mean, sd)} with vireg's names, and the fit's config."""
    if name == "radon_mn_intercepts":
        doc = json.loads((DATA / "radon_mn_intercepts.json").read_text())
        ref = {("intercept" if k == "(Intercept)" else k): (v["mean"], v["sd"])
               for k, v in doc["fixed"].items()}
        ref["sigma"] = (doc["sigma"]["mean"], doc["sigma"]["sd"])
        ref["sd(county:(Intercept))"] = (doc["group_sd"]["(Intercept)"]["mean"],
                                         doc["group_sd"]["(Intercept)"]["sd"])
        effects = {("county", level, "(Intercept)"): (v["mean"], v["sd"])
                   for level, v in doc["group_effects"]["(Intercept)"].items()}
        cfg = {"data": {"path": str(DATA / "radon_mn_intercepts.csv"), "formula": doc["formula"]},
               "model": {"family": "gaussian", "prior": {
                   "intercept": "flat", "coefficients": "normal(0, 10)",
                   "sigma": "half_normal(1)", "group_sd": "half_normal(1)"}}}
        return {"fixed": ref, "effects": effects, "config": cfg}
    own = DATA / f"{name}.json"
    if not own.exists() and name in CROSSED:
        own = DATA / "crossed.json"
    if not own.exists() and name in PUBLIC:
        own = DATA / "glmm_public.json"
    doc = json.loads((own if own.exists() else DATA / "reference.json").read_text())[name]
    fixed, effects = {}, {}
    for p in doc["parameters"]:
        value = (doc["mean"][p], doc["sd"][p])
        if "[" in p:  # group[level]:term
            group, rest = p.split("[", 1)
            level, term = rest.split("]:", 1)
            effects[(group, level, term)] = value
        else:
            fixed["intercept" if p == "(Intercept)" else p] = value
    if "groups" in doc:  # several grouping factors: the reference's formula
        data = {"path": str(DATA / doc["csv"]), "formula": doc["formula"]}
    else:
        data = {"path": str(DATA / doc["csv"]), "response": doc["response"],
                "covariates": doc["covariates"],
                "groups": {doc["group"]: ["intercept" if t == "(Intercept)" else t
                                          for t in doc["group_terms"]]}}
    if doc.get("trials"):
        data["trials"] = doc["trials"]
    prior = {k: v for k, v in doc["priors"].items()
             if k in ("intercept", "coefficients", "sigma", "group_sd", "group_cor", "overrides")}
    cfg = {"data": data, "model": {"family": doc["family"], "prior": prior}}
    return {"fixed": fixed, "effects": effects, "config": cfg}



def errors_against(result, ref: dict):
    """{parameter: (mean error in reference sds, sd ratio)} of a fit's reported quantities,
    and {(group, level, term): (the same)} of its group effects."""
    rows = {r["parameter"]: r for r in result.summary_rows()}
    fixed = {p: ((rows[p]["mean"] - m) / s, rows[p]["sd"] / s) for p, (m, s) in
             ref["fixed"].items()}
    effects = {}
    for r in result.group_rows:
        m, s = ref["effects"][(r["group"], r["level"], r["term"])]
        effects[(r["group"], r["level"], r["term"])] = ((r["mean"] - m) / s, r["sd"] / s)
    assert len(effects) == len(ref["effects"])
    return fixed, effects
