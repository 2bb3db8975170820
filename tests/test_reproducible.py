"""The same config and seed give identical numbers, whatever the thread count."""

import numba
import numpy as np
import pytest
from test_cli import make_project

import vireg
from vireg.api import build_model
from vireg.config import load_config


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two threads")
@pytest.mark.parametrize("family", ["bernoulli", "gaussian"])
def test_fit_is_bit_identical_at_one_and_two_threads(tmp_path, family):
    # Large enough (rows x draws x columns >= PARALLEL_MIN_WORK) to run the parallel build;
    # 300 steps are enough to compare, converged or not.
    config = make_project(tmp_path, family=family, n=20000)
    common = ["inference.samples=16", "inference.max_steps=300"]
    model = build_model(load_config(config, common))
    assert model.rows.parallel
    one = vireg.fit(config, overrides=[*common, "runtime.threads=1"])
    two = vireg.fit(config, overrides=[*common, "runtime.threads=2"])
    assert one.threads == 1 and two.threads == 2
    assert one.steps == two.steps
    assert np.array_equal(one.elbo_trace, two.elbo_trace, equal_nan=True)
    assert np.array_equal(one.theta_cov, two.theta_cov)
    assert np.array_equal(one.draws, two.draws)


def test_same_seed_same_numbers_different_seed_different_numbers(tmp_path):
    config = make_project(tmp_path)
    a, b = vireg.fit(config), vireg.fit(config)
    c = vireg.fit(config, overrides=["inference.seed=99"])
    assert np.array_equal(a.theta_mean, b.theta_mean) and np.array_equal(a.draws, b.draws)
    assert not np.array_equal(a.theta_mean, c.theta_mean)
