"""`vireg predict`: the posterior predictive for new rows, encoded as in the fit."""

import csv
import io

import numpy as np
from conftest import write_csv
from test_categorical import categorical_data
from test_cli import make_project, run


def predictions(res):
    assert res.exit_code == 0, res.stderr
    return list(csv.DictReader(io.StringIO(res.stdout)))


def test_linear_predictions_match_the_posterior_and_include_the_noise(tmp_path):
    config = make_project(tmp_path, family="linear")
    assert run("fit", config, "--quiet", "--set", "inference.family=fullrank").exit_code == 0
    new = write_csv(tmp_path / "new.csv", {"x1": [0.0, 1.0], "x2": [50.0, 60.0]})
    rows = predictions(run("predict", tmp_path / "out", new, "--draws", "4000"))
    summary = {r["parameter"]: r for r in csv.DictReader((tmp_path / "out" / "summary.csv").open())}
    mean = [float(summary["intercept"]["mean"]) + x1 * float(summary["x1"]["mean"])
            + x2 * float(summary["x2"]["mean"]) for x1, x2 in [(0.0, 50.0), (1.0, 60.0)]]
    for r, m in zip(rows, mean, strict=True):
        assert abs(float(r["eta_mean"]) - m) < 4 * float(r["eta_sd"]) / np.sqrt(4000) + 1e-9
        # the response includes sigma's noise, the linear predictor does not
        assert float(r["sd"]) > float(r["eta_sd"])
        assert float(r["q5"]) < float(r["q50"]) < float(r["q95"])


def test_logistic_predictions_are_probabilities_with_known_levels_only(tmp_path, rng):
    import yaml

    path = categorical_data(tmp_path, rng)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"path": str(path), "response": "y"},
                                      "model": {"family": "logistic"},
                                      "output": {"dir": str(tmp_path / "run")}}))
    assert run("fit", config, "--quiet").exit_code == 0
    new = write_csv(tmp_path / "new.csv", {"x": [0.1, -2.0], "color": ["red", "blue"],
                                           "flag": ["True", "False"]})
    rows = predictions(run("predict", tmp_path / "run", new))
    assert all(0 < float(r["mean"]) < 1 for r in rows)
    assert float(rows[0]["mean"]) > float(rows[1]["mean"])  # red, flag and larger x raise it
    bad = write_csv(tmp_path / "bad.csv", {"x": [0.1], "color": ["purple"], "flag": ["True"]})
    res = run("predict", tmp_path / "run", bad)
    assert res.exit_code == 2 and "'purple'" in res.stderr and res.stderr.count("\n") == 1
    missing = write_csv(tmp_path / "missing.csv", {"x": [0.1], "flag": ["True"]})
    res = run("predict", tmp_path / "run", missing)
    assert res.exit_code == 2 and "'color'" in res.stderr


def test_predict_writes_a_file(tmp_path):
    config = make_project(tmp_path)
    assert run("fit", config, "--quiet").exit_code == 0
    new = write_csv(tmp_path / "new.csv", {"x1": [0.0], "x2": [50.0], "extra": ["ignored"]})
    res = run("predict", tmp_path / "out", new, "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "p.csv").read_text().startswith("row,eta_mean")


def test_standardize_reports_both_scales_and_predicts_alike(tmp_path):
    """With flat priors, z-scoring the covariates only re-expresses the same posterior: the
    original-scale summary and the predictions equal those of the plain fit."""
    config = make_project(tmp_path, family="linear")
    common = ["--quiet", "--set", "inference.family=fullrank"]
    assert run("fit", config, *common, "--out", tmp_path / "plain").exit_code == 0
    assert run("fit", config, *common, "--set", "data.standardize=true",
               "--out", tmp_path / "std").exit_code == 0

    def table(path):
        return {r["parameter"]: r for r in csv.DictReader(path.open())}

    plain, z, original = (table(tmp_path / "plain" / "summary.csv"),
                          table(tmp_path / "std" / "summary.csv"),
                          table(tmp_path / "std" / "summary_original.csv"))
    for name in plain:
        for col in ("mean", "sd", "q5", "q95"):
            assert abs(float(original[name][col]) - float(plain[name][col])) < 1e-6 * (
                1 + abs(float(plain[name][col])))
    x2_sd = np.std([float(r["x2"]) for r in csv.DictReader((tmp_path / "data.csv").open())])
    assert abs(float(z["x2"]["mean"]) - float(plain["x2"]["mean"]) * x2_sd) < 1e-6
    new = write_csv(tmp_path / "new.csv", {"x1": [0.3], "x2": [55.0]})
    a = predictions(run("predict", tmp_path / "plain", new))
    b = predictions(run("predict", tmp_path / "std", new))
    assert abs(float(a[0]["eta_mean"]) - float(b[0]["eta_mean"])) < 1e-6
