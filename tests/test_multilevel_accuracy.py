"""Models with group terms against long NUTS runs (tests/data/multilevel): Minnesota radon
with varying intercepts (posteriordb's reference) and varying slopes, the verbal-aggression
logistic model (316 respondents), the cbpp binomial model (15 herds) and lme4's sleepstudy
(varying intercepts and slopes over 18 subjects), and three with several grouping factors
(lme4's Penicillin, crossed; Pastes, nested; MASS's oats, a varying slope crossed with a second
factor), each with its reference's priors and vireg's default settings.

The criteria are those of a multilevel fit worth reporting: fixed effects within 0.1 posterior
sd with sds within 10%; each group sd's mean within 0.25 of its posterior sd and its sd within
25%; every group effect within 0.1 sd with its sd within 15%. Where the structured Gaussian
misses one (the varying-slopes model's group sds and correlation, whose posteriors are skewed
and wide), the test says so as a strict xfail, so that a fix shows."""

import pytest
from multilevel_references import CASES, CROSSED, errors_against, reference

from vireg.api import fit

FITS: dict = {}


def fitted(name: str, family: str = "auto"):
    if (name, family) not in FITS:
        ref = reference(name)
        cfg = {**ref["config"], "inference": {"family": family, "seed": 1},
               "output": {"draws": 4000}}
        FITS[(name, family)] = fit(cfg)
    return FITS[(name, family)], reference(name)


def errors(name: str, family: str = "auto"):
    """The fit, {parameter: (mean error in sds, sd ratio)} and the same for every group
    effect."""
    result, ref = fitted(name, family)
    return (result, *errors_against(result, ref))


def is_group_sd(p: str) -> bool:
    return p.startswith("sd(") or p.startswith("cor(")


# The cases that meet every criterion; the others' shortfalls are strict xfails below.
MET = ["radon_mn_intercepts", "verbagg_logit", "cbpp_binomial"]


@pytest.mark.parametrize("name", CASES)
def test_fixed_effects_and_sigma_means(name):
    result, fixed, _ = errors(name)
    assert result.converged, result.reason
    for p, (err, _) in fixed.items():
        if is_group_sd(p) or (name == "radon_mn_slopes" and p == "sigma"):
            continue  # (the varying-slopes sigma: with the group sds, below)
        assert abs(err) < 0.1, (p, err)


def assert_fixed_sds(name: str) -> None:
    _, fixed, _ = errors(name)
    for p, (_, ratio) in fixed.items():
        if not is_group_sd(p):
            assert abs(ratio - 1) < 0.1, (p, ratio)


@pytest.mark.parametrize("name", [*MET, "radon_mn_slopes"])
def test_fixed_effects_and_sigma_sds(name):
    assert_fixed_sds(name)


@pytest.mark.xfail(strict=True, reason="sleepstudy (18 subjects, flat priors): the intercept's, "
                   "slope's and sigma's sds come out 0.89-0.93 of NUTS's, following the group sds' "
                   "(0.84-0.89)")
def test_sleepstudy_fixed_effect_sds():
    assert_fixed_sds("sleepstudy")


def worst_effects(name: str) -> tuple[float, float]:
    _, _, effects = errors(name)
    return (max(abs(e) for e, _ in effects.values()),
            max(abs(r - 1) for _, r in effects.values()))


@pytest.mark.parametrize("name", [*MET, "sleepstudy"])
def test_group_effects(name):
    worst_mean, worst_sd = worst_effects(name)
    assert worst_mean < 0.1 and worst_sd < 0.15, (worst_mean, worst_sd)


@pytest.mark.xfail(strict=True, reason="varying slopes: the worst county effect's mean is "
                   "0.18-0.24 sd off (measured), where the group sds are off too")
def test_varying_slopes_group_effects():
    worst_mean, worst_sd = worst_effects("radon_mn_slopes")
    assert worst_mean < 0.1 and worst_sd < 0.15, (worst_mean, worst_sd)


def test_varying_slopes_no_worse_than_measured():
    """A guard on the figures the strict xfails above describe (0.18-0.24 sd, 13%; sigma
    0.11 sd)."""
    worst_mean, worst_sd = worst_effects("radon_mn_slopes")
    assert worst_mean < 0.3 and worst_sd < 0.15, (worst_mean, worst_sd)
    assert abs(errors("radon_mn_slopes")[1]["sigma"][0]) < 0.15


@pytest.mark.parametrize("name", [*MET, "sleepstudy"])
def test_group_sds(name):
    _, fixed, _ = errors(name)
    for p, (err, ratio) in fixed.items():
        if is_group_sd(p):
            assert abs(err) < 0.25 and abs(ratio - 1) < 0.25, (p, err, ratio)


@pytest.mark.xfail(strict=True, reason="varying slopes: the group sds' posterior sds come out "
                   "about 25-30% narrow and the correlation's 40% (skewed, wide posteriors that a "
                   "Gaussian in log tau and atanh rho cannot follow; full-rank is no better)")
def test_varying_slopes_group_sds():
    _, fixed, _ = errors("radon_mn_slopes")
    for p, (err, ratio) in fixed.items():
        if is_group_sd(p):
            assert abs(err) < 0.25 and abs(ratio - 1) < 0.25, (p, err, ratio)


@pytest.mark.xfail(strict=True, reason="varying slopes: sigma's mean 0.11 sd low (measured over "
                   "four seeds: 0.105-0.115), beside the group sds' narrow posteriors")
def test_varying_slopes_sigma():
    _, fixed, _ = errors("radon_mn_slopes")
    err, ratio = fixed["sigma"]
    assert abs(err) < 0.1 and abs(ratio - 1) < 0.1, (err, ratio)


def test_meanfield_understates_the_group_sd():
    """What the structured family is for: mean-field's tau sd is far narrower (measured 0.62 of
    NUTS's against 0.85), and its county effects' sds narrower too."""
    _, structured, s_effects = errors("radon_mn_intercepts")
    _, meanfield, m_effects = errors("radon_mn_intercepts", "meanfield")
    tau = "sd(county:(Intercept))"
    assert meanfield[tau][1] < 0.75 < structured[tau][1]
    assert (min(r for _, r in m_effects.values())
            < min(r for _, r in s_effects.values()) - 0.1)


@pytest.mark.parametrize("name", CROSSED)
def test_several_factors_means(name):
    """Crossed and nested factors: every group sd's mean within 0.25 of its posterior sd and
    every group effect's within 0.1 (the fixed effects' and sigma's: above)."""
    _, fixed, effects = errors(name)
    for p, (err, _) in fixed.items():
        if is_group_sd(p):
            assert abs(err) < 0.25, (p, err)
    assert max(abs(e) for e, _ in effects.values()) < 0.1


@pytest.mark.xfail(strict=True, reason="several factors with few levels (Penicillin's 6 samples, "
                   "Pastes' 10 batches, oats' 6 blocks and 3 varieties): the group sds' "
                   "posteriors are skewed and wide, and q's sds come out narrow: the intercept "
                   "0.61-0.86x, sigma 0.68-0.92x, the group sds 0.28-0.91x, effects 0.52-1.00x")
@pytest.mark.parametrize("name", CROSSED)
def test_several_factors_sds(name):
    _, fixed, effects = errors(name)
    for p, (_, ratio) in fixed.items():
        assert abs(ratio - 1) < (0.25 if is_group_sd(p) else 0.1), (p, ratio)
    assert max(abs(r - 1) for _, r in effects.values()) < 0.15


@pytest.mark.parametrize("name", CROSSED)
def test_several_factors_khat_says_where_sds_fall_short(name):
    """Never confidently wrong: where a group sd's posterior sd is under 0.7 of NUTS's (Pastes'
    batches, oats' varieties) k-hat is above 0.7, so the fit warns; Penicillin's, whose sds
    are within 25%, has k-hat below 0.7."""
    result, fixed, _ = errors(name)
    worst = min(ratio for p, (_, ratio) in fixed.items() if is_group_sd(p))
    assert (worst < 0.7) == (result.khat > 0.7), (worst, result.khat)
