"""The count, proportion, probit and Student-t families read from a disk cache, on Dask workers
and in minibatches give the in-memory answer."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml
from conftest import write_csv
from scipy import special

import vireg

FAMILIES = {  # family, link, data key of the row data
    "binomial": ("binomial", None, "trials"),
    "poisson": ("poisson", None, "exposure"),
    "negative_binomial": ("negative_binomial", None, "exposure"),
    "student_t": ("student_t", None, None),
    "probit": ("bernoulli", "probit", None),
}


def make_project(tmp_path, name, n=4000, seed=0):
    family, link, key = FAMILIES[name]
    rng = np.random.default_rng(seed)
    x1, x2 = rng.standard_normal(n), rng.standard_normal(n) * 3 + 10
    eta = 0.3 + 0.5 * x1 - 0.1 * (x2 - 10)
    cols = {"x1": x1, "x2": x2}
    if name == "binomial":
        cols["n"] = rng.integers(1, 12, n).astype(float)
        y = rng.binomial(cols["n"].astype(int), special.expit(eta))
    elif name in ("poisson", "negative_binomial"):
        cols["n"] = rng.uniform(0.5, 3.0, n)
        y = rng.poisson(cols["n"] * np.exp(eta) * rng.gamma(3.0, 1 / 3.0, n))
    elif name == "student_t":
        y = 5.0 + 2.0 * eta + rng.standard_t(3, n)
    else:
        y = (rng.random(n) < special.ndtr(eta)).astype(float)
    write_csv(tmp_path / "d.csv", {"y": y, **cols})
    cfg = {"data": {"path": "d.csv", "response": "y", "covariates": ["x1", "x2"]},
           "model": {"family": family, "prior": {"coefficients": "normal(0, 5)"}},
           "output": {"draws": 0, "psis_draws": 0}}
    if link:
        cfg["model"]["link"] = link
    if key:
        cfg["data"][key] = "n"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("name", list(FAMILIES))
def test_out_of_core_and_minibatch_give_the_in_memory_answer(tmp_path, name):
    config = make_project(tmp_path, name)
    memory = vireg.fit(config)
    cached = vireg.fit(config, overrides=["runtime.out_of_core=true", "runtime.memory_mb=1"])
    assert cached.extras["data_source"]["backend"] == "out_of_core"
    sd = np.sqrt(np.diag(memory.theta_cov))
    # pieces of the cache instead of chunks of memory: the same sums up to rounding
    np.testing.assert_allclose(cached.theta_mean, memory.theta_mean, rtol=1e-8, atol=1e-10)
    minibatch = vireg.fit(config, overrides=["inference.batch_size=500"])
    assert np.max(np.abs(minibatch.theta_mean - memory.theta_mean) / sd) < 0.1


def test_out_of_core_bad_counts_are_one_line_naming_the_row(tmp_path):
    config = make_project(tmp_path, "binomial", n=50)
    lines = (tmp_path / "d.csv").read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[31].split(",")
    cells[header.index("y")] = "99"
    lines[31] = ",".join(cells)
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(vireg.InputError, match="data row 31 has 99"):
        vireg.fit(config, overrides=["runtime.out_of_core=true"])


@pytest.mark.parametrize("name", ["negative_binomial"])  # exposure, histogram, a positive parameter
def test_dask_backend_gives_the_local_answer(tmp_path, name):
    pytest.importorskip("distributed")
    config = make_project(tmp_path, name, n=3000)
    script = textwrap.dedent(f"""
        import json, vireg
        if __name__ == "__main__":
            out = {{}}
            for label, extra in (("dask", ["runtime.backend=dask", "runtime.partitions=3"]),
                                 ("local", [])):  # the trajectories compared over 300 steps
                r = vireg.fit({str(config)!r}, overrides=extra + ["inference.max_steps=300"])
                out[label] = r.theta_mean.tolist()
            print(json.dumps(out))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(out["dask"], out["local"], rtol=1e-8, atol=1e-10)


def test_a_covariate_that_is_also_the_trials_column_stays_a_covariate(tmp_path):
    config = make_project(tmp_path, "binomial", n=600)
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["covariates"] = ["x1", "n"]
    config.write_text(yaml.safe_dump(cfg))
    memory = vireg.fit(config)
    cached = vireg.fit(config, overrides=["runtime.out_of_core=true"])
    assert memory.param_names == cached.param_names == ["intercept", "x1", "n"]
    np.testing.assert_allclose(cached.theta_mean, memory.theta_mean, rtol=1e-8, atol=1e-10)


def test_count_errors_name_the_row_after_dropped_rows(tmp_path):
    (tmp_path / "d.csv").write_text("y,x\n1,0.5\n2,\n3,0.1\n2.5,0.3\n")
    cfg = {"data": {"path": "d.csv", "response": "y", "covariates": ["x"], "missing": "drop"},
           "model": {"family": "poisson"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(vireg.InputError, match=r"row 3 of those kept after dropping 1 .* has 2.5"):
        vireg.fit(tmp_path / "c.yaml")
    with pytest.raises(vireg.InputError, match="data row 4 has 2.5"):
        vireg.fit(tmp_path / "c.yaml", overrides=["runtime.out_of_core=true"])


def test_student_t_with_flat_sigma_and_too_few_rows_is_refused(tmp_path):
    (tmp_path / "d.csv").write_text("y,x\n1,0.5\n2,0.1\n3,0.3\n")
    cfg = {"data": {"path": "d.csv", "response": "y", "covariates": ["x"]},
           "model": {"family": "student_t"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(vireg.InputError, match="too few"):
        vireg.fit(tmp_path / "c.yaml")
