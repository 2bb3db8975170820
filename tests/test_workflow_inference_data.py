"""ArviZ InferenceData out of a run: posterior.nc (output.arviz, ``vireg export``)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from typer.testing import CliRunner
from workflow_runs import fit_run, kidiq_config, wells_config

from vireg.cli import app
from vireg.errors import InputError
from vireg.workflow import inference_data as idmod
from vireg.workflow.run import load_run, pointwise_loglik, rebuild, to_u

az = pytest.importorskip("arviz")


@pytest.fixture(scope="module")
def kidiq_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("idata") / "kidiq"
    fit_run(kidiq_config(arviz=True), out)
    return out


def test_fit_with_output_arviz_writes_posterior_nc(kidiq_run):
    assert (kidiq_run / "posterior.nc").is_file()
    assert not list(kidiq_run.glob(".*.tmp"))


# Every warning is an error, but one: ArviZ 0.23's own plotting code passes a dict to
# matplotlib >= 3.11's normalize_kwargs, which warns whatever the data.
@pytest.mark.filterwarnings("ignore:Passing a dict or None as alias_mapping")
@pytest.mark.filterwarnings("error")
def test_posterior_nc_opens_in_arviz_and_summarises_without_warnings(kidiq_run):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idata = az.from_netcdf(kidiq_run / "posterior.nc")
    summary = az.summary(idata, kind="stats")
    assert {"intercept", "beta[mom_hs]", "beta[mom_iq]", "sigma"} <= set(summary.index)
    axes = az.plot_posterior(idata)
    assert np.size(axes) == 4
    plt.close("all")


def test_posterior_nc_holds_the_runs_draws_and_design(kidiq_run):
    run = load_run(kidiq_run)
    idata = az.from_netcdf(kidiq_run / "posterior.nc")
    assert set(idata.groups()) == {"posterior", "sample_stats", "log_likelihood",
                                   "observed_data", "constant_data"}
    post = idata.posterior
    assert post.sizes["chain"] == 1 and post.sizes["draw"] == run.draws.shape[0]
    assert list(post["beta"].coords["covariate"].values) == ["mom_hs", "mom_iq"]
    np.testing.assert_array_equal(post["sigma"].values[0], run.column("sigma"))
    np.testing.assert_array_equal(post["beta"].values[0], run.coefficients())
    np.testing.assert_array_equal(idata.sample_stats["lp"].values[0], run.log_p)
    np.testing.assert_array_equal(idata.sample_stats["log_q"].values[0], run.log_q)
    w = np.exp(idata.sample_stats["log_weight"].values[0])
    assert w.sum() == pytest.approx(1.0)
    ll = idata.log_likelihood["kid_score"]
    assert ll.dtype == np.float32 and ll.dims == ("chain", "draw", "obs")
    with rebuild(run) as rb:
        want = pointwise_loglik(rb.model, to_u(rb.model, run))
        np.testing.assert_array_equal(idata.observed_data["kid_score"].values, rb.y)
        np.testing.assert_array_equal(idata.constant_data["X"].values, rb.X)
    np.testing.assert_allclose(ll.values[0], want, rtol=1e-6)
    attrs = idata.posterior.attrs
    assert attrs["inference_library"] == "vireg" and attrs["family"] == "gaussian"
    assert attrs["khat"] == pytest.approx(run.doc["khat"])


def test_arviz_loo_of_posterior_nc_agrees_with_vireg_uncorrected(kidiq_run):
    from vireg.workflow.loo import loo

    ours = loo(kidiq_run, correct=False)
    theirs = az.loo(az.from_netcdf(kidiq_run / "posterior.nc"))
    # float32 storage of the log-likelihood: about 1e-7 relative per value
    assert abs(ours.elpd_loo - theirs.elpd_loo) < 1e-4


def test_log_likelihood_over_the_cap_is_left_out(kidiq_run, monkeypatch):
    monkeypatch.setattr(idmod, "LOG_LIKELIHOOD_CAP_BYTES", 1000)
    run = load_run(kidiq_run)
    idata = idmod.inference_data(run, "auto")
    assert "log_likelihood" not in idata.groups()
    assert "exceeds" in idata.posterior.attrs["log_likelihood"]
    assert "log_likelihood" in idmod.inference_data(run, True).groups()
    assert "log_likelihood" not in idmod.inference_data(run, False).groups()


def test_export_converts_an_earlier_run(tmp_path):
    fit_run(wells_config(draws=200), tmp_path / "wells")
    res = CliRunner().invoke(app, ["export", str(tmp_path / "wells"), "--to", "netcdf",
                                   "--out", str(tmp_path / "w.nc")])
    assert res.exit_code == 0, res.output
    idata = az.from_netcdf(tmp_path / "w.nc")
    assert idata.log_likelihood["switched"].shape == (1, 200, 3020)
    assert idata.posterior.attrs["family"] == "bernoulli"


def test_export_refuses_an_unknown_format(tmp_path):
    res = CliRunner().invoke(app, ["export", str(tmp_path), "--to", "zarr"])
    assert res.exit_code == 2 and "netcdf" in res.stderr


def test_missing_arviz_is_a_one_line_error_naming_the_extra(kidiq_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "arviz", None)
    with pytest.raises(InputError, match=r"pip install 'vireg\[arviz\]'"):
        idmod.export_run(kidiq_run)
    res = CliRunner().invoke(app, ["export", str(kidiq_run)])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1


def test_fit_with_output_arviz_refuses_before_fitting_without_arviz(tmp_path, monkeypatch):
    import yaml

    monkeypatch.setitem(sys.modules, "arviz", None)
    cfg = tmp_path / "k.yaml"
    cfg.write_text(yaml.safe_dump(kidiq_config(arviz=True)))
    res = CliRunner().invoke(app, ["fit", str(cfg), "--out", str(tmp_path / "run"), "-q"])
    assert res.exit_code == 2 and "vireg[arviz]" in res.stderr
    assert not (tmp_path / "run").exists()
