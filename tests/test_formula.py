"""Wilkinson formulas (data.formula) through formulaic: design columns, saved state, errors."""

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest

import vireg
from vireg.data import Table, read_table
from vireg.errors import InputError

pytest.importorskip("formulaic")

from vireg.formula import NEEDS_FORMULAIC, design_from_formula, formula_columns  # noqa: E402

Y = [1.5, 2.0, 0.5, 3.0, 4.5, 2.5, 1.0]
X1 = [1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 6.0]
X2 = [0.5, 1.0, 1.5, 2.0, 3.0, 1.0, 0.25]
G = ["b", "a", "c", "a", "b", "c", "c"]


def make_table(**columns) -> Table:
    """Numbers as float64 arrays and text as lists of cells, as vireg.data.read_table gives them."""
    cols = {k: (v if isinstance(v[0], str) else np.array(v, dtype=np.float64)) for k, v in columns.items()}
    return Table(columns=cols, n_rows=len(next(iter(columns.values()))), source="test.csv")


@pytest.fixture
def table():
    return make_table(y=Y, x1=X1, x2=X2, g=G)


def rows_of(table: Table, rows: list[int], drop: str = "y") -> Table:
    """New data: the given rows of ``table``, without the response column."""
    cols = {k: [v[i] for i in rows] for k, v in table.columns.items() if k != drop}
    return make_table(**cols)


def test_numeric_categorical_and_interaction_columns(table):
    design, intercept = design_from_formula(table, "y ~ x1 + x2 + C(g) + x1:x2")
    x1, x2, g = np.array(X1), np.array(X2), np.array(G)
    expected = np.column_stack([x1, x2, g == "b", g == "c", x1 * x2]).astype(np.float64)
    assert intercept is True
    assert design.response == "y"
    assert design.covariates == ["x1", "x2", "C(g)[T.b]", "C(g)[T.c]", "x1:x2"]
    assert design.sources == ["x1", "x2", "g", "g", "x1:x2"]
    np.testing.assert_array_equal(design.y, np.array(Y))
    np.testing.assert_array_equal(design.X, expected)
    assert design.X.dtype == np.float64 and design.X.flags.c_contiguous


def test_text_csv_columns_are_categorical_with_sorted_levels(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("y,x1,g\n1,2,red\n2,3,blue\n3,1,green\n4,5,red\n")
    design, _ = design_from_formula(read_table(path), "y ~ x1 + g")
    assert design.covariates == ["x1", "g[T.green]", "g[T.red]"]  # blue, first in order, is the reference
    np.testing.assert_array_equal(design.X, [[2, 0, 1], [3, 0, 0], [1, 1, 0], [5, 0, 1]])


@pytest.mark.parametrize("formula", ["y ~ x1 - 1", "y ~ 0 + x1"])
def test_minus_one_removes_the_intercept(table, formula):
    design, intercept = design_from_formula(table, formula)
    assert intercept is False
    assert design.covariates == ["x1"]
    np.testing.assert_array_equal(design.X[:, 0], X1)


def test_intercept_column_is_never_in_x(table):
    design, intercept = design_from_formula(table, "y ~ 1 + x1")
    assert intercept is True
    assert "Intercept" not in design.covariates and design.X.shape == (len(Y), 1)


def test_without_intercept_a_categorical_gets_every_level(table):
    design, intercept = design_from_formula(table, "y ~ 0 + C(g)")
    assert intercept is False
    assert design.covariates == ["C(g)[a]", "C(g)[b]", "C(g)[c]"]


FORMULA = "y ~ center(x1) + poly(x2, 2) + C(g) + x1:x2"


def test_state_survives_json_and_rebuilds_the_training_rows(table):
    design, _ = design_from_formula(table, FORMULA)
    state = json.loads(json.dumps(design.formula, allow_nan=False))
    assert state == design.formula
    np.testing.assert_array_equal(formula_columns(state, table), design.X)


def test_new_rows_get_the_same_columns_even_with_levels_absent(table):
    design, _ = design_from_formula(table, FORMULA)
    state = json.loads(json.dumps(design.formula))
    rows = [5, 0, 2]  # levels c, b, c: no row of level a
    np.testing.assert_array_equal(formula_columns(state, rows_of(table, rows)), design.X[rows])


def test_center_uses_the_training_mean_on_new_data(table):
    design, _ = design_from_formula(table, "y ~ center(x1)")
    new = make_table(x1=[10.0, 20.0])
    X = formula_columns(json.loads(json.dumps(design.formula)), new)
    np.testing.assert_allclose(X[:, 0], np.array([10.0, 20.0]) - np.mean(X1), rtol=1e-15)


def test_unseen_level_is_a_one_line_error(table):
    design, _ = design_from_formula(table, "y ~ x1 + C(g)")
    new = make_table(x1=[1.0, 2.0], g=["a", "z"])
    with pytest.raises(InputError, match="column 'g' has level 'z' not seen in the fit"):
        formula_columns(design.formula, new)


def test_missing_value_in_new_data_names_the_column(table):
    design, _ = design_from_formula(table, "y ~ x1 + C(g)")
    with pytest.raises(InputError, match="column 'x1' has 1 missing value"):
        formula_columns(design.formula, make_table(x1=["1", "NA"], g=["a", "b"]))
    with pytest.raises(InputError, match="column 'g' of the fit is missing"):
        formula_columns(design.formula, make_table(x1=[1.0, 2.0]))


def test_unknown_variable_suggests_the_nearest_column(table):
    with pytest.raises(InputError, match=r"'x22', which is not a column.*did you mean 'x2'\? "
                                         r"columns are y, x1, x2, g"):
        design_from_formula(table, "y ~ x1 + center(x22)")


@pytest.mark.parametrize(("formula", "message"), [
    ("y ~ x1 +", "is not a valid formula: Operator `+`"),
    ("y ~ (x1", "is not a valid formula"),
    ("y x1", "has no '~'"),
    ("~ x1", "has no response left of '~'"),
    ("y ~ ", "has no terms right of '~'"),
    ("y ~ 0", "has no terms right of '~'"),
    ("y + x2 ~ x1", "has 2 response columns"),
    ("y ~ x1 | x2", "has several parts"),
    ("y ~ foo(x1)", "calls 'foo'"),
    ("y ~ log(x1 - 3)", "term 'log(x1 - 3)' is not a number"),
    ("y ~ x1 + y", "uses the response 'y' right of '~' too"),
])
def test_bad_formula_is_a_one_line_input_error(table, formula, message):
    with pytest.raises(InputError) as info:
        design_from_formula(table, formula)
    text = str(info.value)
    assert message in text
    assert "\n" not in text and "\x1b" not in text


def test_missing_values_are_an_error_or_dropped_and_counted():
    table = make_table(y=Y, x1=["1", "2", "NA", "4", "5", "7", "6"], g=["b", "a", "c", "", "b", "c", "c"])
    with pytest.raises(InputError, match="column 'g' has 1 missing value.*data.missing: drop"):
        design_from_formula(table, "y ~ x1 + g")
    design, _ = design_from_formula(table, "y ~ x1 + g", missing="drop")
    assert design.dropped_rows == 2
    np.testing.assert_array_equal(design.y, [Y[i] for i in (0, 1, 4, 5, 6)])
    np.testing.assert_array_equal(design.X[:, 0], [1, 2, 5, 7, 6])


def test_non_numeric_response_is_an_error(table):
    with pytest.raises(InputError, match="the response 'g' of data.formula is text"):
        design_from_formula(table, "g ~ x1")


def test_without_formulaic_the_error_says_how_to_install(table, monkeypatch):
    monkeypatch.setitem(sys.modules, "formulaic", None)  # makes `import formulaic` fail
    with pytest.raises(InputError) as info:
        design_from_formula(table, "y ~ x1")
    assert str(info.value) == NEEDS_FORMULAIC


def test_importing_the_module_does_not_import_formulaic():
    code = "import sys, vireg.formula; print('formulaic' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_formula_config_fits_and_predict_reapplies_it(tmp_path):
    """End to end: data.formula in a config, the fit, and vireg predict on new rows."""
    import yaml
    from typer.testing import CliRunner

    from vireg.cli import app

    rng = np.random.default_rng(4)
    n = 400
    x1 = rng.standard_normal(n)
    g = rng.choice(["a", "b", "c"], n)
    eta = 0.3 + 0.9 * x1 + np.select([g == "b", g == "c"], [0.5, -0.7], 0.0) + 0.4 * x1 * (g == "b")
    y = 1.0 + eta + 0.5 * rng.standard_normal(n)
    lines = ["y,x1,g"] + [f"{a},{b},{c}" for a, b, c in zip(y, x1, g, strict=True)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "new.csv").write_text("x1,g\n0.5,a\n-1.0,c\n")
    cfg = {"data": {"path": "d.csv", "formula": "y ~ center(x1) * C(g)"},
           "model": {"family": "gaussian"}, "output": {"dir": "out", "draws": 200}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    res = runner.invoke(app, ["fit", str(tmp_path / "c.yaml"), "--quiet"])
    assert res.exit_code == 0, res.output
    r = vireg.fit(tmp_path / "c.yaml")
    names = r.param_names
    assert names[0] == "intercept" and "center(x1):C(g)[T.b]" in names and names[-1] == "sigma"
    est = dict(zip(names, r.summary.mean, strict=True))
    assert abs(est["C(g)[T.c]"] - (-0.7)) < 0.2 and abs(est["center(x1):C(g)[T.b]"] - 0.4) < 0.2
    res = runner.invoke(app, ["predict", str(tmp_path / "out"), str(tmp_path / "new.csv"),
                              "--out", "-"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    x1c = 0.5 - x1.mean()  # center() uses the training mean
    want = est["intercept"] + est["center(x1)"] * x1c
    assert abs(float(rows[0]["eta_mean"]) - want) < 0.05
    (tmp_path / "bad.csv").write_text("x1,g\n0.5,z\n")
    res = runner.invoke(app, ["predict", str(tmp_path / "out"), str(tmp_path / "bad.csv")])
    assert res.exit_code == 2 and "'z'" in res.stderr and res.stderr.count("\n") == 1
