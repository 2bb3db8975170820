"""The command line: files, standard output, overrides, and one-line errors on bad input."""

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import write_csv
from typer.testing import CliRunner

from vireg.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def make_project(tmp_path, family="bernoulli", n=120, **model):
    """A config and CSV in tmp_path; returns the config path."""
    import numpy as np

    rng = np.random.default_rng(0)
    x1 = rng.standard_normal(n)
    x2 = rng.standard_normal(n) * 10 + 50
    eta = 0.5 + 1.2 * x1 - 0.05 * (x2 - 50)
    if family == "bernoulli":
        y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int)
    else:
        y = 3 + 2 * eta + rng.standard_normal(n)
    write_csv(tmp_path / "data.csv", {"y": y, "x1": x1, "x2": x2})
    cfg = {"data": {"path": "data.csv", "response": "y", "covariates": ["x1", "x2"]},
           "model": {"family": family, **model},
           "inference": {"seed": 3},
           "output": {"dir": "out", "draws": 50}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_fit_writes_all_result_files(tmp_path):
    config = make_project(tmp_path)
    res = run("fit", config, "--quiet")
    assert res.exit_code == 0, res.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["draws.csv", "elbo.csv", "fit.json",
                                                     "summary.csv"]
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["parameter"] for r in summary] == ["intercept", "x1", "x2"]
    assert list(summary[0]) == ["parameter", "mean", "sd", "q5", "q50", "q95", "khat"]
    draws = list(csv.reader((out / "draws.csv").open()))
    assert draws[0] == ["intercept", "x1", "x2", "log_p__", "log_q__"] and len(draws) == 51
    doc = json.loads((out / "fit.json").read_text())
    assert doc["converged"] is True and doc["steps"] > 0
    assert {"compile_seconds", "fit_seconds", "threads", "versions", "variational",
            "stop_reason", "elbo", "config"} <= set(doc)
    elbo = list(csv.DictReader((out / "elbo.csv").open()))
    assert len(elbo) == doc["steps"]
    assert res.stdout == ""  # nothing but results on stdout, and results went to files


def test_gaussian_summary_ends_with_sigma_on_natural_scale(tmp_path):
    config = make_project(tmp_path, family="linear")
    res = run("fit", config, "--out", "-", "--quiet")
    assert res.exit_code == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["parameter"] for r in rows] == ["intercept", "x1", "x2", "sigma"]
    sigma = rows[-1]
    assert 0.7 < float(sigma["mean"]) < 1.4  # data were simulated with sigma = 1
    assert float(sigma["q5"]) < float(sigma["q50"]) < float(sigma["q95"])


def test_out_dash_prints_csv_and_writes_no_files(tmp_path):
    config = make_project(tmp_path)
    res = run("fit", config, "--out", "-")
    assert res.exit_code == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 3 and all(float(r["sd"]) > 0 for r in rows)
    assert not (tmp_path / "out").exists()


def test_set_overrides_config_values(tmp_path):
    config = make_project(tmp_path)
    res = run("fit", config, "--quiet", "--set", "output.draws=7", "--set", "inference.samples=4")
    assert res.exit_code == 0, res.stderr
    assert len((tmp_path / "out" / "draws.csv").read_text().splitlines()) == 8
    doc = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert doc["config"]["inference"]["samples"] == 4


def test_seed_option_changes_and_reproduces_results(tmp_path):
    config = make_project(tmp_path)
    a = run("fit", config, "--out", "-", "--seed", "1", "--quiet").stdout
    b = run("fit", config, "--out", "-", "--seed", "1", "--quiet").stdout
    c = run("fit", config, "--out", "-", "--seed", "2", "--quiet").stdout
    assert a == b and a != c


def test_out_option_writes_to_the_given_folder(tmp_path):
    config = make_project(tmp_path)
    res = run("fit", config, "--quiet", "--out", tmp_path / "elsewhere")
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "elsewhere" / "summary.csv").exists()


def _corrupt(tmp_path, how):
    """Apply one user mistake to a fresh project; returns the args for `vireg fit`."""
    config = make_project(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    data = tmp_path / "data.csv"
    lines = data.read_text().splitlines()
    if how == "missing config":
        return ["fit", tmp_path / "nope.yaml"]
    if how == "missing data file":
        cfg["data"]["path"] = "nope.csv"
    elif how == "missing column":
        cfg["data"]["covariates"] = ["x1", "x3"]
    elif how == "missing response":
        cfg["data"]["response"] = "z"
    elif how == "non-numeric value":
        lines[5] = "1,abc,3.0"
        data.write_text("\n".join(lines) + "\n")
    elif how == "missing value":
        lines[7] = "1,,3.0"
        data.write_text("\n".join(lines) + "\n")
    elif how == "non-binary response":
        lines[3] = "2," + lines[3].split(",", 1)[1]
        data.write_text("\n".join(lines) + "\n")
    elif how == "unknown config key":
        cfg["inference"]["learning_rat"] = 0.1
    elif how == "unknown section":
        cfg["infrence"] = {}
    elif how == "invalid prior string":
        cfg["model"]["prior"] = {"coefficients": "normal(0, 2.5"}
    elif how == "unknown prior":
        cfg["model"]["prior"] = {"coefficients": "gauss(0, 1)"}
    elif how == "negative prior scale":
        cfg["model"]["prior"] = {"coefficients": "normal(0, -1)"}
    elif how == "wrong type":
        cfg["inference"]["samples"] = "many"
    elif how == "flat phi prior":
        cfg["model"] = {"family": "negative_binomial", "prior": {"phi": "flat"}}
    elif how == "unknown family":
        cfg["model"]["family"] = "quasipoisson"
    elif how == "bad yaml":
        config.write_text("data: [unclosed\nmodel: {}\n")
        return ["fit", config]
    elif how == "bad set":
        return ["fit", config, "--set", "inference.samples"]
    elif how == "too many threads":
        return ["fit", config, "--threads", "9999"]
    elif how == "infinite config number":
        cfg["inference"]["tolerance"] = float("inf")
    elif how == "empty --out":
        return ["fit", config, "--out", ""]
    elif how == "trailing comma in header":
        data.write_text(lines[0] + ",\n" + "\n".join(line + "," for line in lines[1:]) + "\n")
    elif how == "huge value":
        lines[2] = "1,1e300,3.0"
        data.write_text("\n".join(lines) + "\n")
    elif how == "collinear covariates":
        cfg["data"]["covariates"] = ["x1", "x2", "x1b"]
        data.write_text(lines[0] + ",x1b\n" + "\n".join(
            f"{line},{2 * float(line.split(',')[1])}" for line in lines[1:]) + "\n")
    elif how == "tiny prior scale":
        cfg["model"]["prior"] = {"coefficients": "normal(0, 1e-300)"}
    elif how in COUNT_MISTAKES:
        return _count_mistake(tmp_path, cfg, how)
    elif how == "empty data file":
        data.write_text("")
    elif how == "header only":
        data.write_text(lines[0] + "\n")
    config.write_text(yaml.safe_dump(cfg))
    return ["fit", config]


COUNT_MISTAKES = {  # family, data.trials or data.exposure, the rows (y, n or t, x)
    "non-integer count": ("poisson", None, [(1, None, 0.5), (2.5, None, 1.0), (3, None, 2.0)]),
    "negative count": ("negative_binomial", None, [(1, None, 0.5), (-1, None, 1.0)]),
    "successes above trials": ("binomial", "n", [(1, 3, 0.5), (4, 3, 1.0), (0, 2, 2.0)]),
    "zero exposure": ("poisson", "t", [(1, 2.0, 0.5), (2, 0.0, 1.0), (0, 1.0, 2.0)]),
    "negative exposure": ("negative_binomial", "t", [(1, 2.0, 0.5), (2, -1.0, 1.0)]),
    "non-positive trials": ("binomial", "n", [(0, 0, 0.5), (1, 2, 1.0)]),
    "fractional trials": ("binomial", "n", [(1, 2.5, 0.5), (1, 2, 1.0)]),
    "missing trials": ("binomial", "n", [(1, 3, 0.5), (1, None, 1.0), (0, 2, 2.0)]),
    "trials missing from config": ("binomial", "", [(1, 3, 0.5), (1, 2, 1.0)]),
    "all-zero counts": ("poisson", None, [(0, None, 0.5), (0, None, 1.0), (0, None, 2.0)]),
    "binomial always all trials": ("binomial", "n", [(3, 3, 0.5), (2, 2, 1.0), (4, 4, 2.0)]),
    "counts zero on one level": ("poisson", None, [(0, None, 1.0), (0, None, 1.0),
                                                   (3, None, 0.0), (5, None, 0.0)]),
}


def _count_mistake(tmp_path, cfg, how):
    family, column, rows = COUNT_MISTAKES[how]
    name = column or "n"
    lines = [f"y,{name},x"] + [f"{y},{'' if n is None else n},{x}" for y, n, x in rows]
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    cfg["data"] = {"path": "data.csv", "response": "y", "covariates": ["x"]}
    if column:
        cfg["data"]["trials" if family == "binomial" else "exposure"] = column
    cfg["model"] = {"family": family}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return ["fit", config]


BAD_INPUTS = [*COUNT_MISTAKES, "flat phi prior", "missing config", "missing data file",
              "missing column", "missing response", "non-numeric value", "missing value",
              "non-binary response", "unknown config key",
              "unknown section", "invalid prior string", "unknown prior", "negative prior scale",
              "wrong type", "unknown family", "bad yaml", "bad set", "too many threads",
              "empty data file", "header only", "infinite config number", "empty --out",
              "trailing comma in header", "huge value", "collinear covariates", "tiny prior scale"]


@pytest.mark.parametrize("how", BAD_INPUTS)
def test_bad_input_gives_one_line_error_exit_2_and_no_files(tmp_path, how):
    args = _corrupt(tmp_path, how)
    res = run(*args)
    assert res.exit_code == 2, (res.exit_code, res.stderr, res.stdout)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert res.stdout == ""
    assert not (tmp_path / "out").exists()


def test_error_messages_name_the_problem(tmp_path):
    res = run(*_corrupt(tmp_path, "unknown config key"))
    assert "inference.learning_rat" in res.stderr and "learning_rate" in res.stderr
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    res = run(*_corrupt(tmp_path / "a", "non-numeric value"))
    assert "'x1'" in res.stderr and "row 5" in res.stderr
    res = run(*_corrupt(tmp_path / "b", "non-binary response"))
    assert "0 or 1" in res.stderr


def test_failed_rerun_keeps_earlier_results_intact(tmp_path):
    config = make_project(tmp_path)
    assert run("fit", config, "--quiet").exit_code == 0
    before = (tmp_path / "out" / "summary.csv").read_text()
    res = run("fit", config, "--quiet", "--set", "model.prior.coefficients=nope(1)")
    assert res.exit_code == 2
    assert (tmp_path / "out" / "summary.csv").read_text() == before
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_not_converging_within_max_steps_exits_1_and_marks_results(tmp_path):
    config = make_project(tmp_path)
    res = run("fit", config, "--quiet", "--set", "inference.max_steps=60")
    assert res.exit_code == 1
    assert "did not converge" in res.stderr and "max_steps" in res.stderr
    doc = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert doc["converged"] is False and doc["steps"] == 60


def test_version_and_help():
    assert run("--version").stdout.startswith("vireg ")
    res = run("fit", "--help")
    assert res.exit_code == 0 and "--out" in res.stdout


def test_installed_command_runs_as_a_subprocess(tmp_path):
    beside = Path(sys.executable).parent / "vireg"  # the venv's entry point, even if not on PATH
    exe = str(beside) if beside.exists() else shutil.which("vireg")
    assert exe, "the vireg command is not installed"
    cmd = [exe]
    config = make_project(tmp_path)
    proc = subprocess.run(cmd + ["fit", str(config), "--out", "-", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["parameter"] for r in rows] == ["intercept", "x1", "x2"]
    bad = subprocess.run(cmd + ["fit", str(tmp_path / "missing.yaml")], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_help_does_not_import_numba_or_numpy():
    code = ("import sys; from vireg.cli import app; "
            "assert 'numba' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_shipped_configs_fit(tmp_path):
    for name in ("wells", "kidiq"):
        res = run("fit", REPO / "configs" / f"{name}.yaml", "--out", tmp_path / name, "--quiet")
        assert res.exit_code == 0, res.stderr


def test_improper_posteriors_are_refused_before_fitting(tmp_path):
    import numpy as np

    x = np.r_[np.arange(20.0) - 30, np.arange(20.0) + 1]
    cases = {
        "separated": ({"y": (x > 0).astype(int), "x": x}, "logistic", "'x' separates"),
        "exact": ({"y": 3 + 2 * x, "x": x}, "gaussian", "exactly"),
    }
    for name, (columns, family, words) in cases.items():
        write_csv(tmp_path / f"{name}.csv", columns)
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump({"data": {"path": f"{name}.csv", "response": "y"},
                                          "model": {"family": family},
                                          "output": {"dir": f"out_{name}"}}))
        res = run("fit", config, "--quiet")
        assert res.exit_code == 2 and words in res.stderr, res.stderr
        assert not (tmp_path / f"out_{name}").exists()


def test_separated_data_fit_with_a_proper_prior(tmp_path):
    import numpy as np

    x = np.r_[np.arange(20.0) - 30, np.arange(20.0) + 1]
    write_csv(tmp_path / "sep.csv", {"y": (x > 0).astype(int), "x": x})
    config = tmp_path / "sep.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"path": "sep.csv", "response": "y"},
        "model": {"family": "logistic", "prior": {"coefficients": "normal(0, 2.5)"}}}))
    res = run("fit", config, "--quiet", "--out", "-")
    assert res.exit_code == 0, res.stderr


def test_divergence_to_nan_stops_with_a_message_and_writes_nothing(tmp_path, monkeypatch):
    """A log joint that turns non-finite is undone, the step size shrinks, and repeated failure
    ends the fit with exit code 1, a one-line message and no files."""
    from vireg.models.model import Model

    config = make_project(tmp_path)
    real = Model.log_joint_grad

    def poisoned(self, U):
        logp, g = real(self, U)
        return logp * np.nan, g

    import numpy as np

    monkeypatch.setattr(Model, "log_joint_grad", poisoned)
    res = run("fit", config, "--quiet")
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "non-finite" in lines[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_parquet_input_fits_and_reports_bad_cells(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import numpy as np
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    x = rng.standard_normal(300)
    y = (rng.random(300) < 1 / (1 + np.exp(-x))).astype(np.int64)
    pq.write_table(pa.table({"y": y, "x": x, "g": ["a"] * 300}), tmp_path / "t.parquet")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"path": "t.parquet", "response": "y",
                                               "covariates": ["x"]},
                                      "model": {"family": "logistic"}}))
    res = run("fit", config, "--quiet", "--out", "-")
    assert res.exit_code == 0, res.stderr
    assert [r["parameter"] for r in csv.DictReader(io.StringIO(res.stdout))] == ["intercept", "x"]
    res = run("fit", config, "--quiet", "--out", "-", "--set", "data.covariates=[x, g]")
    assert res.exit_code == 2 and "'g'" in res.stderr and res.stderr.count("\n") == 1


def test_check_prints_the_resolved_config_columns_and_priors_without_fitting(tmp_path):
    config = make_project(tmp_path, family="linear")
    res = run("check", config)
    assert res.exit_code == 0, res.stderr
    resolved = yaml.safe_load(res.stdout.split("\n", 1)[1].split("\n120 rows")[0])
    # inference.family auto, settled for 4 parameters: full-rank with its estimator, stl
    assert resolved["inference"]["family"] == "fullrank"
    assert resolved["inference"]["estimator"] == "stl"
    for word in ("x1", "x2", "response", "sigma", "flat", "no problems found"):
        assert word in res.stdout
    assert not (tmp_path / "out").exists()
    bad = run("check", config, "--set", "data.covariates=[x1, x1b]")
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "x1b" in bad.stderr


@pytest.mark.parametrize(("family", "guessed"), [("bernoulli", "bernoulli"), ("linear", "gaussian")])
def test_init_writes_a_starter_config_that_checks(tmp_path, family, guessed):
    make_project(tmp_path, family=family)
    out = tmp_path / "sub" / "start.yaml"
    res = run("init", "--data", tmp_path / "data.csv", "--out", out)
    assert res.exit_code == 0, res.stderr
    cfg = yaml.safe_load(out.read_text())
    assert cfg["model"]["family"] == guessed
    assert cfg["data"]["response"] == "y" and cfg["data"]["covariates"] == ["x1", "x2"]
    assert run("check", out).exit_code == 0
    again = run("init", "--data", tmp_path / "data.csv", "--out", out)
    assert again.exit_code == 2 and "--force" in again.stderr


def test_missing_values_error_by_default_and_drop_says_how_many(tmp_path):
    config = make_project(tmp_path)
    data = tmp_path / "data.csv"
    lines = data.read_text().splitlines()
    lines[3] = "1,,3.0"
    lines[9] = "NA,0.5,3.0"
    data.write_text("\n".join(lines) + "\n")
    res = run("fit", config, "--quiet")
    assert res.exit_code == 2 and "data.missing: drop" in res.stderr
    res = run("fit", config, "--set", "data.missing=drop")
    assert res.exit_code == 0, res.stderr
    assert "left out 2 row(s)" in res.stderr
    doc = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert doc["dropped_rows"] == 2 and doc["n_rows"] == 118


def test_data_from_standard_input(tmp_path):
    config = make_project(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["path"] = "-"
    config.write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["fit", str(config), "--quiet", "--out", "-"],
                        input=(tmp_path / "data.csv").read_text())
    assert res.exit_code == 0, res.stderr
    assert len(list(csv.DictReader(io.StringIO(res.stdout)))) == 3


def test_interrupt_leaves_earlier_results_intact_and_says_where_it_stopped(tmp_path):
    import signal
    import time

    config = make_project(tmp_path, n=60000)
    assert run("fit", config, "--quiet").exit_code == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    beside = Path(sys.executable).parent / "vireg"
    cmd = [str(beside)] if beside.exists() else [sys.executable, "-m", "vireg"]
    # A tolerance no fit can meet keeps it running until interrupted.
    proc = subprocess.Popen(cmd + ["fit", str(config), "--set", "inference.tolerance=1e-12",
                                   "--set", "inference.max_steps=10000000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    assert proc.poll() is None, "the fit ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "Traceback" not in err
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert after == before


def test_the_diagnostic_draws_report_progress_between_the_fit_and_the_result(tmp_path):
    """After the optimisation the ELBO and k-hat draws (a pass over all rows per 64 draws) send
    progress events, so a long diagnostic phase on big data is neither silent nor uninterruptible."""
    from vireg import api
    from vireg.engine import Progress
    from vireg.models.model import DRAWS_PER_PASS

    config = make_project(tmp_path)
    kinds, draws = [], []
    for event in api.iter_fit(config, ["output.psis_draws=300", "output.draws=100"]):
        kinds.append(type(event).__name__)
        if isinstance(event, api.Diagnosing):
            draws.append((event.done, event.total))
    assert kinds[:3] == ["Preparing", "Preparing", "Started"] and kinds[-1] == "Finished"
    assert Progress.__name__ in kinds
    first = kinds.index("Diagnosing")
    assert set(kinds[first:-1]) == {"Diagnosing"}  # after the last step, before the result
    assert [d for d, _ in draws] == sorted(d for d, _ in draws) and draws[-1] == (300, 300)
    assert len(draws) == -(-300 // DRAWS_PER_PASS)
    res = run("fit", config, "--out", str(tmp_path / "out"))  # the bars render without error
    assert res.exit_code == 0, res.stderr
