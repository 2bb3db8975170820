"""Minibatch estimates of log p(y, u) and its gradient: one block of rows per step.

The rows are cut into K contiguous blocks of near-equal size n_b ~ N / K, visited in a fresh
random order each epoch, one block per step (contiguous, so the kernel still streams). For the
block b of a step,

    ll_hat(u) = K sum_{i in b} l_i(u)

is unbiased for the full-data sum (b is uniform over the K blocks), but its variance is large: the
block-to-block spread is about sqrt(N / n_b) posterior standard deviations (in Newton-step units),
so plain minibatch VI needs on the order of 1 / tolerance^2 epochs to average it away. A control
variate removes almost all of it. Once per epoch, at a reference point u_ref (the mean of the
current draws), one full pass computes the exact sums ll(u_ref), G(u_ref); each step then evaluates
the block at its S draws and at u_ref in the same kernel pass (S + 1 draws) and uses

    ll_hat(u) = ll(u_ref) + K sum_{i in b} [l_i(u) - l_i(u_ref)]

(and the same for the gradient), which is still unbiased for every u_ref (the bracket has
expectation ll(u) - ll(u_ref) over a uniformly chosen block) but whose variance scales with |u -
u_ref|^2: draws lie within a few posterior sds of u_ref, where the per-row terms are close to
linear in u, so the block-to-block spread nearly cancels (the SVRG estimator of Johnson and Zhang
2013, applied per Monte Carlo draw). The cost is one extra draw per block and one full pass per
epoch.
"""

from __future__ import annotations

import numpy as np


class _Epochs:
    """The blocks a minibatch reader visits: each epoch a fresh random order of its n_blocks,
    one block per step, and at each epoch's start the reference pass (``_reference``, with the
    control variate); counts what was read."""

    def __init__(self, model, n_blocks: int, rng: np.random.Generator, control_variate: bool):
        self.model = model
        self.control_variate = control_variate
        self.n_blocks = n_blocks
        self.rng = rng
        self.order = np.empty(0, dtype=np.int64)
        self.position = 0
        self.epochs = 0
        self.blocks_read = 0

    def _next_block(self, U: np.ndarray) -> int:
        """The index of this step's block (a new epoch, at the mean of U, when one ends)."""
        if self.position == len(self.order):
            self.order = self.rng.permutation(self.n_blocks)
            self.position = 0
            self.epochs += 1
            if self.control_variate:
                self._reference(U.mean(axis=0, keepdims=True))
        b = int(self.order[self.position])
        self.position += 1
        self.blocks_read += 1
        return b

    def _reference(self, u_ref: np.ndarray) -> None:
        raise NotImplementedError

    @property
    def epochs_read(self) -> float:
        """Data read so far in passes over all rows: blocks plus one reference pass per epoch."""
        return self.blocks_read / self.n_blocks + self.epochs * self.control_variate


class MinibatchLogJoint(_Epochs):
    """Callable like ``Model.log_joint_grad``: (log p, grad) for draws U, from one block."""

    def __init__(self, model, batch_size: int, draws_per_step: int, rng: np.random.Generator,
                 control_variate: bool = True):
        model.rows.set_blocks(batch_size, draws_per_step + 1)
        super().__init__(model, model.rows.n_blocks, rng, control_variate)
        self.ref_kernel = None  # u_ref in the kernel's layout, (1, P_kernel)
        self.ref_ll = 0.0
        self.ref_G = None

    def _reference(self, u_ref: np.ndarray) -> None:
        self.ref_kernel = self.model.kernel_draws(u_ref)
        G, ll = self.model.rows.loglik_grad(self.ref_kernel)
        self.ref_G, self.ref_ll = G[0], float(ll[0])

    def __call__(self, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        b = self._next_block(U)
        S = U.shape[0]
        scale = float(self.n_blocks)
        if not self.control_variate:
            G, ll = self.model.rows.block_loglik_grad(self.model.kernel_draws(U), b)
            return self.model.add_prior(U, scale * ll, self.model.data_grad(scale * G))
        G, ll = self.model.rows.block_loglik_grad(
            np.vstack([self.model.kernel_draws(U), self.ref_kernel]), b)
        ll_hat = self.ref_ll + scale * (ll[:S] - ll[S])
        G_hat = self.ref_G[None, :] + scale * (G[:S] - G[S][None, :])
        return self.model.add_prior(U, ll_hat, self.model.data_grad(G_hat))


class GroupedMinibatch(_Epochs):
    """``MinibatchLogJoint`` for a model with group terms (``models.multilevel``): a block is a
    run of whole groups of the primary factor (``MultilevelModel.row_blocks``), and what is
    estimated is the grouped kernel's pass, (base sums, log lik, each factor's per-effect sums
    dl/db), which the model then carries through its priors and coordinates exactly. With the
    control variate, at the epoch's reference u_ref (one full pass),

        pass_hat(u) = pass(u_ref) + K [pass_b(u) - pass_b(u_ref)]

    entry by entry: unbiased for every effect, since a group's sums are all in the one block
    that holds its rows (K times its change with probability 1/K, else the reference's), and
    other factors' sums are sums over rows like the base model's."""

    def __init__(self, model, batch_size: int, rng: np.random.Generator,
                 control_variate: bool = True):
        self.blocks = model.row_blocks(batch_size)
        super().__init__(model, len(self.blocks), rng, control_variate)
        self.ref_u = None
        self.ref_effects = None
        self.ref_pass = None

    def _reference(self, u_ref: np.ndarray) -> None:
        self.ref_u = u_ref
        self.ref_effects = self.model.group_effects(u_ref)
        self.ref_pass = self.model._kernel_pass(u_ref, self.ref_effects, True)

    def __call__(self, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        block = self.blocks[self._next_block(U)]
        return self.model.log_joint_grad(U, kernel_pass=lambda U, effects, _: self._estimate(
            U, effects, block))

    def _estimate(self, U: np.ndarray, effects: list, block) -> tuple:
        K = float(self.n_blocks)
        if not self.control_variate:
            Gk, ll, dS = self.model._kernel_pass(U, effects, True, block)
            return K * Gk, K * ll, [K * d for d in dS]
        S = U.shape[0]
        both = [np.concatenate([e, r]) for e, r in zip(effects, self.ref_effects, strict=True)]
        Gk, ll, dS = self.model._kernel_pass(np.vstack([U, self.ref_u]), both, True, block)
        ref_Gk, ref_ll, ref_dS = self.ref_pass
        return (ref_Gk + K * (Gk[:S] - Gk[S:]), ref_ll + K * (ll[:S] - ll[S:]),
                [r + K * (d[:S] - d[S:]) for r, d in zip(ref_dS, dS, strict=True)])
