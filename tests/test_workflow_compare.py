"""Model comparison by PSIS-LOO (vireg.workflow.compare, ``vireg compare``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from typer.testing import CliRunner
from workflow_runs import KIDIQ_MODELS, fit_run, kidiq_config, wells_config

from vireg.cli import app
from vireg.errors import InputError
from vireg.workflow.compare import (
    compare,
    compare_results,
    pseudo_bma_plus_weights,
    stacking_weights,
)
from vireg.workflow.loo import loo_arrays

# Stacking weights against ArviZ's (SLSQP, whose own tolerance is about 1e-6).
WEIGHT_TOL = 1e-4


@pytest.fixture(scope="module")
def kidiq_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("compare")
    for name in KIDIQ_MODELS:
        fit_run(kidiq_config(name), base / name)
    return base


def _three_models(rng, n=80, S=600):
    """Pointwise log-likelihoods of three normal-mean models of the same data: the right one,
    one with a shifted mean, one with a wrong sd."""
    y = rng.standard_normal(n)
    out = []
    for shift, sd in ((0.0, 1.0), (0.4, 1.0), (0.0, 1.6)):
        mu = y.mean() + shift + rng.standard_normal(S) / np.sqrt(n)
        out.append(-0.5 * np.log(2 * np.pi * sd**2) - 0.5 * ((y[None, :] - mu[:, None]) / sd) ** 2)
    return out


def test_stacking_and_differences_match_arviz_compare(rng):
    az = pytest.importorskip("arviz")
    lls = _three_models(rng)
    results = [loo_arrays(ll) for ll in lls]
    for i, r in enumerate(results):
        r.label = f"m{i}"
    ours = {row.run: row for row in compare_results(results)}
    idatas = {f"m{i}": az.from_dict(posterior={"mu": np.zeros((1, ll.shape[0]))},
                                    log_likelihood={"y": ll[None]}) for i, ll in enumerate(lls)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas deprecations inside ArviZ 0.23
        theirs = az.compare(idatas, method="stacking")
    for name, row in theirs.iterrows():
        assert ours[name].rank == row["rank"]
        # loo_compare's sign (ArviZ reports best minus this one)
        assert ours[name].elpd_diff == pytest.approx(-row["elpd_diff"], abs=1e-9)
        assert ours[name].se_diff == pytest.approx(row["dse"], abs=1e-9)
        assert ours[name].weight == pytest.approx(row["weight"], abs=WEIGHT_TOL)


def test_stacking_puts_all_weight_on_a_model_that_dominates(rng):
    elpd = rng.standard_normal((50, 1)) + np.array([[0.0, -5.0]])
    assert stacking_weights(elpd) == pytest.approx([1.0, 0.0], abs=1e-6)


def test_pseudo_bma_plus_weights_are_a_seeded_distribution(rng):
    elpd = rng.standard_normal((100, 3)) * 0.1 + np.array([0.0, -0.01, -0.3])
    w = pseudo_bma_plus_weights(elpd, seed=1)
    assert w.sum() == pytest.approx(1.0) and np.all(w >= 0)
    assert w[0] > w[2] and w[1] > w[2]
    np.testing.assert_array_equal(w, pseudo_bma_plus_weights(elpd, seed=1))


def test_kidiq_models_are_ordered_as_known(kidiq_runs):
    # Exact leave-one-out refits of the four models (bench/loo.py) rank them
    # interaction > momhsiq > momiq > momhs.
    rows, results = compare([kidiq_runs / n for n in KIDIQ_MODELS])
    assert [r.run for r in rows] == ["interaction", "momhsiq", "momiq", "momhs"]
    assert rows[0].elpd_diff == 0.0 and rows[0].se_diff == 0.0
    assert all(r.elpd_diff < 0 for r in rows[1:])
    assert sum(r.weight for r in rows) == pytest.approx(1.0)


def test_compare_refuses_runs_of_different_observations(kidiq_runs, tmp_path):
    fit_run(wells_config(), tmp_path / "wells")
    with pytest.raises(InputError, match="different"):
        compare([kidiq_runs / "momhs", tmp_path / "wells"])


def test_compare_refuses_a_single_run_and_unknown_methods(kidiq_runs):
    with pytest.raises(InputError, match="at least two"):
        compare([kidiq_runs / "momhs"])
    with pytest.raises(InputError, match="stacking"):
        compare([kidiq_runs / "momhs", kidiq_runs / "momiq"], method="bma")


def test_cli_compare_prints_csv_on_stdout_and_the_table_on_stderr(kidiq_runs):
    res = CliRunner().invoke(app, ["compare", str(kidiq_runs / "momhs"),
                                   str(kidiq_runs / "momiq"), "--method", "pseudo-bma+",
                                   "--out", "-"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("run,rank,elpd_loo,se,elpd_diff,se_diff")
    assert [line.split(",")[0] for line in lines[1:]] == ["momiq", "momhs"]
    assert "model comparison" in res.stderr
