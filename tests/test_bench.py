"""`vireg bench` measures in one run and reports the fields other tools read."""

import json

from typer.testing import CliRunner

from vireg.cli import app

KEYS = {"ms_per_step", "numpy_ms_per_step", "speedup_vs_numpy", "bandwidth_gb_s",
        "roofline_ms_per_step", "efficiency", "compile_s", "threads",
        "compute_roofline_ms_per_step", "compute_efficiency", "bound"}


def test_bench_json_reports_every_measure_and_the_kernel_agrees_with_numpy():
    for model, family in [("logistic", "meanfield"), ("linear", "fullrank"),
                          ("binomial", "fullrank"), ("negative_binomial", "meanfield")]:
        res = CliRunner().invoke(app, ["bench", "--model", model, "--family", family, "--n", "3000",
                                       "--d", "5", "--steps", "3", "--json"])
        assert res.exit_code == 0, res.stderr
        out = json.loads(res.stdout)
        assert set(out) >= KEYS
        assert out["kernel_matches_numpy"] is True
        assert out["ms_per_step"] > 0 and out["bandwidth_gb_s"] > 0
        assert out["bound"] in ("memory", "compute") and out["compute_efficiency"] > 0


def test_bench_rejects_bad_options_in_one_line():
    res = CliRunner().invoke(app, ["bench", "--model", "quasipoisson"])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1


def test_bench_times_every_likelihood():
    for model in ("poisson", "student_t", "probit"):
        res = CliRunner().invoke(app, ["bench", "--model", model, "--n", "2000", "--d", "4",
                                       "--steps", "2", "--json"])
        assert res.exit_code == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["ms_per_step"] > 0
        # NumPy states the poisson step; it has no normal cdf (probit) nor, here, Student-t
        assert (out["kernel_matches_numpy"] is True) == (model == "poisson")
