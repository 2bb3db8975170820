"""Minibatch steps for models with group terms (``minibatch.GroupedMinibatch``): the estimate of
the grouped kernel's pass from one block of whole groups, its exact properties, and fits that
give the full-batch answer."""

from __future__ import annotations

import numpy as np
import pytest
from test_multilevel import assert_same_posterior, grouped_data, model_of, random_centring

CROSSED = "y ~ x + (1 + x | g) + (1 | h)"


def _estimates(model, mb, U):
    """(log p, gradient) of ``model.log_joint_grad`` at U with each block's estimate."""
    return [model.log_joint_grad(U, kernel_pass=lambda U, e, _, b=b: mb._estimate(U, e, b))
            for b in range(mb.n_blocks)]


@pytest.mark.parametrize("family", ["gaussian", "bernoulli", "student_t", "poisson"])
def test_block_passes_add_up_to_the_full_pass(tmp_path, family):
    """The grouped kernel's passes over every block sum to the pass over all rows: the log lik,
    the base gradient (log sigma's included: a block's per-row constants count its own rows)
    and every effect's sums."""
    model = model_of(grouped_data(tmp_path, family, n=600, G=15), CROSSED, family)
    U = np.random.default_rng(1).normal(0, 0.3, (3, model.n_params))
    effects = model.group_effects(U)
    Gk, ll, dS = model._kernel_pass(U, effects, True)
    parts = [model._kernel_pass(U, effects, True, b) for b in model.row_blocks(100)]
    assert len(parts) > 3
    np.testing.assert_allclose(sum(p[1] for p in parts), ll, rtol=1e-12)
    np.testing.assert_allclose(sum(p[0] for p in parts), Gk, rtol=1e-10,
                               atol=1e-10 * np.abs(Gk).max())
    for f, d in enumerate(dS):
        np.testing.assert_allclose(sum(p[2][f] for p in parts), d, rtol=1e-10,
                                   atol=1e-10 * np.abs(d).max())


@pytest.mark.parametrize("family", ["gaussian", "bernoulli", "student_t"])
def test_estimate_averages_to_the_full_log_joint(tmp_path, family):
    """Unbiased: the estimate of one block, averaged over the blocks (each equally likely), is
    the full log joint and gradient at every coordinate, for draws away from the reference."""
    from vireg.minibatch import GroupedMinibatch

    model = model_of(grouped_data(tmp_path, family, n=600, G=15), CROSSED, family)
    rng = np.random.default_rng(5)
    random_centring(model, rng)
    U = rng.normal(0, 0.3, (3, model.n_params))
    mb = GroupedMinibatch(model, 100, np.random.default_rng(0))
    mb._next_block(U + 0.1)  # an epoch, its reference away from the draws
    estimates = _estimates(model, mb, U)
    lp, G = model.log_joint_grad(U)
    np.testing.assert_allclose(np.mean([e[0] for e in estimates], axis=0), lp, rtol=1e-10)
    np.testing.assert_allclose(np.mean([e[1] for e in estimates], axis=0), G, rtol=1e-8,
                               atol=1e-8 * np.abs(G).max())


def test_gaussian_estimate_is_exact_where_only_locations_move(tmp_path):
    """With a gaussian likelihood the log lik is quadratic in the locations (fixed effects,
    group coordinates x at fixed log tau and correlation) at a fixed sigma, so the control
    variate's quadratic model is the block's own: every block's estimate is the full log joint
    and its gradient in every coordinate but log sigma (d/dlog sigma is itself quadratic in
    the locations, and the estimate models it to first order), up to the finite-difference
    Jacobian's rounding."""
    from vireg.minibatch import GroupedMinibatch

    model = model_of(grouped_data(tmp_path, n=600, G=15), CROSSED)
    rng = np.random.default_rng(2)
    u = rng.normal(0, 0.3, model.n_params)
    move = np.zeros(model.n_params, dtype=bool)
    move[:model.n_base_params - 1] = True  # not log sigma
    move[model.n_global:] = True  # the groups' x
    steps = rng.normal(0, 0.3, (4, model.n_params)) * move
    mb = GroupedMinibatch(model, 100, np.random.default_rng(0))
    mb._next_block(np.vstack([u - steps[0], u + steps[0]]))  # the reference at u
    U = u + steps[1:]
    lp, G = model.log_joint_grad(U)
    keep = np.arange(model.n_params) != model.n_base_params - 1
    for est_lp, est_G in _estimates(model, mb, U):
        np.testing.assert_allclose(est_lp, lp, rtol=1e-9)
        np.testing.assert_allclose(est_G[:, keep], G[:, keep], rtol=1e-6,
                                   atol=1e-6 * np.abs(G).max())


def test_estimate_varies_less_than_the_mean_reference_one(tmp_path):
    """Draws spread around the reference as q's do: the blocks' estimates of a group's
    gradient scatter far less than with the reference's linear and quadratic terms left out
    (SVRG at the mean: a group's sums K times their spread with probability 1 / K)."""
    from vireg.minibatch import GroupedMinibatch

    model = model_of(grouped_data(tmp_path, "bernoulli", n=2000, G=20), CROSSED, "bernoulli")
    rng = np.random.default_rng(3)
    u = rng.normal(0, 0.1, model.n_params)
    U = u + rng.normal(0, 0.05, (4, model.n_params))
    mb = GroupedMinibatch(model, 200, np.random.default_rng(0))
    mb._next_block(U)
    K = float(mb.n_blocks)
    ref = U.mean(axis=0, keepdims=True)
    ref_pass = model._kernel_pass(ref, model.group_effects(ref), True)

    def svrg(U, effects, block):
        both = [np.concatenate([e, r]) for e, r in zip(effects, model.group_effects(ref),
                                                       strict=True)]
        Gk, ll, dS = model._kernel_pass(np.vstack([U, ref]), both, True, mb.blocks[block])
        S = U.shape[0]
        return (ref_pass[0] + K * (Gk[:S] - Gk[S:]), ref_pass[1] + K * (ll[:S] - ll[S:]),
                [r + K * (d[:S] - d[S:]) for r, d in zip(ref_pass[2], dS, strict=True)])

    ours = np.std([e[1] for e in _estimates(model, mb, U)], axis=0)
    mean_ref = np.std([model.log_joint_grad(U, kernel_pass=lambda U, e, _, b=b: svrg(U, e, b))[1]
                       for b in range(mb.n_blocks)], axis=0)
    assert np.sum(ours ** 2) < 0.05 * np.sum(mean_ref ** 2)


@pytest.mark.parametrize("family,batch", [("gaussian", 100), ("bernoulli", 500)])
def test_minibatch_fit_gives_the_full_batch_answer(tmp_path, family, batch):
    """Crossed factors, blocks of one or a few groups: converged, every reported quantity's
    mean and every group effect's within 0.1 of the full-batch posterior sd, sds within 10%,
    and fewer passes over the rows than the full-batch fit's steps."""
    from vireg.api import fit

    path = grouped_data(tmp_path, family, n=4000, G=40, seed=3)
    base = {"data": {"path": str(path), "formula": CROSSED}, "model": {"family": family},
            "output": {"draws": 4000}}
    full = fit({**base, "inference": {"seed": 2}})
    mini = fit({**base, "inference": {"seed": 2, "batch_size": batch}})
    assert full.converged and mini.converged, mini.reason
    assert mini.extras["data_passes"] < full.steps
    assert_same_posterior(mini, full)
