"""Property: whatever table and config a user gives `vireg fit`, it either fits (exit 0, or 1 for a
fit that did not converge or failed) or refuses with exit 2 and one line; never a traceback."""

import csv
import os
import string

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from vireg.cli import app  # noqa: E402

GOOD_CELLS = st.one_of(st.floats(-100, 100, width=32).map(repr), st.integers(-3, 3).map(str))
BAD_CELLS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
                      st.sampled_from(["", "NA", "abc", "1e300", " 2 ", "true"]))
GOOD_PRIORS = st.sampled_from(["flat", "normal(0, 1)", "student_t(3, 0, 2)", "cauchy(0, 2.5)",
                               "laplace(0, 1)"])
BAD_PRIORS = st.sampled_from(["normal(0, -1)", "half_normal(2)", "gauss(0,1)", "normal(0,",
                              "exponential(1)"])


def sometimes(draw, good, bad, bad_in_ten=1):
    """Mostly valid input, so that the property covers fits as well as refusals."""
    return draw(bad if draw(st.integers(0, 9)) < bad_in_ten else good)


@st.composite
def projects(draw):
    n_cols = draw(st.integers(1, 4))
    names = draw(st.lists(st.text(string.ascii_lowercase, min_size=1, max_size=4),
                          min_size=n_cols, max_size=n_cols, unique=draw(st.integers(0, 9)) > 0))
    n_rows = draw(st.integers(0, 40))
    family = sometimes(draw, st.sampled_from(["gaussian", "bernoulli", "binomial", "poisson",
                                              "negative_binomial", "student_t"]),
                       st.just("quasipoisson"))
    rows = [[sometimes(draw, GOOD_CELLS, BAD_CELLS, 0 if draw(st.integers(0, 30)) else 5)
             for _ in range(n_cols)] for _ in range(n_rows)]
    response = sometimes(draw, st.sampled_from(names), st.just("missing"))
    if family == "bernoulli" and draw(st.integers(0, 3)) and response in names:
        j = names.index(response)  # mostly a 0/1 response, as a logistic user would give
        for row in rows:
            row[j] = draw(st.sampled_from(["0", "1"]))
    if family in ("binomial", "poisson", "negative_binomial") and draw(st.integers(0, 3)):
        for j in range(n_cols):  # mostly counts (and positive trials or exposures), some bad
            for row in rows:
                row[j] = sometimes(draw, st.integers(0, 9).map(str),
                                   st.sampled_from(["-1", "2.5", "0", "", "1e300"]), 1)
    config = {
        "data": {"path": "t.csv", "response": response},
        "model": {"family": family, "intercept": draw(st.booleans()),
                  "prior": {"coefficients": sometimes(draw, GOOD_PRIORS, BAD_PRIORS),
                            "intercept": sometimes(draw, GOOD_PRIORS, BAD_PRIORS)}},
        "inference": {"max_steps": draw(st.sampled_from([1, 50, 300, 3000])),
                      "family": draw(st.sampled_from(["meanfield", "fullrank"])),
                      "samples": draw(st.integers(1, 4))},
        "output": {"draws": 5, "psis_draws": draw(st.sampled_from([0, 100]))},
    }
    if family == "binomial" or (family in ("poisson", "negative_binomial") and draw(st.booleans())):
        config["data"]["trials" if family == "binomial" else "exposure"] = draw(
            st.sampled_from(names + ["zz"]))
    if family == "bernoulli" and draw(st.booleans()):
        config["model"]["link"] = draw(st.sampled_from(["logit", "probit", "log"]))
    if draw(st.booleans()):
        config["data"]["covariates"] = draw(st.lists(st.sampled_from(names + ["zz"]),
                                                     max_size=3))
    if draw(st.integers(0, 3)) == 0:
        config["data"]["missing"] = "drop"
    if draw(st.integers(0, 3)) == 0:
        config["data"]["standardize"] = True
    if draw(st.integers(0, 3)) == 0:  # a text column: categorical, or an error among numbers
        j = draw(st.integers(0, n_cols - 1))
        for row in rows:
            row[j] = draw(st.sampled_from(["a", "b", "c", "true", "false", ""]))
    if draw(st.integers(0, 3)) == 0:
        config["inference"]["batch_size"] = draw(st.integers(1, 30))
    if draw(st.integers(0, 3)) == 0:
        config["runtime"] = {"out_of_core": True, "cache_dir": "cache",
                             "memory_mb": draw(st.integers(1, 4))}
    if draw(st.integers(0, 9)) == 0:
        config[draw(st.sampled_from(["inference", "model", "output"]))]["tpyo"] = 1
    return names, rows, config


@settings(max_examples=int(os.environ.get("VIREG_PROPERTY_EXAMPLES", 60)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(project=projects())
def test_fit_never_shows_a_traceback(tmp_path_factory, project):
    names, rows, config = project
    folder = tmp_path_factory.mktemp("p")
    with (folder / "t.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        w.writerows(rows)
    (folder / "c.yaml").write_text(yaml.safe_dump(config))
    res = CliRunner().invoke(app, ["fit", str(folder / "c.yaml"), "--quiet", "--out",
                                   str(folder / "out")])
    assert "Traceback" not in res.stderr + res.stdout
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code in (0, 1, 2), res.exit_code
    if res.exit_code == 2:
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
        assert not (folder / "out").exists()
