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
        """The index of this step's block (a new epoch, its reference at the draws U, when one
        ends)."""
        if self.position == len(self.order):
            self.order = self.rng.permutation(self.n_blocks)
            self.position = 0
            self.epochs += 1
            if self.control_variate:
                self._reference(U)
        b = int(self.order[self.position])
        self.position += 1
        self.blocks_read += 1
        return b

    def _reference(self, U: np.ndarray) -> None:
        """The epoch's reference pass at the mean of the draws U."""
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

    def _reference(self, U: np.ndarray) -> None:
        self.ref_kernel = self.model.kernel_draws(U.mean(axis=0, keepdims=True))
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
    dl/db), which the model then carries through its priors and coordinates exactly.

    The pass is the gradient of the log likelihood ll in its inputs v = (the base coordinates
    theta, the primary factor's effects b_g, the other factors' effects e), and each block's
    pass_b(v) is a function of theta, of its own groups' b_g and of the e its rows touch. With
    the control variate, at each epoch's start one pass block by block at the reference v_ref
    (q's mean) and at one-sided finite-difference steps from it gives every block's pass_b(v_ref)
    and its Jacobian J_b (the Hessian of ll_b in v, stored sparsely: theta x theta, each own
    group's b_g x (theta, b_g, e), e x (theta, e)); with d = v - v_ref,

        pass_hat(v) = pass(v_ref) + J d + K [pass_b(v) - pass_b(v_ref) - J_b d]
        ll_hat(v)   = ll(v_ref) + g.d + d.J d / 2 + K [ll_b(v) - ll_b(v_ref) - g_b.d - d.J_b d / 2]

    (g = the pass at v_ref, K blocks), with pass(v_ref) = sum_b pass_b(v_ref) and J = sum_b J_b:
    unbiased for every v, whatever the J_b (the bracket's mean over a uniform block is
    pass(v) - pass(v_ref) - J d), and its noise is the blocks' departure from their quadratic
    model, second order in d. That matters because a group's draws spread by its own posterior
    sd: the same estimator with J = 0 (SVRG at the mean) gives a group's sums K times their
    spread with probability 1 / K, noise sqrt(K) times a full-batch step's, where the groups'
    own (and the base coordinates' joint) linear terms leave only what is not quadratic in the
    group's linear predictor (nothing for a gaussian likelihood at a fixed sigma).

    The reference costs one pass over the rows with 1 + (base coordinates) + (primary terms)
    (+ the other factors' effects, when at most PAIR_EFFECTS_MAX) draws: every other factor's
    effect is stepped on its own, since a primary group's sums depend on each; beyond that
    bound those couplings are left out of J (still unbiased, noisier)."""

    def __init__(self, model, batch_size: int, rng: np.random.Generator,
                 control_variate: bool = True):
        self.blocks = model.row_blocks(batch_size)
        super().__init__(model, len(self.blocks), rng, control_variate)
        self.ref = None  # _Reference of the epoch

    def _reference(self, U: np.ndarray) -> None:
        # (the finite-difference steps are scaled to the draws' spread)
        self.ref = _Reference(self.model, self.blocks, U.mean(axis=0, keepdims=True), U)

    def __call__(self, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        b = self._next_block(U)
        return self.model.log_joint_grad(U, kernel_pass=lambda U, effects, _: self._estimate(
            U, effects, b))

    def _estimate(self, U: np.ndarray, effects: list, b: int) -> tuple:
        """pass_hat (class doc) from block b's pass at the draws U."""
        K = float(self.n_blocks)
        Gk, ll, dS = self.model._kernel_pass(U, effects, True, self.blocks[b])
        if not self.control_variate:
            return K * Gk, K * ll, [K * d for d in dS]
        return self.ref.estimate(U, effects, b, K, Gk, ll, dS)


# Other factors' effects stepped one by one in the reference pass (each one draw): beyond this,
# J leaves out the primary groups' coupling to them (unbiased still, noisier where they are
# well determined and the groups' rows share them).
PAIR_EFFECTS_MAX = 64
# One-sided finite-difference steps: this fraction of the draws' spread in each input (the
# Jacobian's accuracy only sets the estimator's noise, never its mean).
FD_STEP = 1e-3


class _Reference:
    """One epoch's reference for ``GroupedMinibatch``: per block its pass at v_ref and its
    Jacobian J_b in sparse pieces, and their sums over the blocks (class doc). v = (theta (nb),
    the primary effects B (G, K), the other effects stacked E (n_e), ``ExtraFactors`` order);
    a block's primary pieces are kept for the groups its rows touch (``rows``)."""

    def __init__(self, model, blocks, u_ref: np.ndarray, draws: np.ndarray):
        self.model = model
        nb, p = model.n_base_params, model.primary
        self.nb, self.p, self.slots = nb, p, model.extra.slots
        self.shapes = model.extra.shapes
        self.u = u_ref[0, :nb].copy()
        effects = model.group_effects(u_ref)
        self.B = effects[p][0]
        self.E = self._stack(effects)[0]
        self.n_pair = self.E.size if self.E.size <= PAIR_EFFECTS_MAX else 0
        Ud, eff_d, steps = self._stepped_points(draws)
        self.blocks = [self._block_jacobian(block, Ud, eff_d, steps) for block in blocks]
        self.full = self._sum_of_blocks()

    def _stepped_points(self, draws: np.ndarray):
        """v_ref, then v_ref with one input stepped at a time (each base coordinate, each
        primary term in every group at once, each other effect up to PAIR_EFFECTS_MAX), by
        FD_STEP of the draws' spread in that input: (base draws, effects, the steps)."""
        model, nb, p, n_pair = self.model, self.nb, self.p, self.n_pair
        K = self.B.shape[1]
        spread = draws.shape[0] > 1
        eff = model.group_effects(draws)
        spread_u = draws[:, :nb].std(axis=0) if spread else np.zeros(nb)
        spread_b = eff[p].std(axis=0).mean(axis=0) if spread else np.zeros(K)
        spread_e = self._stack(eff).std(axis=0) if spread else np.zeros(self.E.size)
        floor = 1e-4 * getattr(model, "y_scale", 1.0)
        h_u = FD_STEP * np.where(spread_u > 0, spread_u, 1e-1)
        h_b = FD_STEP * np.where(spread_b > 0, spread_b, floor / FD_STEP)
        h_e = FD_STEP * np.where(spread_e > 0, spread_e, floor / FD_STEP)[:n_pair]
        n = 1 + nb + K + n_pair
        Ud = np.repeat(self.u[None], n, axis=0)
        Ud[1 + np.arange(nb), np.arange(nb)] += h_u
        Bd = np.repeat(self.B[None], n, axis=0)
        Bd[1 + nb + np.arange(K), :, np.arange(K)] += h_b[:, None]
        Ed = np.repeat(self.E[None], n, axis=0)
        Ed[1 + nb + K + np.arange(n_pair), np.arange(n_pair)] += h_e
        eff_d = self._unstack(Ed)
        eff_d[p] = Bd
        return Ud, eff_d, np.concatenate([h_u, h_b, h_e])

    def _block_jacobian(self, block, Ud, eff_d, steps) -> _BlockJacobian:
        """A block's pass at v_ref and its Jacobian by one-sided differences (one pass over
        its rows at every stepped point)."""
        nb, K = self.nb, self.B.shape[1]
        Gk, ll, dS = self.model._kernel_pass(Ud, eff_d, True, block)
        Sp, Se = dS[self.p], self._stack(dS)
        D_G = (Gk[1:, :nb] - Gk[0, :nb]) / steps[:, None]
        D_p = (Sp[1:] - Sp[0]) / steps[:, None, None]
        D_e = (Se[1:] - Se[0]) / steps[:, None]
        rows = np.flatnonzero(np.any(Sp != 0.0, axis=(0, 2)))  # the groups it holds
        return _BlockJacobian(
            Gk=Gk[0].copy(), ll=float(ll[0]), rows=rows, Sp=Sp[0, rows], Se=Se[0].copy(),
            tt=D_G[:nb], pt=D_p[:nb, rows], pp=D_p[nb:nb + K, rows],
            pe=D_p[nb + K:, rows], et=D_e[:nb], ee=D_e[nb + K:])

    def _sum_of_blocks(self) -> _BlockJacobian:
        """The pass and Jacobian summed over the blocks (so the estimate's mean over the
        blocks is exact)."""
        G, K = self.B.shape
        blocks = self.blocks
        full = _BlockJacobian(
            Gk=sum(b.Gk for b in blocks), ll=sum(b.ll for b in blocks),
            rows=np.arange(G), Sp=np.zeros((G, K)), Se=sum(b.Se for b in blocks),
            tt=sum(b.tt for b in blocks), pt=np.zeros((self.nb, G, K)),
            pp=np.zeros((K, G, K)), pe=np.zeros((self.n_pair, G, K)),
            et=sum(b.et for b in blocks), ee=sum(b.ee for b in blocks))
        for b in blocks:
            full.Sp[b.rows] += b.Sp
            full.pt[:, b.rows] += b.pt
            full.pp[:, b.rows] += b.pp
            full.pe[:, b.rows] += b.pe
        return full

    def _stack(self, parts: list) -> np.ndarray:
        """The other factors' (S, G_f, K_f) stacked as (S, n_e) (``ExtraFactors`` order)."""
        S = parts[self.p].shape[0]
        if not self.slots:
            return np.zeros((S, 0))
        return np.hstack([parts[i].reshape(S, -1) for i in self.slots])

    def _unstack(self, flat: np.ndarray) -> list:
        out: list = [None] * (len(self.slots) + 1)
        at = 0
        for slot, (G, K) in zip(self.slots, self.shapes, strict=True):
            out[slot] = flat[:, at:at + G * K].reshape(-1, G, K)
            at += G * K
        return out

    def estimate(self, U, effects, b: int, K: float, Gk, ll, dS) -> tuple:
        """pass_hat (class doc of ``GroupedMinibatch``) from the block b's pass (Gk, ll, dS)
        at the draws U, effects."""
        nb, p = self.nb, self.p
        d_t = U[:, :nb] - self.u
        d_b = effects[p] - self.B
        d_e = self._stack(effects) - self.E
        blk = self.blocks[b]
        f_G, f_p, f_e, f_ll = self.full.linear(d_t, d_b, d_e, self.n_pair)
        b_G, b_p, b_e, b_ll = blk.linear(d_t, d_b[:, blk.rows], d_e, self.n_pair)
        G_hat = self.full.Gk + K * (Gk - blk.Gk)
        G_hat[:, :nb] += f_G - K * b_G
        ll_hat = self.full.ll + f_ll + K * (ll - blk.ll - b_ll)
        Sp = self.full.Sp + f_p + K * dS[p]
        Sp[:, blk.rows] -= K * (blk.Sp + b_p)
        Se = self.full.Se + f_e + K * (self._stack(dS) - blk.Se - b_e)
        out = self._unstack(Se)
        out[p] = Sp
        return G_hat, ll_hat, out


class _BlockJacobian:
    """A block's (or all blocks') pass at v_ref and the pieces of its Jacobian: ``tt`` [j, i] =
    dG_i / dtheta_j, ``pt`` [j, g, k] = dS_gk / dtheta_j, ``pp`` [l, g, k] = dS_gk / db_gl,
    ``pe`` [e, g, k] = dS_gk / dE_e, ``et`` [j, e] = dS_e / dtheta_j, ``ee`` [e', e] =
    dS_e / dE_e' (the primary pieces over the groups ``rows``); the pieces missing (dG / db,
    dG / dE, dS_e / db) are the transposes of these, the Hessian being symmetric."""

    def __init__(self, Gk, ll, rows, Sp, Se, tt, pt, pp, pe, et, ee):
        self.Gk, self.ll, self.rows, self.Sp, self.Se = Gk, ll, rows, Sp, Se
        self.tt, self.pt, self.pp, self.pe, self.et, self.ee = tt, pt, pp, pe, et, ee

    def linear(self, d_t, d_b, d_e, n_pair: int):
        """J d in each part (theta (S, nb), primary (S, G_b, K), other (S, n_e)), and the log
        likelihood's g.d + d.J d / 2."""
        dG = d_t @ self.tt + np.einsum("sgk,jgk->sj", d_b, self.pt) + d_e @ self.et.T
        dp = (np.einsum("sj,jgk->sgk", d_t, self.pt) + np.einsum("sgl,lgk->sgk", d_b, self.pp))
        de = d_t @ self.et
        if n_pair:
            dp += np.einsum("se,egk->sgk", d_e[:, :n_pair], self.pe)
            de[:, :n_pair] += np.einsum("sgk,egk->se", d_b, self.pe)
            de += d_e[:, :n_pair] @ self.ee
        nb = d_t.shape[1]
        lin = (d_t @ self.Gk[:nb] + np.einsum("sgk,gk->s", d_b, self.Sp) + d_e @ self.Se)
        quad = (np.sum(d_t * dG, axis=1) + np.einsum("sgk,sgk->s", d_b, dp)
                + np.sum(d_e * de, axis=1))
        return dG, dp, de, lin + 0.5 * quad
