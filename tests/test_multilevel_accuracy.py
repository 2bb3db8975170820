"""Models with group terms against long NUTS runs (tests/data/multilevel): Minnesota radon
with varying intercepts (posteriordb's reference) and varying slopes, the verbal-aggression
logistic model (316 respondents), the cbpp binomial model (15 herds) and lme4's sleepstudy
(varying intercepts and slopes over 18 subjects), three with several grouping factors
(lme4's Penicillin, crossed; Pastes, nested; MASS's oats, a varying slope crossed with a second
factor), and mlmRev's Contraception (logistic, varying urban slopes over 60 districts), nlme's
Orthodont (varying age slopes over 27 subjects) and lme4's grouseticks (Poisson, 118 broods),
each with its reference's priors and vireg's default settings.

The criteria are those of a multilevel fit worth reporting: fixed effects within 0.1 posterior
sd with sds within 10%; each group sd's mean within 0.25 of its posterior sd and its sd within
25%; every group effect within 0.1 sd with its sd within 15%. Where the structured Gaussian
misses one (sleepstudy's fixed-effect sds by a hair; the group sds of factors with few levels,
whose posteriors are skewed and wide), the test says so as a strict xfail, so that a fix
shows."""

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
MET = ["radon_mn_intercepts", "verbagg_logit", "cbpp_binomial", "radon_mn_slopes",
       "contraception_slopes", "grouseticks_brood"]


@pytest.mark.parametrize("name", CASES)
def test_fixed_effects_and_sigma_means(name):
    result, fixed, _ = errors(name)
    assert result.converged, result.reason
    for p, (err, _) in fixed.items():
        if not is_group_sd(p):
            assert abs(err) < 0.1, (p, err)


def assert_fixed_sds(name: str) -> None:
    _, fixed, _ = errors(name)
    for p, (_, ratio) in fixed.items():
        if not is_group_sd(p):
            assert abs(ratio - 1) < 0.1, (p, ratio)


@pytest.mark.parametrize("name", MET)
def test_fixed_effects_and_sigma_sds(name):
    assert_fixed_sds(name)


@pytest.mark.xfail(strict=True, reason="sleepstudy (18 subjects, flat priors): the intercept's, "
                   "slope's and sigma's sds come out 0.89-0.91 of NUTS's, following the group sds' "
                   "(0.90-0.95)")
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


@pytest.mark.parametrize("name", [*MET, "sleepstudy"])
def test_group_sds(name):
    _, fixed, _ = errors(name)
    for p, (err, ratio) in fixed.items():
        if is_group_sd(p):
            assert abs(err) < 0.25 and abs(ratio - 1) < 0.25, (p, err, ratio)


@pytest.mark.xfail(strict=True, reason="Orthodont (27 subjects, a small and poorly determined age "
                   "slope sd): sigma's sd 0.80x, the correlation's 0.74x and a subject's effect "
                   "0.17 sd off")
def test_orthodont_sds_and_effects():
    _, fixed, _ = errors("orthodont_slopes")
    for p, (err, ratio) in fixed.items():
        assert abs(ratio - 1) < (0.25 if is_group_sd(p) else 0.1), (p, ratio)
        assert not is_group_sd(p) or abs(err) < 0.25, (p, err)
    worst_mean, worst_sd = worst_effects("orthodont_slopes")
    assert worst_mean < 0.1 and worst_sd < 0.15, (worst_mean, worst_sd)


def test_orthodont_khat_says_it_falls_short():
    """Never confidently wrong: where the sds fall short (above), k-hat is above 0.7."""
    result, _, _ = errors("orthodont_slopes")
    assert result.khat > 0.7


def test_meanfield_understates_the_sds():
    """What the structured family is for: with the same conditional map of the effects,
    mean-field's fixed-effect sds and county effects' sds are far narrower (measured 0.68 and
    0.76 of NUTS's at the worst, against 0.95 and 0.93), and its k-hat says so."""
    structured, s_fixed, s_effects = errors("radon_mn_intercepts")
    meanfield, m_fixed, m_effects = errors("radon_mn_intercepts", "meanfield")
    assert (min(r for _, r in m_fixed.values())
            < min(r for _, r in s_fixed.values()) - 0.15)
    assert (min(r for _, r in m_effects.values())
            < min(r for _, r in s_effects.values()) - 0.1)
    assert meanfield.khat > 0.7 > structured.khat


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
                   "posteriors are skewed and wide, and q's sds come out off: the intercept "
                   "and sigma 0.60-0.92x, the group sds 0.28-1.21x, effects 0.52-1.00x")
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
