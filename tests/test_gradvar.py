"""`vireg gradvar`: the reparameterization gradient's variance against the score function's."""

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vireg.api as api
from vireg.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
# Measured at the start of a fit with 1000 draws: 110x (kidiq) and 269x (wells) for mean-field.
SCORE_OVER_REPARAM_AT_INIT = 20.0


@pytest.mark.parametrize("name", ["kidiq", "wells"])
@pytest.mark.parametrize("family", ["meanfield", "fullrank"])
def test_reparam_variance_is_far_below_score_variance_on_shipped_examples(name, family):
    study = api.gradvar(REPO / "configs" / f"{name}.yaml", at="zero", draws=1000,
                        overrides=[f"inference.family={family}"])
    ratios = {e: r["ratio_to_reparam"] for e, r in study["estimators"].items()}
    assert ratios["score"] > SCORE_OVER_REPARAM_AT_INIT, ratios
    for r in study["estimators"].values():  # every estimator is unbiased
        assert r["sq_bias"] < 5 * r["sq_bias_noise"]


def test_gradvar_writes_csv_and_json(tmp_path):
    res = runner.invoke(app, ["gradvar", str(REPO / "configs" / "kidiq.yaml"), "--draws", "200",
                              "--out", str(tmp_path / "gv")])
    assert res.exit_code == 0, res.stderr
    rows = list(csv.DictReader((tmp_path / "gv" / "gradvar.csv").open()))
    assert list(rows[0]) == ["parameter", "reparam", "stl", "score"]
    assert rows[0]["parameter"] == "m[intercept]" and len(rows) == 8
    doc = json.loads((tmp_path / "gv" / "gradvar.json").read_text())
    assert doc["estimators"]["reparam"]["ratio_to_reparam"] == 1.0


def test_gradvar_at_an_earlier_run_and_to_stdout(tmp_path):
    assert runner.invoke(app, ["fit", str(REPO / "configs" / "kidiq.yaml"), "--quiet",
                               "--out", str(tmp_path / "run")]).exit_code == 0
    res = runner.invoke(app, ["gradvar", str(REPO / "configs" / "kidiq.yaml"), "--at",
                              str(tmp_path / "run"), "--draws", "200", "--out", "-"])
    assert res.exit_code == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 8 and all(float(r["reparam"]) >= 0 for r in rows)


def test_gradvar_fits_report_every_estimator():
    study = api.gradvar(REPO / "configs" / "kidiq.yaml", draws=100, fits=True, fit_steps=300)
    assert [f["estimator"] for f in study["fits"]] == ["reparam", "stl", "score"]
    assert all(f["steps"] == 300 or f["converged"] for f in study["fits"])


def test_gradvar_bad_at_is_a_one_line_error(tmp_path):
    res = runner.invoke(app, ["gradvar", str(REPO / "configs" / "kidiq.yaml"), "--at",
                              str(tmp_path / "nothing")])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1


def test_plot_draws_a_run_with_its_gradient_variance(tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    assert runner.invoke(app, ["fit", str(REPO / "configs" / "kidiq.yaml"), "--quiet",
                               "--out", str(run)]).exit_code == 0
    assert runner.invoke(app, ["gradvar", str(REPO / "configs" / "kidiq.yaml"), "--draws", "100",
                               "--out", str(run)]).exit_code == 0
    res = runner.invoke(app, ["plot", str(run), "--out", str(tmp_path / "p.svg")])
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "p.svg").read_text().lstrip().startswith("<?xml")
    bad = runner.invoke(app, ["plot", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1
