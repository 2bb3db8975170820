"""The Dask backend: a LocalCluster of two worker processes on loopback gives the local answer."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml
from test_out_of_core import make_data

import vireg

pytest.importorskip("distributed")


def make_config(tmp_path, **runtime):
    cfg = {"data": {"path": "big.csv", "response": "y", "covariates": ["x1", "x2"]},
           "model": {"family": "bernoulli"},
           "inference": {"max_steps": 300},  # the backends' trajectories compared, not q
           "output": {"draws": 0, "psis_draws": 0},
           "runtime": {"backend": "dask", "scheduler": "local", "partitions": 4, **runtime}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_dask_backend_matches_the_local_backend_full_batch_and_minibatch(tmp_path):
    # One LocalCluster per fit (2 worker processes, 127.0.0.1); run in a subprocess because
    # worker processes are spawned and need an importable __main__.
    make_data(tmp_path, n=20000)
    config = make_config(tmp_path)
    script = textwrap.dedent(f"""
        import json, numpy as np, vireg
        from vireg.api import build_model
        from vireg.config import load_config
        from vireg.rows import RowSource
        if __name__ == "__main__":
            out = {{}}
            model = build_model(load_config({str(config)!r}))
            out["protocol"] = isinstance(model.rows, RowSource)
            model.rows.close()
            for name, extra in (("dask", []), ("local", ["runtime.backend=local"]),
                                ("dask_mb", ["inference.batch_size=5000"]),
                                ("local_mb", ["runtime.backend=local",
                                              "inference.batch_size=5000"])):
                r = vireg.fit({str(config)!r}, overrides=extra)
                out[name] = {{"mean": r.theta_mean.tolist(), "cov": r.theta_cov.tolist(),
                              "steps": r.steps, "source": r.extras["data_source"],
                              "blocks": (r.extras["minibatch"] or {{}}).get("blocks")}}
            print(json.dumps(out))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["protocol"]  # the Dask rows keep the RowSource contract
    assert out["dask"]["source"] == {"backend": "dask", "partitions": 4, "workers": 2}
    # Partition sums instead of chunk sums: the same numbers up to rounding.
    assert out["dask"]["steps"] == out["local"]["steps"]
    np.testing.assert_allclose(out["dask"]["mean"], out["local"]["mean"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out["dask"]["cov"], out["local"]["cov"], rtol=1e-7, atol=1e-15)
    # Minibatch: blocks are whole partitions (4 of 5,000 rows), the same blocks as local.
    assert out["dask_mb"]["blocks"] == out["local_mb"]["blocks"] == 4
    np.testing.assert_allclose(out["dask_mb"]["mean"], out["local_mb"]["mean"], rtol=1e-8,
                               atol=1e-11)


def test_dask_backend_without_dask_says_how_to_install(tmp_path, monkeypatch):
    import vireg.distributed as dist

    monkeypatch.setitem(sys.modules, "dask.dataframe", None)
    make_data(tmp_path, n=100)
    with pytest.raises(vireg.InputError) as err:
        dist.DaskSource(tmp_path / "big.csv", "y", ["x1"], "error", "bernoulli", "local")
    assert "pip install 'vireg[dask]'" in str(err.value)


def test_unreachable_scheduler_is_a_one_line_error(tmp_path):
    make_data(tmp_path, n=100)
    config = make_config(tmp_path, scheduler="tcp://127.0.0.1:9")
    with pytest.raises(vireg.InputError) as err:
        vireg.fit(config)
    assert "runtime.scheduler" in str(err.value) and "\n" not in str(err.value)


def test_backend_config_checks(tmp_path):
    from vireg.config import load_config

    make_data(tmp_path, n=100)
    config = make_config(tmp_path)
    for bad, words in ((["runtime.backend=spark"], "local or dask"),
                       (["runtime.out_of_core=true"], "remove one of them"),
                       (["runtime.partitions=0"], "at least 1")):
        with pytest.raises(vireg.InputError, match=words):
            load_config(config, bad)
    assert np.isfinite(load_config(config).runtime.partitions)


def test_bad_data_on_a_worker_is_one_line_from_the_cli(tmp_path):
    (tmp_path / "d.csv").write_text("y,x1\n1,0.5\n0,\n1,0.3\n0,0.1\n")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "data": {"path": "d.csv", "response": "y", "covariates": ["x1"]},
        "model": {"family": "logistic"}, "runtime": {"backend": "dask"}}))
    vireg_cli = [sys.executable, "-c", "from vireg.cli import main; main()"]
    res = subprocess.run([*vireg_cli, "fit", "c.yaml", "--quiet"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: column 'x1' has missing values (row 2 of partition 0): remove or impute them, "
        "or set data.missing: drop"]
    assert not (tmp_path / "runs").exists()


def test_dask_backend_takes_group_terms(tmp_path):
    """(1 + x | a) + (1 | b) from data.groups: the Dask fit (4 partitions, each sorted by the
    primary factor on its worker) follows the local fit's trajectory to rounding (300 steps),
    with b's numeric levels in numeric order (0, 1, ..., 11) as locally; the grouped passes over
    the minibatch blocks (runs of partitions) add up to the full pass; a slope constant within
    every group is refused in one line as in memory."""
    rng = np.random.default_rng(4)
    n = 3000
    a, b, x = rng.integers(0, 30, n), rng.integers(0, 12, n), rng.standard_normal(n)
    y = (1 + 0.5 * x + rng.normal(0, 0.7, 30)[a] + rng.normal(0, 0.3, 30)[a] * x
         + rng.normal(0, 0.5, 12)[b] + rng.normal(0, 1, n))
    lines = ["y,x,c,a,b"] + [f"{y[i]:.6f},{x[i]:.6f},{a[i] % 3},a{a[i]},{b[i]}" for i in range(n)]
    (tmp_path / "g.csv").write_text("\n".join(lines) + "\n")
    cfg = {"data": {"path": "g.csv", "response": "y", "covariates": ["x"],
                    "groups": {"a": ["intercept", "x"], "b": ["intercept"]}},
           "model": {"family": "gaussian"}, "inference": {"max_steps": 300},
           "output": {"draws": 500, "psis_draws": 500},
           "runtime": {"backend": "dask", "scheduler": "local", "partitions": 4}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    script = textwrap.dedent(f"""
        import json, numpy as np, vireg
        from vireg.api import build_model
        from vireg.config import load_config
        from vireg.errors import InputError
        from vireg.rows import GroupedRowSource
        if __name__ == "__main__":
            out = {{}}
            for name, extra in (("dask", []), ("local", ["runtime.backend=local"])):
                r = vireg.fit({str(config)!r}, overrides=extra)
                out[name] = {{"rows": r.summary_rows(), "groups": r.group_rows,
                              "steps": r.steps, "source": r.extras["data_source"]}}
            model = build_model(load_config({str(config)!r}))
            out["protocol"] = isinstance(model.rows, GroupedRowSource)
            U = np.random.default_rng(1).normal(0, 0.3, (3, model.n_params))
            effects = model.group_effects(U)
            full = model._kernel_pass(U, effects, True)
            blocks = model.row_blocks(1500)
            parts = [model._kernel_pass(U, effects, True, b) for b in blocks]
            out["blocks"] = len(blocks)
            out["block_error"] = max(
                float(np.max(np.abs(sum(p[i] for p in parts) - full[i])
                             / (1 + np.abs(full[i])))) for i in (0, 1))
            out["block_error_effects"] = max(
                float(np.max(np.abs(sum(p[2][f] for p in parts) - full[2][f])))
                for f in range(len(full[2])))
            model.rows.close()
            try:
                vireg.fit({str(config)!r}, overrides=["data.groups.a=[intercept, c]"])
            except InputError as exc:
                out["error"] = str(exc)
            print(json.dumps(out))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["dask"]["source"]["backend"] == "dask" and out["protocol"]
    assert out["dask"]["steps"] == out["local"]["steps"]
    local = {r["parameter"]: r for r in out["local"]["rows"]}
    assert "sd(b:(Intercept))" in local and "cor(a:(Intercept),x)" in local
    for r in out["dask"]["rows"]:
        ref = local[r["parameter"]]
        assert abs(r["mean"] - ref["mean"]) < 1e-6 * ref["sd"], (r, ref)
    for g, ref in zip(out["dask"]["groups"], out["local"]["groups"], strict=True):
        assert (g["group"], g["level"]) == (ref["group"], ref["level"])
        assert abs(g["mean"] - ref["mean"]) < 1e-6 * ref["sd"], (g, ref)
    assert [g["level"] for g in out["dask"]["groups"] if g["group"] == "b"][:3] == ["0", "1", "2"]
    assert out["blocks"] == 2 and out["block_error"] < 1e-10
    assert out["block_error_effects"] < 1e-9
    assert "constant within every 'a' group" in out["error"]
