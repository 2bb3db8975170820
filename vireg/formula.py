"""Wilkinson formulas (``data.formula: "y ~ x1 + C(g) + x1:x2"``) through formulaic, an optional extra.

The fit keeps, as plain JSON data, what formulaic needs to build the same columns for new rows: the
formula text, the state of stateful transforms (``center``, ``scale``, ``poly``, splines) and the
categorical levels. formulaic and pandas are imported inside the functions: ``import vireg.formula``
costs nothing, ``import formulaic`` (with pandas) about 0.5 s.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import re
import warnings

import numpy as np

from vireg.data import (
    MAX_ABS_VALUE,
    Design,
    Table,
    _missing_mask,
    categorical_levels,
    drop_missing,
    numeric_column,
)
from vireg.errors import InputError

NEEDS_FORMULAIC = ("data.formula needs formulaic: pip install 'vireg[formula]' (or list data.response "
                   "and data.covariates instead)")
EXAMPLE = "'y ~ x1 + x2 + C(g) + x1:x2'"
# Tags of the JSON form of transform and encoder state (see _to_json).
_ARRAY, _ITEMS, _TUPLE = "__ndarray__", "__items__", "__tuple__"


_TRIALS_RE = re.compile(r"^\s*p\(\s*([A-Za-z_.][\w.]*)\s*,\s*([A-Za-z_.][\w.]*)\s*\)\s*~")
_OFFSET_RE = re.compile(r"\+?\s*offset\(\s*log\(\s*([A-Za-z_.][\w.]*)\s*\)\s*\)\s*\+?")


def row_data_terms(formula: str) -> tuple[str, str | None, str | None]:
    """(the formula without them, trials column, exposure column) of a formula whose response is
    written ``p(successes, trials)`` (binomial) or with an ``offset(log(exposure))`` term."""
    trials = exposure = None
    m = _TRIALS_RE.match(formula)
    if m:
        trials = m.group(2)
        formula = f"{m.group(1)} ~" + formula[m.end():]
    offsets = _OFFSET_RE.findall(formula)
    if len(offsets) > 1:
        raise InputError(f"data.formula '{formula}' has {len(offsets)} offset terms: give one, "
                         "offset(log(exposure))")
    if offsets:
        exposure = offsets[0]
        formula = _OFFSET_RE.sub(lambda t: "+" if t.group(0).strip().startswith("+")
                                 and t.group(0).strip().endswith("+") else "", formula, count=1)
        if formula.rstrip().endswith("~"):
            formula += " 1"
    if "offset(" in formula:
        raise InputError(f"data.formula '{formula}': an offset is written offset(log(COLUMN)), "
                         "the log of an exposure column")
    return formula, trials, exposure


def design_from_formula(table: Table, formula: str, missing: str = "error") -> tuple[Design, bool]:
    """The design of ``formula`` on ``table`` (X without formulaic's Intercept column), and whether
    the formula has an intercept (``y ~ x - 1`` and ``y ~ 0 + x`` have none). The binomial
    trials of ``p(y, n) ~ ...`` and the exposure of ``offset(log(t))`` become the design's row
    data (``row_data_terms``)."""
    formulaic, pandas = _import()
    text, trials, exposure = row_data_terms(formula)
    row_col = trials or exposure
    if row_col is not None and row_col not in table.columns:
        key = "the trials of p(y, n)" if trials else "the offset's exposure"
        raise InputError(f"data.formula '{formula}': {key} '{row_col}' is not a column of "
                         f"'{table.source}': columns are {', '.join(table.columns)}")
    formula = text
    parsed = _parse(formulaic, formula)
    response_vars = _variables(parsed.lhs, table, formula)
    covariate_vars = _variables(parsed.rhs, table, formula)
    for v in response_vars:
        if v in covariate_vars:
            raise InputError(f"data.formula '{formula}' uses the response '{v}' right of '~' too: "
                             "remove it there")
    used = list(dict.fromkeys(response_vars + covariate_vars + ([row_col] if row_col else [])))
    dropped = 0
    if missing == "drop":
        table, dropped = drop_missing(table, used)
    levels = _text_levels(table, used)
    for v in response_vars:
        if v in levels:
            raise InputError(f"the response '{v}' of data.formula is text ({', '.join(levels[v][:5])}), "
                             "not numbers: recode it as numbers (0/1 for a bernoulli model)")
    for v in levels:
        _refuse_missing(table, v, "remove or impute them, or set data.missing: drop")
    frame = _frame(pandas, table, used, levels)

    def spec_for(side):
        return formulaic.ModelSpec(formula=side, na_action="raise", output="numpy")

    lhs = _materialize(spec_for(parsed.lhs), frame, f"data.formula '{formula}'")
    if lhs.shape[1] != 1:
        names = ", ".join(lhs.model_spec.column_names)
        raise InputError(f"data.formula '{formula}' has {lhs.shape[1]} response columns left of '~' "
                         f"({names}): give one numeric response")
    rhs = _materialize(spec_for(parsed.rhs), frame, f"data.formula '{formula}'")
    spec = rhs.model_spec
    intercept = spec.term_indices.get("1", [])  # terms hash by their text; "1" is the intercept
    keep = [j for j in range(rhs.shape[1]) if j not in intercept]
    columns = [spec.column_names[j] for j in keep]
    if not columns and not intercept:
        raise InputError(f"data.formula '{formula}' has no terms right of '~': add covariates, "
                         f"e.g. {EXAMPLE}")
    y = np.ascontiguousarray(np.asarray(lhs)[:, 0], dtype=np.float64)
    X = np.ascontiguousarray(np.asarray(rhs)[:, keep], dtype=np.float64)
    rows = "data row" if not dropped else "row (after dropping missing values)"
    _check_finite(y[:, None], [lhs.model_spec.column_names[0]], rows, "remove or fix that row")
    _check_finite(X, columns, rows, "change the term or the data")
    state = {
        "text": formula,
        "trials": trials,
        "exposure": exposure,
        "intercept": bool(intercept),
        "columns": columns,
        "variables": {v: ({"kind": "text", "levels": levels[v]} if v in levels else {"kind": "numeric"})
                      for v in covariate_vars},
        "formulaic": formulaic.__version__,
        **_save_state(spec, formula),
    }
    design = Design(y=y, X=X, response=lhs.model_spec.column_names[0], covariates=columns,
                    dropped_rows=dropped, sources=_sources(spec, keep, table), encodings={},
                    formula=state, row_data=numeric_column(table, row_col) if row_col else None,
                    row_data_name=row_col)
    return design, bool(intercept)


def formula_columns(state: dict, table: Table) -> np.ndarray:
    """The design matrix of new rows (no intercept column) from the ``formula`` dict of a fit: the
    same columns in the same order, with the fit's transform state and categorical levels."""
    formulaic, pandas = _import()
    variables = state["variables"]
    absent = [v for v in variables if v not in table.columns]
    if absent:
        raise InputError(f"column '{absent[0]}' of the fit is missing from '{table.source}': new data "
                         f"need the columns {', '.join(variables)}")
    levels = {}
    for v, info in variables.items():
        _refuse_missing(table, v, "predictions need every value of the columns the formula uses")
        if info["kind"] == "text":
            levels[v] = info["levels"]
            unseen = sorted(set(_cells(table, v)) - set(levels[v]))
            if unseen:
                raise InputError(f"column '{v}' has level '{unseen[0]}' not seen in the fit: the fit "
                                 f"knows {', '.join(levels[v])}; predictions need known levels")
    frame = _frame(pandas, table, list(variables), levels)
    spec = formulaic.ModelSpec(formula=_parse(formulaic, state["text"]).rhs, na_action="raise",
                               output="numpy", **_load_state(formulaic, state))
    matrix = _materialize(spec, frame, f"the fit's formula '{state['text']}' on '{table.source}'")
    names = list(matrix.model_spec.column_names)
    keep = [j for j in range(len(names)) if j not in matrix.model_spec.term_indices.get("1", [])]
    if [names[j] for j in keep] != state["columns"]:  # cannot happen with the fit's formulaic
        raise InputError(f"the fit's formula '{state['text']}' gives other columns on "
                         f"'{table.source}' ({', '.join(names)}): refit with this formulaic version")
    X = np.ascontiguousarray(np.asarray(matrix)[:, keep], dtype=np.float64)
    _check_finite(X, state["columns"], "data row", "change that row")
    return X


def _import():
    try:
        import formulaic
        import formulaic.parser.types  # noqa: F401  (Factor, for the encoder state)
        import pandas
    except ImportError:
        raise InputError(NEEDS_FORMULAIC) from None
    return formulaic, pandas


def _one_line(exc: Exception) -> str:
    """formulaic's message on one line, without its terminal colours; a syntax error's marked
    place is quoted."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(exc).__name__]
    marked = re.search("⧛(.*?)⧚", text)
    if marked:
        return f"{lines[0].rstrip('.')} (at '{marked.group(1)}')"
    return " ".join(lines).rstrip(".")


def _parse(formulaic, formula: str):
    """The parsed formula, with its ``lhs`` and ``rhs``."""
    if not isinstance(formula, str):
        raise InputError(f"data.formula must be text such as {EXAMPLE}, not {type(formula).__name__}")
    if "~" not in formula:
        raise InputError(f"data.formula '{formula}' has no '~': write the response left of it and "
                         f"the covariates right of it, e.g. {EXAMPLE}")
    left, _, right = formula.partition("~")
    if not left.strip():
        raise InputError(f"data.formula '{formula}' has no response left of '~': e.g. {EXAMPLE}")
    if not right.strip():
        raise InputError(f"data.formula '{formula}' has no terms right of '~': e.g. {EXAMPLE}")
    try:
        parsed = formulaic.Formula(formula)
        sides = parsed.lhs, parsed.rhs
    except Exception as exc:  # formulaic raises many types for bad formulas
        if "`.` operator" in str(exc):
            raise InputError(f"data.formula '{formula}': the '.' shorthand for all columns is not "
                             f"supported: name the covariates, e.g. {EXAMPLE}") from None
        raise InputError(f"data.formula '{formula}' is not a valid formula: {_one_line(exc)}: fix "
                         f"it, e.g. {EXAMPLE}") from None
    if not all(isinstance(side, formulaic.formula.SimpleFormula) for side in sides):
        raise InputError(f"data.formula '{formula}' has several parts ('|' or a second '~'): give "
                         f"one response and one list of terms, e.g. {EXAMPLE}")
    return parsed


def _factor_names(factor) -> tuple[list[str], set[str]]:
    """The names a formula factor reads (in order) and those of them it calls as functions."""
    if factor.eval_method.value == "lookup":  # a bare (possibly `quoted`) column name
        return [factor.expr], set()
    if factor.eval_method.value != "python":  # literals such as 1
        return [], set()
    from formulaic.utils.code import sanitize_variable_names

    aliases: dict[str, str] = {}  # `my var` is rewritten to a Python name; this maps it back
    tree = ast.parse(sanitize_variable_names(factor.expr, {}, aliases), mode="eval")
    nodes = list(ast.walk(tree))
    called = {n.func.id for n in nodes if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    names = [aliases.get(n.id, n.id) for n in nodes if isinstance(n, ast.Name)]
    return names, called


def _variables(side, table: Table, formula: str) -> list[str]:
    """The data columns one side of the formula uses, in order of appearance. formulaic's own
    ``required_variables`` misses those inside stateful transforms (center(x), poly(x, 2)), so the
    factor expressions are read here."""
    from formulaic.transforms import TRANSFORMS

    columns = list(table.columns)
    found = []
    for term in side:
        for factor in term.factors:
            try:
                names, called = _factor_names(factor)
            except SyntaxError:
                raise InputError(f"data.formula '{formula}' has a term that is not a valid "
                                 f"expression: '{factor.expr}': fix it, e.g. {EXAMPLE}") from None
            for name in names:
                if name in table.columns:
                    found.append(name)
                elif name in TRANSFORMS or hasattr(builtins, name):
                    continue
                elif name in called:
                    raise InputError(f"data.formula '{formula}' calls '{name}', which formulaic does "
                                     "not know: use e.g. log, exp, center, scale, poly, bs, C or I")
                else:
                    close = difflib.get_close_matches(name, columns, n=1, cutoff=0.6)
                    hint = f"did you mean '{close[0]}'? " if close else ""
                    raise InputError(f"data.formula uses '{name}', which is not a column of "
                                     f"'{table.source}': {hint}columns are {', '.join(columns)}")
    return list(dict.fromkeys(found))


def _cells(table: Table, name: str) -> list[str]:
    cells = table.columns[name]
    return [str(c).strip() for c in (cells.tolist() if isinstance(cells, np.ndarray) else cells)]


def _text_levels(table: Table, names: list[str]) -> dict[str, list[str]]:
    """Sorted levels of the columns of text among ``names`` (formulaic treats them as categorical)."""
    out = {}
    for name in names:
        try:
            levels = categorical_levels(table, name)
        except InputError as exc:  # its advice names data.covariates, which a formula replaces
            raise InputError(str(exc).replace("data.covariates", "data.formula")) from None
        if levels is not None:
            out[name] = levels
    return out


def _refuse_missing(table: Table, name: str, fix: str) -> None:
    missing = np.flatnonzero(_missing_mask(table, name))
    if missing.size:
        raise InputError(f"column '{name}' has {missing.size} missing value(s) (first at data row "
                         f"{missing[0] + 1}): {fix}")


def _frame(pandas, table: Table, names: list[str], levels: dict):
    """A DataFrame of the columns ``names``: numbers checked by ``numeric_column``, text as strings."""
    data = {v: (_cells(table, v) if v in levels else numeric_column(table, v)) for v in names}
    # An explicit index: a formula without variables (y ~ 1) still needs the row count.
    return pandas.DataFrame(data, index=pandas.RangeIndex(table.n_rows))


def _materialize(spec, frame, what: str):
    """formulaic's model matrix, any failure turned into a one-line InputError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. log of a negative: reported as an error below
            return spec.get_model_matrix(frame, context={})  # context={}: no names from vireg's scope
    except Exception as exc:  # formulaic raises many types (evaluation, encoding, NaN checks)
        nan = re.search(r"`([^`]+)` contains null values", str(exc))
        if nan:
            raise InputError(f"{what}: term '{nan.group(1)}' is not a number (NaN) on some rows (e.g. "
                             "the log of a negative number, or a C() value the fit never saw): change "
                             "the term or the data") from None
        raise InputError(f"{what} cannot be evaluated: {_one_line(exc)}: fix the formula or the "
                         "data") from None


def _check_finite(X: np.ndarray, names: list[str], rows: str, fix: str) -> None:
    bad = ~np.isfinite(X) | (np.abs(X) > MAX_ABS_VALUE)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise InputError(f"design column '{names[j]}' is {X[i, j]:g} at {rows} {i + 1} (finite values "
                         f"up to {MAX_ABS_VALUE:g} are needed): {fix}")


def _sources(spec, keep: list[int], table: Table) -> list[str]:
    """For every kept design column, the data column it comes from, or the term's text when the
    term reads several columns (x1:x2) or none."""
    by_column = {}
    for term, indices in spec.term_indices.items():
        names = [n for factor in term.factors for n in _factor_names(factor)[0] if n in table.columns]
        names = list(dict.fromkeys(names))
        for j in indices:
            by_column[j] = names[0] if len(names) == 1 else str(term)
    return [by_column[j] for j in keep]


def _save_state(spec, formula: str) -> dict:
    """The transform and encoder state of a fitted ModelSpec as JSON data. The encoder state drops
    formulaic's ``contrasts`` entries, which it keeps for introspection only ("categories" rules)."""
    try:
        transform = {k: _to_json(v) for k, v in spec.transform_state.items()}
        encoder = {k: {"kind": kind.value,
                       "state": _to_json({s: v for s, v in st.items() if s != "contrasts"})}
                   for k, (kind, st) in spec.encoder_state.items()}
    except TypeError as exc:
        raise InputError(f"data.formula '{formula}' uses a transform whose state vireg cannot save "
                         f"({exc}): leave that transform out") from None
    return {"transform_state": transform, "encoder_state": encoder}


def _load_state(formulaic, state: dict) -> dict:
    """``transform_state`` and ``encoder_state`` for a ModelSpec, from ``_save_state``'s JSON data."""
    kind = formulaic.parser.types.Factor.Kind
    return {"transform_state": {k: _from_json(v) for k, v in state["transform_state"].items()},
            "encoder_state": {k: (kind(e["kind"]), _from_json(e["state"]))
                              for k, e in state["encoder_state"].items()}}


def _to_json(value):
    """State as JSON data that ``_from_json`` turns back into equal values: numpy arrays, tuples
    and dicts with keys other than text (poly keeps {0: ..., 1: ...}) are tagged."""
    if isinstance(value, np.ndarray):
        return {_ARRAY: value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, tuple):
        return {_TUPLE: [_to_json(v) for v in value]}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: _to_json(v) for k, v in value.items()}
        return {_ITEMS: [[_to_json(k), _to_json(v)] for k, v in value.items()]}
    raise TypeError(f"a {type(value).__name__} value")


def _from_json(value):
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    if _ARRAY in value:
        return np.array(value[_ARRAY], dtype=value["dtype"])
    if _TUPLE in value:
        return tuple(_from_json(v) for v in value[_TUPLE])
    if _ITEMS in value:
        return {_from_json(k): _from_json(v) for k, v in value[_ITEMS]}
    return {k: _from_json(v) for k, v in value.items()}
