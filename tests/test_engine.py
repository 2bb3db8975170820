"""The optimisation loop: recovery from non-finite steps and the stopping rule's verdicts."""

import numpy as np
import pytest
from test_cli import make_project

import vireg
from vireg.engine import drift_threshold
from vireg.models.model import Model


def test_transient_non_finite_steps_are_undone_and_the_fit_still_converges(tmp_path, monkeypatch):
    config = make_project(tmp_path)
    clean = vireg.fit(config)
    real = Model.log_joint_grad
    calls = {"n": 0}

    def flaky(self, U):  # the optimiser's steps (several draws), not the search for the mode
        calls["n"] += U.shape[0] > 1
        logp, g = real(self, U)
        if calls["n"] in (5, 6, 7):
            g = g * np.inf
        return logp, g

    monkeypatch.setattr(Model, "log_joint_grad", flaky)
    result = vireg.fit(config)
    assert result.converged, result.reason
    assert result.extras["backoffs"] == 3
    assert np.all(np.isfinite(result.summary.mean))
    assert np.isnan(result.elbo_trace[4:7]).all()
    sd = clean.summary.sd
    assert np.max(np.abs(result.summary.mean - clean.summary.mean) / sd) < 0.1


def test_converged_fit_states_why_and_by_how_much(tmp_path):
    result = vireg.fit(make_project(tmp_path))
    assert result.converged
    assert result.reason.startswith("converged") and "posterior sd" in result.reason
    assert result.extras["last_distance"] < result.config.inference.tolerance


def test_fit_stopped_at_max_steps_says_it_did_not_converge(tmp_path):
    result = vireg.fit(make_project(tmp_path), overrides=["inference.max_steps=60"])
    assert not result.converged and result.steps == 60
    assert "did not converge" in result.reason and "max_steps=60" in result.reason


def test_drift_threshold_grows_with_the_number_of_coordinates():
    assert 3.0 < drift_threshold(2) < drift_threshold(20) < drift_threshold(2000) < 10.0


@pytest.mark.parametrize("n", [1, 6, 1000, 350_000])
def test_drift_threshold_is_students_t_quantile(n):
    """The Bonferroni bound is the t(9) quantile itself, to 1e-6 (scipy as the reference)."""
    from scipy.stats import t

    np.testing.assert_allclose(drift_threshold(n), t.isf(0.01 / (2 * n), 9), rtol=1e-6)


def test_a_tolerance_too_small_to_meet_ends_unconverged_not_falsely_converged(tmp_path):
    result = vireg.fit(make_project(tmp_path), overrides=["inference.tolerance=1e-14"])
    assert not result.converged
    assert "step size shrank" in result.reason and "raise inference.tolerance" in result.reason


@pytest.mark.parametrize("family", ["meanfield", "fullrank"])
def test_a_fit_that_runs_away_stops_unconverged_and_says_why(tmp_path, monkeypatch, family):
    """A gradient pushed off the posterior (a bias that no optimum can satisfy) drags q away from
    the mode: the guard sends it back with smaller steps, and after repeated runaways the fit
    ends "did not converge", naming the runaway, with results from the last good state."""
    config = make_project(tmp_path)
    real = Model.log_joint_grad

    def pushed(self, U):  # the optimiser's steps only, not the search for the mode
        logp, g = real(self, U)
        return logp, g + (1e4 if U.shape[0] > 1 else 0.0)

    monkeypatch.setattr(Model, "log_joint_grad", pushed)
    result = vireg.fit(config, overrides=[f"inference.family={family}"])
    assert not result.converged
    assert result.reason.startswith("did not converge") and "ran away" in result.reason
    assert result.extras["restarts"] == 4
    monkeypatch.setattr(Model, "log_joint_grad", real)
    clean = vireg.fit(config, overrides=[f"inference.family={family}"])
    assert np.max(np.abs(result.summary.mean - clean.summary.mean) / clean.summary.sd) < 1.0


def test_cli_exit_code_for_a_runaway_fit_is_one(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vireg.cli import app

    config = make_project(tmp_path)
    real = Model.log_joint_grad
    monkeypatch.setattr(Model, "log_joint_grad", lambda self, U: (
        lambda lp_g: (lp_g[0], lp_g[1] + (1e4 if U.shape[0] > 1 else 0.0)))(real(self, U)))
    res = CliRunner().invoke(app, ["fit", str(config), "--quiet", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "ran away" in res.stderr and "Traceback" not in res.stderr


def _feed(rule, rng, grad_mean, grad_sd, phi, elbo=-10.0):
    """One window of synthetic steps into the rule; returns the window's summary."""
    window = None
    while window is None:
        g = grad_mean + grad_sd * rng.standard_normal(rule.family.size)
        window = rule.add(elbo + 0.01 * rng.standard_normal(), g, phi)
    return window


def test_stopping_rule_gradient_test_needs_a_quiet_second_window():
    from vireg.engine import StoppingRule
    from vireg.families.fullrank import FullRank

    rng = np.random.default_rng(0)
    fam = FullRank(3)
    rule = StoppingRule(fam, window=50, tolerance=0.02)
    phi = np.zeros(fam.size)
    w = _feed(rule, rng, 0.0, 0.001, phi)
    assert rule.gradient_test(w) is None  # never on the first window
    assert rule.level_test(w).kind == "first"
    w = _feed(rule, rng, 0.0, 0.001, phi)
    verdict = rule.gradient_test(w)
    assert verdict.kind == "converged" and rule.last_distance < 0.02


def test_stopping_rule_does_not_call_a_drifting_or_noisy_window_converged():
    from vireg.engine import StoppingRule
    from vireg.families.fullrank import FullRank

    rng = np.random.default_rng(1)
    fam = FullRank(3)
    phi = np.zeros(fam.size)
    for mean, sd in ((0.05, 0.001), (0.0, 0.5)):  # a steady pull; zero mean but too noisy
        rule = StoppingRule(fam, window=50, tolerance=0.02)
        rule.level_test(_feed(rule, rng, mean, sd, phi))
        assert rule.gradient_test(_feed(rule, rng, mean, sd, phi)) is None


def test_stopping_rule_level_test_converges_when_levels_agree_and_not_before():
    from vireg.engine import StoppingRule
    from vireg.families.meanfield import MeanField

    rng = np.random.default_rng(2)
    fam = MeanField(2)
    rule = StoppingRule(fam, window=20, tolerance=0.02)
    phi = np.zeros(fam.size)
    kinds = [rule.level_test(_feed(rule, rng, 0.0, 1.0, phi)).kind for _ in range(4)]
    assert kinds == ["first", "level", "continue", "converged"]
    assert rule.levels == 2 and rule.decays == 1
