"""Minibatch VI: unbiased block estimates, the control variate, and fits that match full batch."""

import numba
import numpy as np
import pytest
from test_cli import make_project

import vireg
from vireg.api import build_model
from vireg.config import load_config
from vireg.minibatch import MinibatchLogJoint
from vireg.rows import block_bounds


def test_blocks_cover_the_rows_once_in_near_equal_contiguous_pieces():
    b = block_bounds(1003, 100)
    assert b[0] == 0 and b[-1] == 1003 and len(b) == 12
    sizes = np.diff(b)
    assert sizes.min() >= 91 and sizes.max() - sizes.min() <= 1
    assert np.array_equal(block_bounds(50, 100), [0, 50])


@pytest.mark.parametrize("family", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("control_variate", [True, False])
def test_block_estimates_average_to_the_full_data_log_joint_over_an_epoch(
        tmp_path, family, control_variate):
    model = build_model(load_config(make_project(tmp_path, family=family, n=1003)))
    est = MinibatchLogJoint(model, 100, 4, np.random.default_rng(0), control_variate)
    U = np.random.default_rng(1).standard_normal((4, model.n_params)) * 0.1
    exact_lp, exact_g = model.log_joint_grad(U)
    lps, gs = zip(*(est(U) for _ in range(est.n_blocks)), strict=True)
    assert est.epochs == 1
    assert sorted(est.order) == list(range(est.n_blocks))  # each block read once
    np.testing.assert_allclose(np.mean(lps, axis=0), exact_lp, rtol=1e-10)
    np.testing.assert_allclose(np.mean(gs, axis=0), exact_g, rtol=1e-8, atol=1e-8)


def test_control_variate_cuts_the_block_to_block_variance(tmp_path):
    model = build_model(load_config(make_project(tmp_path, n=5000)))
    U = np.random.default_rng(1).standard_normal((4, model.n_params)) * 0.02
    spread = {}
    for cv in (True, False):
        est = MinibatchLogJoint(model, 250, 4, np.random.default_rng(0), cv)
        gs = np.array([est(U)[1] for _ in range(est.n_blocks)])
        spread[cv] = gs.var(axis=0).sum()
    assert spread[True] < 0.01 * spread[False]


@pytest.mark.parametrize("family", ["bernoulli", "gaussian"])
def test_minibatch_fit_matches_the_full_batch_fit(tmp_path, family):
    config = make_project(tmp_path, family=family, n=20000)
    full = vireg.fit(config)
    mb = vireg.fit(config, overrides=["inference.batch_size=1000"])
    assert full.converged and mb.converged
    assert mb.extras["minibatch"]["blocks"] == 20
    assert mb.extras["data_passes"] < 0.25 * full.extras["data_passes"]
    err = np.abs(mb.summary.mean - full.summary.mean) / full.summary.sd
    assert err.max() < 0.1, err
    np.testing.assert_allclose(mb.summary.sd, full.summary.sd, rtol=0.05)


def test_plain_minibatch_does_not_claim_convergence_it_has_not_reached(tmp_path):
    # Without the control variate the block noise is ~5 posterior sds per step: the fit must
    # either get there or say it did not converge, never stop early near a wrong answer.
    config = make_project(tmp_path, n=20000)
    full = vireg.fit(config)
    mb = vireg.fit(config, overrides=["inference.batch_size=800",
                                      "inference.control_variate=false",
                                      "inference.max_steps=6000"])
    err = np.abs(mb.summary.mean - full.summary.mean) / full.summary.sd
    assert not mb.converged or err.max() < 0.1, (mb.reason, err)


def test_batch_size_of_all_rows_is_the_full_batch_fit(tmp_path):
    config = make_project(tmp_path)
    a = vireg.fit(config)
    b = vireg.fit(config, overrides=["inference.batch_size=120"])
    assert b.extras["minibatch"] is None
    assert np.array_equal(a.theta_mean, b.theta_mean)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two threads")
def test_minibatch_fit_is_bit_identical_at_one_and_two_threads(tmp_path):
    config = make_project(tmp_path, n=40000)
    common = ["inference.batch_size=20000", "inference.samples=16", "inference.max_steps=200"]
    one = vireg.fit(config, overrides=[*common, "runtime.threads=1"])
    two = vireg.fit(config, overrides=[*common, "runtime.threads=2"])
    assert np.array_equal(one.elbo_trace, two.elbo_trace, equal_nan=True)
    assert np.array_equal(one.theta_cov, two.theta_cov)


def test_batch_size_must_be_positive(tmp_path):
    with pytest.raises(vireg.InputError, match="batch_size must be at least 1"):
        load_config(make_project(tmp_path), ["inference.batch_size=0"])
