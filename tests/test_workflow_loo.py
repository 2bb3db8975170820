"""PSIS-LOO for the variational posterior (vireg.workflow.loo, ``vireg loo``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from typer.testing import CliRunner
from workflow_runs import (
    POSTERIORDB,
    fit_run,
    gaussian_loglik,
    kidiq_config,
    wells_config,
    without_row,
)

from vireg.cli import app
from vireg.diagnostics import psis
from vireg.errors import InputError
from vireg.workflow.loo import loo, loo_arrays, loo_of_run, psis_rows, subsample_estimate
from vireg.workflow.loo import loo_pointwise as vireg_pointwise
from vireg.workflow.run import load_run, pointwise_loglik, rebuild, to_u

# Agreement with ArviZ on the same float64 log-likelihood values (acceptance: 1e-6).
ARVIZ_TOL = 1e-6
# psis_rows does psis's arithmetic in another order (sums over rows at once).
PSIS_ROWS_TOL = 1e-10
# Exact refits: |sum over the chosen rows of (PSIS-LOO - exact)| within this many Monte Carlo se.
REFIT_SE = 2.0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("loo_runs")
    fit_run(kidiq_config(), base / "kidiq")
    fit_run(wells_config(), base / "wells")
    return base


def _normal_loglik(rng, S=1000, n=60, heavy=False):
    """log-likelihood of n observations (a few outliers with ``heavy``) under S posterior draws
    of a normal mean with sd 1."""
    y = rng.standard_normal(n)
    if heavy:
        y[:3] = [6.0, -7.0, 9.0]
    mu = y.mean() + rng.standard_normal(S) / math.sqrt(n)
    return -0.5 * math.log(2 * math.pi) - 0.5 * (y[None, :] - mu[:, None]) ** 2


def test_psis_rows_matches_psis_row_by_row(rng):
    S = 500
    rows = np.vstack([rng.standard_normal((20, S)), 3 * rng.standard_t(2, (20, S)),
                      np.log(rng.pareto(0.4, (5, S)) + 1e-300), np.zeros((2, S)),
                      rng.standard_normal((1, S)) * 1e-15])
    lw, k = psis_rows(rows)
    for i, r in enumerate(rows):
        want_lw, want_k = psis(r)
        assert np.max(np.abs(lw[i] - want_lw)) < PSIS_ROWS_TOL
        assert (want_k == k[i]) or abs(want_k - k[i]) < PSIS_ROWS_TOL


def test_psis_rows_refuses_nothing_on_short_or_nonfinite_rows(rng):
    lw, k = psis_rows(np.vstack([np.r_[rng.standard_normal(99), np.inf][None, :],
                                 rng.standard_normal((1, 100))]))
    assert k[0] == np.inf and np.isfinite(k[1])
    lw, k = psis_rows(rng.standard_normal((3, 8)))  # fewer than 10 draws
    assert np.all(k == np.inf) and np.allclose(np.exp(lw).sum(axis=1), 1.0)


@pytest.mark.parametrize("heavy", [False, True])
def test_uncorrected_loo_matches_arviz_on_the_same_draws(rng, heavy):
    az = pytest.importorskip("arviz")
    ll = _normal_loglik(rng, heavy=heavy)
    ours = loo_arrays(ll)
    idata = az.from_dict(posterior={"mu": rng.standard_normal((1, ll.shape[0]))},
                         log_likelihood={"y": ll[None]})
    with pytest.warns(UserWarning) if heavy and ours.warning else _no_warning():
        ref = az.loo(idata, pointwise=True)
    assert abs(ours.elpd_loo - ref.elpd_loo) < ARVIZ_TOL
    assert abs(ours.se - ref.se) < ARVIZ_TOL
    assert abs(ours.p_loo - ref.p_loo) < ARVIZ_TOL
    assert np.max(np.abs(ours.pointwise.elpd - ref.loo_i.values)) < ARVIZ_TOL
    assert np.max(np.abs(ours.pointwise.k - ref.pareto_k.values)) < ARVIZ_TOL


def test_uncorrected_loo_of_a_run_matches_arviz(runs):
    az = pytest.importorskip("arviz")
    for name in ("kidiq", "wells"):
        run = load_run(runs / name)
        with rebuild(run) as rb:
            ll = pointwise_loglik(rb.model, to_u(rb.model, run))
        ours = loo_of_run(run, correct=False)
        ref = az.loo(az.from_dict(posterior={"intercept": run.draws[None, :, 0]},
                                  log_likelihood={"y": ll[None]}))
        assert abs(ours.elpd_loo - ref.elpd_loo) < ARVIZ_TOL
        assert abs(ours.p_loo - ref.p_loo) < ARVIZ_TOL


def _no_warning():
    import contextlib
    import warnings

    @contextlib.contextmanager
    def ctx():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield
    return ctx()


def _straightforward_loo(ll, log_ratio):
    """PSIS-LOO for draws from q, one observation at a time with ``diagnostics.psis``."""
    S, n = ll.shape
    w_post = psis(log_ratio)[0]
    elpd, lpd = np.empty(n), np.empty(n)
    for i in range(n):
        lw, _ = psis(log_ratio - ll[:, i])
        elpd[i] = np.logaddexp.reduce(lw + ll[:, i])
        lpd[i] = np.logaddexp.reduce(w_post + ll[:, i])
    return elpd, lpd


def test_corrected_loo_matches_a_straightforward_implementation(rng):
    ll = _normal_loglik(rng, S=800, n=40, heavy=True)
    log_ratio = 0.5 * rng.standard_normal(800)
    ours = loo_arrays(ll, log_ratio)
    elpd, lpd = _straightforward_loo(ll, log_ratio)
    assert np.max(np.abs(ours.pointwise.elpd - elpd)) < PSIS_ROWS_TOL
    assert abs(ours.p_loo - float(np.sum(lpd - elpd))) < PSIS_ROWS_TOL * ll.shape[1]
    assert ours.khat_posterior == pytest.approx(psis(log_ratio)[1])


def test_constant_ratios_make_the_correction_vanish(rng):
    ll = _normal_loglik(rng)
    plain, corrected = loo_arrays(ll), loo_arrays(ll, np.full(ll.shape[0], -3.7))
    assert corrected.elpd_loo == pytest.approx(plain.elpd_loo, abs=1e-9)
    assert corrected.p_loo == pytest.approx(plain.p_loo, abs=1e-9)


def test_corrected_loo_of_a_run_uses_its_log_p_minus_log_q(runs):
    run = load_run(runs / "kidiq")
    with rebuild(run) as rb:
        ll = pointwise_loglik(rb.model, to_u(rb.model, run))
        X, y = rb.X, rb.y
    # the kernel's pointwise values against a NumPy reference on the natural scale
    assert np.max(np.abs(ll - gaussian_loglik(run.draws, run.names, X, y))) < 1e-9
    want = loo_arrays(ll, run.log_p - run.log_q)
    got = loo_of_run(run)
    assert got.elpd_loo == pytest.approx(want.elpd_loo, abs=1e-9)
    assert got.corrected and got.khat_posterior is not None


def test_difference_estimator_is_exact_when_the_approximation_is(rng):
    ll = _normal_loglik(rng, n=200)
    full = loo_arrays(ll)
    rows = np.sort(rng.choice(200, 30, replace=False))
    pw = vireg_pointwise(ll[:, rows])
    est = subsample_estimate(full.pointwise.elpd, rows, pw, ll.shape[0], False, None)
    assert est.elpd_loo == pytest.approx(full.elpd_loo, abs=1e-9)
    assert est.subsampling_se == pytest.approx(0.0, abs=1e-9)
    assert est.se == pytest.approx(full.se, rel=1e-6)


def test_subsample_is_within_two_subsampling_se_of_the_full_computation(runs):
    full = loo(runs / "wells")
    for seed in range(3):
        sub = loo(runs / "wells", subsample=300, seed=seed)
        assert sub.n_subsample == 300 and sub.subsampling_se > 0
        assert abs(sub.elpd_loo - full.elpd_loo) < 2 * sub.subsampling_se + 1e-9
        assert sub.se == pytest.approx(full.se, rel=0.05)


def test_subsample_below_the_minimum_is_refused(runs):
    with pytest.raises(InputError, match="--subsample"):
        loo(runs / "wells", subsample=3)


def _exact_loo_rows(tmp_path, rows: list[int], draws: int):
    """elpd_i of the held-out rows from refits without each of them: the log of the posterior
    mean of p(y_i | theta), over full-rank q's draws importance-weighted by PSIS of p/q, and its
    Monte Carlo se."""
    from workflow_runs import fit_run as _fit  # noqa: F401  (same helper; refits need no folder)

    import vireg

    data = np.loadtxt(POSTERIORDB / "kidiq-kidscore_momhsiq.csv", delimiter=",", skiprows=1)
    y, X = data[:, 0], data[:, 1:]
    out, se = [], []
    for i in rows:
        path = without_row(POSTERIORDB / "kidiq-kidscore_momhsiq.csv", i, tmp_path / f"r{i}.csv")
        r = vireg.fit(kidiq_config(data=path, draws=draws, family="fullrank"))
        lw, _ = psis(r.draws_log_p - r.draws_log_q)
        lp = gaussian_loglik(r.draws, r.param_names, X[i:i + 1], y[i:i + 1])[:, 0]
        out.append(float(np.logaddexp.reduce(lw + lp)))
        se.append(_is_se(lw, lp))
    return np.array(out), np.array(se)


def _is_se(lw, lp):
    """Monte Carlo se of log sum_s w_s exp(lp_s) (self-normalised importance sampling)."""
    w = np.exp(lw - np.logaddexp.reduce(lw))
    p = np.exp(lp - lp.max())
    mean = np.sum(w * p)
    return float(np.sqrt(np.sum(w**2 * (p - mean) ** 2)) / mean)


def test_corrected_loo_matches_exact_refits_on_kidiq(tmp_path):
    draws = 4000
    fit_run(kidiq_config(draws=draws), tmp_path / "run")  # mean-field q, as configs/kidiq.yaml
    result = loo(tmp_path / "run")
    k = result.pointwise.k
    # the most influential rows (largest k) and some ordinary ones
    rows = sorted(set(np.argsort(k)[-5:].tolist()) | {0, 100, 200, 300, 433})
    exact, exact_se = _exact_loo_rows(tmp_path, rows, draws)
    run = load_run(tmp_path / "run")
    with rebuild(run) as rb:
        ll = pointwise_loglik(rb.model, to_u(rb.model, run), np.array(rows, dtype=np.int64))
    ratios = (run.log_p - run.log_q)[:, None] - ll
    loo_se = np.array([_is_se(psis(ratios[:, j])[0], ll[:, j]) for j in range(len(rows))])
    diff = result.pointwise.elpd[rows] - exact
    total_se = math.sqrt(np.sum(exact_se**2 + loo_se**2))
    assert abs(diff.sum()) < REFIT_SE * total_se
    assert np.all(np.abs(diff) < 4 * np.sqrt(exact_se**2 + loo_se**2) + 1e-3)


def test_loo_refuses_a_run_whose_data_changed(tmp_path):
    data = tmp_path / "kidiq.csv"
    data.write_text((POSTERIORDB / "kidiq-kidscore_momhsiq.csv").read_text())
    fit_run(kidiq_config(data=data), tmp_path / "run")
    lines = data.read_text().splitlines()
    lines[5] = "1" + lines[5]  # another response value, same number of rows
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="differ from those it was fitted to"):
        loo(tmp_path / "run")


def test_loo_refuses_a_folder_without_draws(tmp_path):
    fit_run(kidiq_config(draws=0), tmp_path / "run")
    with pytest.raises(InputError, match="output.draws"):
        loo(tmp_path / "run")


def test_loo_reads_the_rows_of_an_out_of_core_fit(runs, tmp_path):
    cfg = wells_config()
    cfg["runtime"] = {"out_of_core": True, "cache_dir": str(tmp_path / "cache")}
    fit_run(cfg, tmp_path / "ooc")
    ours = loo(tmp_path / "ooc", subsample=200)
    assert abs(ours.elpd_loo - loo(runs / "wells").elpd_loo) < 3 * ours.subsampling_se + 1.0


def test_cli_loo_prints_csv_and_pointwise(runs):
    res = CliRunner().invoke(app, ["loo", str(runs / "kidiq"), "--out", "-"])
    assert res.exit_code == 0, res.output
    header, row = res.stdout.strip().splitlines()
    values = dict(zip(header.split(","), row.split(","), strict=True))
    assert values["corrected"] == "true" and int(values["n_obs"]) == 434
    assert float(values["looic"]) == pytest.approx(-2 * float(values["elpd_loo"]))
    res = CliRunner().invoke(app, ["loo", str(runs / "kidiq"), "--pointwise", "-",
                                   "--uncorrected"])
    assert res.exit_code == 0 and len(res.stdout.strip().splitlines()) == 435


def test_cli_loo_of_a_missing_folder_is_a_one_line_error(tmp_path):
    res = CliRunner().invoke(app, ["loo", str(tmp_path / "nowhere")])
    assert res.exit_code == 2
    assert res.stderr.strip().startswith("error:") and len(res.stderr.strip().splitlines()) == 1
