"""Out-of-core fits of models with group terms: the cache stores every row's group ids, each
piece sorted by the primary factor, and gives the in-memory answer."""

import numpy as np
import pytest
import yaml
from conftest import write_csv

import vireg
from vireg.api import build_model
from vireg.config import load_config

N_ROWS = 16000  # with memory_mb: 1 and one covariate: sorted pieces of 7,281 rows, three


def make_data(tmp_path, n=N_ROWS, family="gaussian", **columns):
    """(1 + x | a) + (1 | b): a's levels text (a0 .. a29), b's numbers 0 .. 11."""
    rng = np.random.default_rng(4)
    a, b, x = rng.integers(0, 30, n), rng.integers(0, 12, n), rng.standard_normal(n)
    eta = (0.5 * x + rng.normal(0, 0.7, 30)[a] + rng.normal(0, 0.3, 30)[a] * x
           + rng.normal(0, 0.5, 12)[b])
    y = ((rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int) if family == "bernoulli"
         else 1 + eta + rng.standard_normal(n))
    return write_csv(tmp_path / "g.csv", {"y": y, "x": np.round(x, 6),
                                          "c": a % 3, "a": [f"a{i}" for i in a], "b": b,
                                          **columns})


def make_config(tmp_path, family="gaussian", groups=None, **runtime):
    cfg = {"data": {"path": "g.csv", "response": "y", "covariates": ["x"],
                    "groups": groups or {"a": ["intercept", "x"], "b": ["intercept"]}},
           "model": {"family": family}, "output": {"draws": 0, "psis_draws": 0},
           "runtime": {"out_of_core": True, "cache_dir": "cache", "memory_mb": 1, **runtime}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("family", ["gaussian", "bernoulli"])
def test_out_of_core_group_terms_give_the_in_memory_fit(tmp_path, family):
    """Three sorted pieces: the same posterior as in memory to rounding (only the order of the
    sums differs), every level in the same order (b's numbers numerically, 0 .. 11)."""
    make_data(tmp_path, family=family)
    config = make_config(tmp_path, family)
    ooc = vireg.fit(config)
    mem = vireg.fit(config, overrides=["runtime.out_of_core=false"])
    assert ooc.converged and ooc.steps == mem.steps
    assert ooc.extras["data_source"]["backend"] == "out_of_core"
    ref = {r["parameter"]: r for r in mem.summary_rows()}
    for r in ooc.summary_rows():
        assert abs(r["mean"] - ref[r["parameter"]]["mean"]) < 1e-6 * ref[r["parameter"]]["sd"]
    assert [(g["group"], g["level"]) for g in ooc.group_rows] == [
        (g["group"], g["level"]) for g in mem.group_rows]
    assert [g["level"] for g in ooc.group_rows if g["group"] == "b"][:3] == ["0", "1", "2"]
    for g, h in zip(ooc.group_rows, mem.group_rows, strict=True):
        assert abs(g["mean"] - h["mean"]) < 1e-6 * h["sd"]


def test_minibatch_blocks_of_the_cache_cover_every_row_once(tmp_path):
    """Each block is a row range of whole primary groups inside one sorted piece, and the blocks'
    grouped passes add up to the full pass (what makes the minibatch estimate unbiased)."""
    make_data(tmp_path)
    model = build_model(load_config(make_config(tmp_path)))
    try:
        rows = model.rows
        blocks = rows.grouped_blocks(2000)
        ranges = sorted(r for b in blocks for r in b)
        assert ranges[0][0] == 0 and ranges[-1][1] == rows.n_rows
        assert all(a[1] == b[0] for a, b in zip(ranges[:-1], ranges[1:], strict=True))
        pieces = rows.pieces
        assert all(any(lo <= s and e <= hi for lo, hi in pieces) for s, e in ranges)
        assert len(blocks) > len(pieces)
        U = np.random.default_rng(1).standard_normal((3, model.n_params)) * 0.1
        effects = model.group_effects(U)
        full = model._kernel_pass(U, effects, True)
        parts = [model._kernel_pass(U, effects, True, b) for b in blocks]
        np.testing.assert_allclose(sum(p[0] for p in parts), full[0], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(sum(p[1] for p in parts), full[1], rtol=1e-12)
        for f in range(len(full[2])):
            np.testing.assert_allclose(sum(p[2][f] for p in parts), full[2][f], rtol=1e-9,
                                       atol=1e-9)
    finally:
        model.rows.close()


def test_out_of_core_minibatch_with_group_terms_gives_the_full_batch_answer(tmp_path):
    """Minibatch blocks read from the cache (row ranges of whole groups within sorted pieces)
    with the grouped control variate: within 0.1 sd of the in-memory full-batch fit."""
    from test_multilevel import assert_same_posterior

    make_data(tmp_path)
    config = make_config(tmp_path)
    mini = vireg.fit(config, overrides=["inference.batch_size=2000", "output.draws=2000"])
    full = vireg.fit(config, overrides=["runtime.out_of_core=false", "output.draws=2000"])
    assert mini.converged and mini.extras["minibatch"]["blocks"] > 3, mini.reason
    assert_same_posterior(mini, full)


def test_grouped_cache_is_reused_and_rebuilt_for_other_pieces(tmp_path):
    """A second fit reads the cache; another memory_mb sorts other pieces: another cache."""
    make_data(tmp_path)
    cfg = load_config(make_config(tmp_path))
    first = build_model(cfg)
    again = build_model(cfg)
    other = build_model(load_config(make_config(tmp_path, memory_mb=2)))
    try:
        assert again.rows.describe()["reused"] and not first.rows.describe()["reused"]
        assert len({m.rows.describe()["cache"] for m in (first, again, other)}) == 2
        assert [f.levels for f in again.groups] == [f.levels for f in first.groups]
    finally:
        for m in (first, again, other):
            m.rows.close()


def test_missing_group_values_out_of_core(tmp_path):
    """A missing level is an error naming the column and row, or with data.missing: drop the
    row is left out and counted."""
    a = [f"a{i % 30}" for i in range(N_ROWS)]
    a[6] = "NA"
    make_data(tmp_path, a2=a)
    config = make_config(tmp_path, groups={"a2": ["intercept"]})
    with pytest.raises(vireg.InputError, match=r"group column 'a2' misses a value at data row 7"):
        build_model(load_config(config))
    model = build_model(load_config(config, ["data.missing=drop"]))
    try:
        assert model.n_rows == N_ROWS - 1 and model.design.dropped_rows == 1
        assert model.groups[0].n_groups == 30
    finally:
        model.rows.close()


@pytest.mark.parametrize(("groups", "words"), [
    ({"one": ["intercept"]}, ("'one'", "1 level(s)")),
    ({"a": ["intercept", "c"]}, ("'c'", "constant within every 'a' group")),
    ({"a": ["intercept", "x9"]}, ("the group term on 'x9' (varying by 'a')", "columns are")),
    ({"zz": ["intercept"]}, ("group column 'zz'", "columns are")),
    ({"a:b": ["intercept"]}, ("(a:b)", "runtime.out_of_core")),
])
def test_bad_group_terms_out_of_core_are_one_line_and_leave_no_cache(tmp_path, groups, words):
    make_data(tmp_path, one=["k"] * N_ROWS)
    with pytest.raises(vireg.InputError) as err:
        build_model(load_config(make_config(tmp_path, groups=groups)))
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert not any(p.is_dir() for p in (tmp_path / "cache").glob("*"))


def test_parquet_with_a_text_group_column_out_of_core(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    csv = make_data(tmp_path, n=4000)
    import pyarrow.csv as pcsv

    table = pcsv.read_csv(csv, convert_options=pcsv.ConvertOptions(
        column_types={"a": pa.string(), "b": pa.int64()}))
    pq.write_table(table, tmp_path / "g.parquet", row_group_size=1000)
    config = make_config(tmp_path)
    ooc = vireg.fit(config, overrides=["data.path=g.parquet"])
    mem = vireg.fit(config, overrides=["runtime.out_of_core=false"])
    ref = {r["parameter"]: r for r in mem.summary_rows()}
    for r in ooc.summary_rows():
        assert abs(r["mean"] - ref[r["parameter"]]["mean"]) < 1e-6 * ref[r["parameter"]]["sd"]


def test_grouped_row_sources_keep_their_contract(tmp_path):
    from vireg.rows import GroupedRowSource

    make_data(tmp_path, n=3000)
    model = build_model(load_config(make_config(tmp_path)))
    try:
        assert isinstance(model.rows, GroupedRowSource)
    finally:
        model.rows.close()
