"""Pareto k-hat: against ArviZ's PSIS, and on cases whose answer is known."""

import csv

import numpy as np
import pytest
from posteriordb import config_for, load_reference
from test_accuracy import conjugate_problem

import vireg
from vireg.diagnostics import khat_message, psis

arviz = pytest.importorskip("arviz")


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("case", ["gaussian", "student_t2", "pareto", "small"])
def test_psis_matches_arviz(rng, case):
    n = 300 if case == "small" else 4000
    log_ratios = {
        "gaussian": lambda: 0.3 * rng.standard_normal(n),
        "student_t2": lambda: rng.standard_t(2, n),
        "pareto": lambda: np.log(rng.pareto(1.2, n) + 1),
        "small": lambda: rng.standard_normal(n),
    }[case]()
    ref_lw, ref_k = arviz.psislw(log_ratios.copy())
    lw, k = psis(log_ratios)
    assert k == pytest.approx(float(ref_k), abs=1e-12)
    np.testing.assert_allclose(lw, np.asarray(ref_lw), atol=1e-10)


def test_khat_is_small_when_q_is_the_exact_posterior(tmp_path, rng):
    config, _, _ = conjugate_problem(tmp_path, rng)
    config["inference"]["family"] = "fullrank"
    result = vireg.fit(config)
    assert result.khat < 0.5


def test_khat_is_large_for_meanfield_on_a_strongly_correlated_posterior():
    name = "earnings-logearn_interaction"  # mean-field sds 0.04x NUTS's on the interaction
    result = vireg.fit(config_for(name, load_reference()[name], family="meanfield"))
    assert result.khat > 0.7


def test_draws_carry_log_densities_that_reproduce_khat(tmp_path):
    from test_cli import make_project

    config = make_project(tmp_path)
    result = vireg.fit(config, overrides=["output.draws=500", "output.psis_draws=500",
                                          f"output.dir={tmp_path / 'out'}"])
    from vireg import api, export

    export.write_results(result, tmp_path / "out", api.versions())
    rows = list(csv.DictReader((tmp_path / "out" / "draws.csv").open()))
    log_ratio = np.array([float(r["log_p__"]) - float(r["log_q__"]) for r in rows])
    assert psis(log_ratio)[1] == pytest.approx(result.khat, abs=1e-9)


def test_psis_summaries_are_marked_and_close_to_q_when_q_is_good(tmp_path, rng):
    config, _, _ = conjugate_problem(tmp_path, rng)
    config["inference"]["family"] = "fullrank"
    plain = vireg.fit(config)
    config["output"] = {"draws": 0, "psis": True, "psis_draws": 4000}
    weighted = vireg.fit(config)
    assert plain.summary_method == "q" and weighted.summary_method == "psis"
    assert not np.array_equal(plain.summary.mean, weighted.summary.mean)
    # 4000 draws: Monte Carlo error of a mean is about sd / 63.
    assert np.max(np.abs(plain.summary.mean - weighted.summary.mean) / plain.summary.sd) < 0.1


@pytest.mark.parametrize(("k", "shown"), [(0.7004, "0.7004 > 0.7"), (0.7049, "0.705 > 0.7"),
                                          (0.73, "0.73 > 0.7")])
def test_khat_warning_never_prints_k_equal_to_its_threshold(k, shown):
    assert f"k-hat {shown}:" in khat_message(k)


def test_khat_just_under_a_threshold_prints_under_it():
    assert khat_message(0.49999).startswith("Pareto k-hat 0.49999 (<= 0.5)")
    assert khat_message(0.69996).startswith("Pareto k-hat 0.69996 (between 0.5 and 0.7)")
    assert khat_message(0.5003).startswith("Pareto k-hat 0.5003 (between")
    assert khat_message(0.7).startswith("Pareto k-hat 0.70 (between")


def test_psis_degenerate_tails_never_raise():
    from vireg.diagnostics import khat_message, psis

    one_dominates = np.full(2000, -1e4)
    one_dominates[7] = 0.0
    lw, k = psis(one_dominates)
    assert k == float("inf") and np.isclose(np.logaddexp.reduce(lw), 0.0)
    assert "infinite" in khat_message(k, family="fullrank")
    lw, k = psis(np.full(2000, -3.5))
    assert k == 0.0 and np.allclose(lw, -np.log(2000))
    bad = np.zeros(2000)
    bad[3] = np.nan
    assert psis(bad)[1] == float("inf")
    bad[3] = np.inf
    assert psis(bad)[1] == float("inf")


def test_khat_advice_fits_the_variational_family():
    from vireg.diagnostics import khat_message

    assert "try inference.family: fullrank" in khat_message(1.2, family="meanfield")
    full = khat_message(1.2, family="fullrank")
    assert "already full-rank" in full and "try inference.family" not in full and "priors" in full
    assert "family: fullrank" not in khat_message(0.6, family="fullrank")
