"""Out-of-core fits: the rows streamed from a disk cache give the in-memory answer."""

import json
import os

import numpy as np
import pytest
import yaml
from conftest import write_csv

import vireg
from vireg.api import build_model
from vireg.config import load_config

N_ROWS = 50000  # with memory_mb: 1 and 3 columns: pieces of 43,690 rows, two per pass


def make_data(tmp_path, n=N_ROWS, family="bernoulli", **columns):
    rng = np.random.default_rng(5)
    x1 = rng.standard_normal(n)
    x2 = rng.standard_normal(n) * 4 + 20
    eta = -0.3 + 0.8 * x1 + 0.1 * (x2 - 20)
    y = ((rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int) if family == "bernoulli"
         else 2 + eta + rng.standard_normal(n))
    return write_csv(tmp_path / "big.csv", {"y": y, "x1": x1, "x2": x2, **columns})


def make_config(tmp_path, family="bernoulli", **runtime):
    cfg = {"data": {"path": "big.csv", "response": "y", "covariates": ["x1", "x2"]},
           "model": {"family": family},
           "output": {"draws": 0, "psis_draws": 0},
           "runtime": {"out_of_core": True, "cache_dir": "cache", "memory_mb": 1, **runtime}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("family", ["bernoulli", "gaussian"])
def test_out_of_core_fit_matches_the_in_memory_fit(tmp_path, family):
    make_data(tmp_path, family=family)
    config = make_config(tmp_path, family)
    model = build_model(load_config(config))
    assert not model.in_memory and model.rows.buffer_rows < N_ROWS  # two pieces
    ooc = vireg.fit(config)
    mem = vireg.fit(config, overrides=["runtime.out_of_core=false"])
    assert ooc.converged and ooc.steps == mem.steps
    # Same draws, same rows; only the order of the sums differs (pieces, then chunks).
    np.testing.assert_allclose(ooc.theta_mean, mem.theta_mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ooc.theta_cov, mem.theta_cov, rtol=1e-7, atol=1e-15)
    assert ooc.extras["data_source"]["gigabytes_read"] > 0
    model.rows.close()


def test_cache_is_reused_until_the_source_changes(tmp_path):
    make_data(tmp_path)
    config = make_config(tmp_path)
    cfg = load_config(config)
    a = build_model(cfg)
    assert (tmp_path / "cache").is_dir()
    b = build_model(cfg)
    folders = list((tmp_path / "cache").iterdir())
    assert len(folders) == 1 and (folders[0] / "meta.json").is_file()
    meta = json.loads((folders[0] / "meta.json").read_text())
    assert meta["n_rows"] == N_ROWS and meta["key"]["covariates"] == ["x1", "x2"]
    np.testing.assert_array_equal(a.gram()[0], b.gram()[0])
    make_data(tmp_path, n=N_ROWS - 10)  # a changed file: a new cache
    c = build_model(cfg)
    assert c.n_rows == N_ROWS - 10 and len(list((tmp_path / "cache").iterdir())) == 2
    for m in (a, b, c):
        m.rows.close()


def test_out_of_core_minibatch_matches_full_batch(tmp_path):
    make_data(tmp_path)
    config = make_config(tmp_path)
    full = vireg.fit(config)
    mb = vireg.fit(config, overrides=["inference.batch_size=3000"])
    assert mb.converged and mb.extras["data_passes"] < 0.3 * full.extras["data_passes"]
    assert np.max(np.abs(mb.summary.mean - full.summary.mean) / full.summary.sd) < 0.1
    np.testing.assert_allclose(mb.summary.sd, full.summary.sd, rtol=0.05)


def test_parquet_source_streams_by_row_group(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    make_data(tmp_path)
    table = pa.csv.read_csv(tmp_path / "big.csv")
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=4000)
    config = make_config(tmp_path)
    mem = vireg.fit(config, overrides=["runtime.out_of_core=false"])
    ooc = vireg.fit(config, overrides=["data.path=big.parquet"])
    np.testing.assert_allclose(ooc.theta_mean, mem.theta_mean, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("columns", "override", "words"), [
    ({"g": ["a", "b"] * (N_ROWS // 2)}, "data.covariates=[x1, g]", ("'g'", "non-numeric")),
    ({}, "data.covariates=[x1, x9]", ("'x9'", "columns are")),
    ({"x3": [1.0] * 5 + [float("nan")] + [2.0] * (N_ROWS - 6)}, "data.covariates=[x1, x3]",
     ("'x3'", "missing", "row 6")),
    ({}, "model.family=bernoulli", None),  # fine: a control case
])
def test_bad_data_out_of_core_is_one_line_and_leaves_no_cache(tmp_path, columns, override, words):
    make_data(tmp_path, **columns)
    config = make_config(tmp_path)
    if words is None:
        build_model(load_config(config, [override])).rows.close()
        return
    with pytest.raises(vireg.InputError) as err:
        build_model(load_config(config, [override]))
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert not any(p.is_dir() for p in (tmp_path / "cache").glob("*"))


def test_missing_values_dropped_out_of_core_are_counted(tmp_path):
    make_data(tmp_path, x3=[1.0] * 5 + [float("nan")] + list(np.linspace(0, 1, N_ROWS - 6)))
    config = make_config(tmp_path)
    model = build_model(load_config(config, ["data.covariates=[x1, x3]", "data.missing=drop"]))
    assert model.n_rows == N_ROWS - 1 and model.design.dropped_rows == 1
    model.rows.close()


def test_non_binary_response_out_of_core(tmp_path):
    make_data(tmp_path, family="gaussian")
    with pytest.raises(vireg.InputError, match="must be 0 or 1"):
        build_model(load_config(make_config(tmp_path)))


def test_cache_dir_that_cannot_be_created_is_a_clear_error(tmp_path):
    make_data(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(vireg.InputError, match="runtime.cache_dir"):
        build_model(load_config(make_config(tmp_path, cache_dir="file/sub")))
    assert os.path.isfile(tmp_path / "file")


def test_constant_response_out_of_core_is_refused(tmp_path):
    write_csv(tmp_path / "big.csv", {"y": [2.0] * 50, "x1": list(range(50)), "x2": [1, 2] * 25})
    with pytest.raises(vireg.InputError, match="constant"):
        build_model(load_config(make_config(tmp_path, "gaussian")))


def test_fit_json_says_whether_the_cache_was_reused(tmp_path):
    make_data(tmp_path, n=3000)
    config = make_config(tmp_path)
    first = vireg.fit(config, overrides=["inference.max_steps=200"])
    again = vireg.fit(config, overrides=["inference.max_steps=200"])
    assert first.extras["data_source"]["reused"] is False
    assert again.extras["data_source"]["reused"] is True
    assert np.array_equal(first.theta_mean, again.theta_mean)


def test_no_covariates_out_of_core(tmp_path):
    # Found by the property test: a 0 x 0 Gram matrix came back from meta.json as a 1-d array.
    make_data(tmp_path, n=200, family="gaussian")
    config = make_config(tmp_path, "gaussian")
    for intercept in ("true", "false"):
        model = build_model(load_config(config, ["data.covariates=[]",
                                                 f"model.intercept={intercept}"]))
        assert model.gram()[0].shape == (int(intercept == "true"),) * 2
        model.rows.close()
    r = vireg.fit(config, overrides=["data.covariates=[]", "model.intercept=false",
                                     "inference.max_steps=50"])
    assert r.param_names == ["sigma"]


def test_duplicate_column_names_out_of_core(tmp_path):
    # Found by the property test: pyarrow refused to pick a column by a duplicated name.
    (tmp_path / "big.csv").write_text("y,x1,x1,x2\n1,0,0,1\n0,1,1,2\n")
    with pytest.raises(vireg.InputError, match="two columns named 'x1'"):
        build_model(load_config(make_config(tmp_path)))


def test_response_among_the_covariates_out_of_core(tmp_path):
    make_data(tmp_path, n=100)
    with pytest.raises(vireg.InputError, match="lists the response 'y'"):
        build_model(load_config(make_config(tmp_path), ["data.covariates=[y, x1]"]))


def test_every_row_source_keeps_the_row_source_contract(tmp_path):
    """Memory and disk-cache rows implement ``RowSource`` (the Dask rows are checked in
    test_distributed) and answer its questions alike, empty curvature sums included."""
    from vireg.rows import RowSource

    make_data(tmp_path)
    mf = ["inference.family=meanfield"]  # both on the standardised columns (not orthogonalised)
    memory = build_model(load_config(make_config(tmp_path, out_of_core=False), mf))
    cached = build_model(load_config(make_config(tmp_path), mf))
    try:
        for model in (memory, cached):
            assert isinstance(model.rows, RowSource), type(model.rows).__name__
        U = np.random.default_rng(0).standard_normal((3, memory.n_params)) * 0.1
        for a, b in zip(memory.rows.loglik_grad(U), cached.rows.loglik_grad(U), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(memory.rows.loglik(U), cached.rows.loglik(U), rtol=1e-9)
    finally:
        cached.rows.close()


def test_out_of_core_takes_every_other_column_when_covariates_are_not_listed(tmp_path):
    """As in memory: without data.covariates every column but the response is a covariate."""
    make_data(tmp_path)
    path = make_config(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    del cfg["data"]["covariates"]
    path.write_text(yaml.safe_dump(cfg))
    model = build_model(load_config(path))
    try:
        assert model.design.covariates == ["x1", "x2"]
    finally:
        model.rows.close()


def test_quoted_csv_header_out_of_core(tmp_path):
    """A header written with quotes ("y","x1","x2", as R's write.csv writes it) names the same
    columns out of core as in memory."""
    path = make_data(tmp_path, n=2000, family="gaussian")
    lines = path.read_text().splitlines()
    lines[0] = ",".join(f'"{name}"' for name in lines[0].split(","))
    path.write_text("\n".join(lines) + "\n")
    config = make_config(tmp_path, "gaussian")
    ooc = vireg.fit(config)
    mem = vireg.fit(config, overrides=["runtime.out_of_core=false"])
    np.testing.assert_allclose(ooc.theta_mean, mem.theta_mean, rtol=1e-9, atol=1e-12)
