"""Posterior predictive checks (vireg.workflow.ppc, ``vireg ppc``)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner
from workflow_runs import fit_run, kidiq_config, wells_config

from vireg.cli import app
from vireg.config import ModelConfig
from vireg.errors import InputError
from vireg.workflow.ppc import PREDICTIVE, STATISTICS, PredictiveData, plot_ppc, ppc
from vireg.workflow.run import load_run

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ppc")
    fit_run(kidiq_config(), base / "kidiq")
    fit_run(wells_config(draws=400), base / "wells")
    return base


def test_every_family_draws_replicates_with_its_mean(rng):
    eta = np.tile(np.linspace(-2, 2, 5), (20000, 1))
    cases = {"gaussian": ({"sigma": np.full((20000, 1), 0.5)}, ModelConfig("gaussian")),
             "bernoulli": ({}, ModelConfig("bernoulli"))}
    for family, (params, model) in cases.items():
        pred = PREDICTIVE[family]
        data = PredictiveData(None, model)
        rep = pred.draw(rng, eta, params, data)
        mean = pred.mean(eta, params, data)
        assert rep.shape == eta.shape
        np.testing.assert_allclose(rep.mean(axis=0), mean[0], atol=0.02)


def test_count_and_student_t_replicates_have_their_means(rng):
    """Replicates of the count families (trials, exposure, overdispersion) and Student-t
    average to the family's E[y | theta]; the negative binomial's spread includes phi."""
    from types import SimpleNamespace

    S = 40000
    eta = np.tile(np.linspace(-1, 1, 4), (S, 1))
    row = np.array([3.0, 5.0, 1.0, 8.0])
    design = SimpleNamespace(row_data=row)
    cases = {"binomial": {}, "poisson": {}, "negative_binomial": {"phi": np.full((S, 1), 2.0)},
             "student_t": {"sigma": np.full((S, 1), 0.5), "nu": np.full((S, 1), 5.0)}}
    for family, params in cases.items():
        data = PredictiveData(design if family != "student_t" else SimpleNamespace(row_data=None),
                              ModelConfig(family))
        pred = PREDICTIVE[family]
        rep = pred.draw(rng, eta, params, data)
        mean = pred.mean(eta, params, data)[0]
        np.testing.assert_allclose(rep.mean(axis=0), mean, rtol=0.03, atol=0.02)
    mu = row * np.exp(eta[0])
    nb = PREDICTIVE["negative_binomial"].draw(
        rng, eta, cases["negative_binomial"], PredictiveData(design, ModelConfig("negative_binomial")))
    np.testing.assert_allclose(nb.var(axis=0), mu + mu**2 / 2.0, rtol=0.06)


def test_gaussian_with_known_sigma_uses_it(rng):
    eta = np.zeros((50000, 1))
    rep = PREDICTIVE["gaussian"].draw(rng, eta, {}, PredictiveData(None, ModelConfig(
        "gaussian", sigma=3.0)))
    assert rep.std() == pytest.approx(3.0, rel=0.02)


def test_gaussian_ppc_statistics_and_p_values(runs):
    r = ppc(runs / "kidiq")
    run = load_run(runs / "kidiq")
    assert [row["statistic"] for row in r.statistics] == list(STATISTICS)
    y = r.y
    assert r.statistics[0]["observed"] == pytest.approx(y.mean())
    assert r.statistics[3]["observed"] == y.max()
    assert r.stat_draws.shape == (run.draws.shape[0], 4)
    for row, t in zip(r.statistics, r.stat_draws.T, strict=True):
        assert row["p_value"] == pytest.approx(np.mean(t >= row["observed"]))
        assert 0.01 < row["p_value"] < 0.99  # the linear model reproduces these
    # seeded: the same numbers again
    assert ppc(runs / "kidiq").statistics == r.statistics


def test_bernoulli_ppc_bins_the_rows_by_fitted_probability(runs):
    r = ppc(runs / "wells")
    b = r.bins
    assert r.plot == "calibration" and b["size"].sum() == 3020
    assert np.all(np.diff(b["predicted"]) >= 0)
    assert np.all(b["rep_q5"] <= b["rep_q95"])
    inside = (b["observed"] >= b["rep_q5"] - 0.05) & (b["observed"] <= b["rep_q95"] + 0.05)
    assert inside.mean() > 0.8


def test_ppc_pictures_are_written(runs, tmp_path):
    for name in ("kidiq", "wells"):
        out = plot_ppc(ppc(runs / name), tmp_path / f"{name}.png")
        assert out.stat().st_size > 10_000
    assert not list(tmp_path.glob(".*"))


def test_ppc_of_a_family_without_a_predictive_is_refused(runs, monkeypatch):
    monkeypatch.delitem(PREDICTIVE, "gaussian")
    with pytest.raises(InputError, match="no posterior predictive for family 'gaussian'"):
        ppc(runs / "kidiq")


def test_cli_ppc_prints_the_table_and_writes_the_png(runs, tmp_path):
    res = CliRunner().invoke(app, ["ppc", str(runs / "kidiq"), "--out", str(tmp_path / "p.png")])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0] == "statistic,observed,rep_mean,rep_sd,rep_q5,rep_q95,p_value"
    assert len(res.stdout.strip().splitlines()) == 5
    assert (tmp_path / "p.png").is_file()
    res = CliRunner().invoke(app, ["ppc", str(runs / "kidiq"), "--out", str(tmp_path / "p.gif")])
    assert res.exit_code == 2 and ".png" in res.stderr
