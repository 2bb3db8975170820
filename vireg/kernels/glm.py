"""The data kernel of the count, proportion, probit and Student-t likelihoods, and the
per-observation log-likelihood of every likelihood.

Same contract as ``kernels.likelihood`` (docs/derivations.md): for the rows Z (N x D), the
per-row data Y (N x 2: the response, then the binomial trials or the log exposure, else 0) and S
draws U in the kernel's layout ``[a (if intercept), b_1 .. b_D, aux...]``, return the per-draw
sums G = d/dU sum_i l_i (S x P) and ll = sum_i l_i (S,), one pass over the rows for all draws,
per-chunk partials summed in chunk order (bit-identical at any thread count). The linear
predictor eta_is = a_s + z_i . b_s (+ log exposure) and the gradient sums over Z are the same
blocked loops as the Gaussian and logistic kernels (``linear_predictors``,
``accumulate_gradient``); only the elementwise step differs, one flat loop per likelihood
(chosen outside the loop, so each vectorises on its own).

Per row, with x = eta (and r = dl/deta, which ``accumulate_gradient`` multiplies into Z):

    binomial (logit)  l = y x - n softplus(x)                     r = y - n sigmoid(x)
    bernoulli probit  l = log Phi(s x), s = 2y - 1                 r = s phi(s x) / Phi(s x)
    poisson (log)     l = y x - exp(x)                             r = y - exp(x)
    neg. binomial     with x' = x - log phi:
                      l = y x' - (y + phi) softplus(x')            r = y - (y + phi) sigmoid(x')
                      dl/dlog phi = -r - phi softplus(x')
    student_t         with e = y - x, w = exp(-2t), q = e^2 w / nu:
                      l = -(nu + 1)/2 log1p(q)                     r = (nu + 1) e w / (nu (1 + q))
                      dl/dt = -1 + (nu + 1) q / (1 + q)
                      dl/dlog nu = nu/2 (psi((nu+1)/2) - psi(nu/2)) - 1/2 - nu/2 log1p(q)
                                   + (nu + 1)/2 q / (1 + q)

The terms of each row that do not involve x are left to the model: log C(n, y) and -log y!
(constants) and the negative binomial's log Gamma(y + phi) - log Gamma(phi), which depends on phi
and y only, summed once from the response's histogram (``dispersion_terms``). The Student-t
per-row constant log Gamma((nu+1)/2) - log Gamma(nu/2) - log(nu pi)/2 - t is added here, times
the rows of the call.
"""

import math

import numpy as np
from numba import njit, prange

from vireg.kernels.codes import (  # noqa: F401  (re-exported)
    BINOMIAL,
    GAUSSIAN,
    LOGIT,
    NEGATIVE_BINOMIAL,
    POISSON,
    PROBIT,
    STUDENT_T,
)
from vireg.kernels.elementary import LOG1P_MAX, exp_nonpositive, log1p_any, log1p_unit
from vireg.kernels.flags import JIT_OPTIONS
from vireg.kernels.likelihood import (
    HALF_LOG_2PI,
    ROW_BLOCK_MIN_DRAWS,
    _reduce_chunks,
    _renamed,
    _split_draws,
    accumulate_gradient,
    add_transposed,
    block_rows,
    block_rows_for,
    linear_predictors,
    prefetch_next_block,
    widening_marker,
    widening_rows,
)
from vireg.kernels.special import HALF_LOG_PI, digamma, log_ndtr_and_mills, trigamma

# exp_nonpositive floors its argument at -40: log-means beyond +-EXP_EXACT are recomputed with
# math.exp (a rare, scalar pass over the block).
EXP_EXACT = 38.0



@njit(inline="always", **JIT_OPTIONS)
def uses_offset(family):
    return family == POISSON or family == NEGATIVE_BINOMIAL  # noqa: SIM109 (Numba: no tuple "in")


@njit(inline="always", **JIT_OPTIONS)
def _softplus_sigmoid_exact(x):
    """``_softplus_sigmoid`` through libm, exact for every x (exp_nonpositive floors its
    argument at -40, which a large n or phi multiplying softplus would show)."""
    if x > 0.0:
        e = math.exp(-x)
        return x + math.log1p(e), 1.0 / (1.0 + e)
    e = math.exp(x)
    return math.log1p(e), e / (1.0 + e)


@njit(inline="always", **JIT_OPTIONS)
def _softplus_sigmoid(x):
    """(softplus(x), sigmoid(x)) from e = exp(-|x|) <= 1, as in the logistic kernel."""
    e = exp_nonpositive(-abs(x))
    inv = 1.0 / (1.0 + e)
    sig = inv if x >= 0.0 else e * inv
    return max(x, 0.0) + log1p_unit(e), sig


@njit(**JIT_OPTIONS)
def _gaussian_terms(q, yb, w, llb, db, n):
    """e = y - eta: l = -e^2 w / 2 (the kernel part), r = e w, d = e^2 w."""
    for k in range(n):
        e = yb[k] - q[k]
        llb[k] = -0.5 * e * e * w[k]
        db[k] = e * e * w[k]
        q[k] = e * w[k]


@njit(**JIT_OPTIONS)
def _logit_terms(q, yb, llb, n):
    for k in range(n):
        sp, sig = _softplus_sigmoid(q[k])
        llb[k] = yb[k] * q[k] - sp
        q[k] = yb[k] - sig


@njit(**JIT_OPTIONS)
def _binomial_terms(q, yb, nb, llb, xs, n):
    """xs keeps eta for the entries below the vector exp's range, recomputed with libm (n times
    a floored softplus would be off by n e^-40)."""
    far = 0
    for k in range(n):
        x = q[k]
        sp, sig = _softplus_sigmoid(x)
        llb[k] = yb[k] * x - nb[k] * sp
        xs[k] = x
        far += x < -EXP_EXACT
        q[k] = yb[k] - nb[k] * sig
    if far == 0:
        return
    for k in range(n):
        if xs[k] < -EXP_EXACT:
            sp, sig = _softplus_sigmoid_exact(xs[k])
            llb[k] = yb[k] * xs[k] - nb[k] * sp
            q[k] = yb[k] - nb[k] * sig


@njit(**JIT_OPTIONS)
def _poisson_terms(q, yb, llb, xb, n):
    """xb keeps eta, for the rare entries beyond the vector exp's range (libm's exp)."""
    far = 0
    for k in range(n):  # branch-free, so that it vectorises
        x = q[k]
        e = exp_nonpositive(-abs(x))
        mu = 1.0 / e if x >= 0.0 else e
        llb[k] = yb[k] * x - mu
        xb[k] = x
        far += abs(x) > EXP_EXACT
        q[k] = yb[k] - mu
    if far == 0:
        return
    for k in range(n):
        if abs(xb[k]) > EXP_EXACT:
            mu = math.exp(xb[k])
            llb[k] = yb[k] * xb[k] - mu
            q[k] = yb[k] - mu


@njit(**JIT_OPTIONS)
def _negative_binomial_terms(q, yb, log_phi, phi, llb, db, xs, n):
    """xs keeps x' for the entries below the vector exp's range (phi far above the mean),
    recomputed with libm: (y + phi) times a floored softplus would be off by phi e^-40."""
    far = 0
    for k in range(n):
        x = q[k] - log_phi[k]
        sp, sig = _softplus_sigmoid(x)
        y = yb[k]
        llb[k] = y * x - (y + phi[k]) * sp
        db[k] = sp
        xs[k] = x
        far += x < -EXP_EXACT
        q[k] = y - (y + phi[k]) * sig
    if far == 0:
        return
    for k in range(n):
        if xs[k] < -EXP_EXACT:
            sp, sig = _softplus_sigmoid_exact(xs[k])
            y = yb[k]
            llb[k] = y * xs[k] - (y + phi[k]) * sp
            db[k] = sp
            q[k] = y - (y + phi[k]) * sig


@njit(**JIT_OPTIONS)
def _student_t_terms(q, yb, w_nu, nu1, llb, db, d2b, qs, n):
    """w_nu = exp(-2t) / nu and nu1 = nu + 1 per entry (``_entry_auxiliary``): one division
    per entry. qs keeps q for the entries beyond log1p_any's range (a residual beyond 16
    sqrt(nu) sigma), whose log1p is recomputed with libm."""
    far = 0
    for k in range(n):
        e = yb[k] - q[k]
        qq = e * e * w_nu[k]
        inv = 1.0 / (1.0 + qq)
        l1 = log1p_any(min(qq, LOG1P_MAX))
        qs[k] = qq
        far += qq > LOG1P_MAX
        llb[k] = -0.5 * nu1[k] * l1
        db[k] = qq * inv
        d2b[k] = l1
        q[k] = nu1[k] * e * w_nu[k] * inv
    if far == 0:
        return
    for k in range(n):
        if qs[k] > LOG1P_MAX:
            l1 = math.log1p(qs[k])
            llb[k] = -0.5 * nu1[k] * l1
            d2b[k] = l1


@njit(**JIT_OPTIONS)
def _probit_terms(q, yb, llb, n):
    for k in range(n):
        s = 2.0 * yb[k] - 1.0
        lp, mills = log_ndtr_and_mills(s * q[k])
        llb[k] = lp
        q[k] = s * mills


@njit(**JIT_OPTIONS)
def _elementwise(family, q, yb, xb, a0, a1, llb, db, d2b, n):
    """The likelihood's elementwise step over n = rows x draws entries: q holds eta on entry and
    r = dl/deta on exit; llb, db, d2b the per-entry terms summed per draw (see module doc).
    xb: trials (binomial) or the log exposure, already added into q; a0, a1 the per-entry
    auxiliary parameters (``_entry_auxiliary``). One function per likelihood, each with only the
    arrays it reads, so that LLVM can prove them apart and vectorise its loop."""
    if family == GAUSSIAN:
        _gaussian_terms(q, yb, a0, llb, db, n)
    elif family == LOGIT:
        _logit_terms(q, yb, llb, n)
    elif family == BINOMIAL:
        _binomial_terms(q, yb, xb, llb, a0, n)
    elif family == POISSON:
        _poisson_terms(q, yb, llb, xb, n)
    elif family == NEGATIVE_BINOMIAL:
        _negative_binomial_terms(q, yb, a0, a1, llb, db, d2b, n)
    elif family == STUDENT_T:
        _student_t_terms(q, yb, a0, a1, llb, db, d2b, xb, n)
    elif family == PROBIT:
        _probit_terms(q, yb, llb, n)


@njit(**JIT_OPTIONS)
def _entry_auxiliary(family, aux, a0, a1, block):
    """Each draw's auxiliary parameters for every entry of a block (the same in every block),
    in the form the elementwise step reads: negative binomial a0 = log phi, a1 = phi; Student-t
    a0 = w = exp(-2t), a1 = nu (one exp per draw, not per row)."""
    S = aux.shape[0]
    for s in range(S):
        if family == NEGATIVE_BINOMIAL:
            u, v = aux[s, 0], math.exp(aux[s, 0])
        elif family == STUDENT_T:
            nu = math.exp(aux[s, 1])
            u, v = math.exp(-2.0 * aux[s, 0]) / nu, nu + 1.0
        elif family == GAUSSIAN:
            u, v = math.exp(-2.0 * aux[s, 0]), 0.0
        else:
            u, v = aux[s, 0], aux[s, 1]
        for r in range(block):
            a0[r * S + s] = u
            a1[r * S + s] = v


@njit(**JIT_OPTIONS)
def _glm_chunk(family, Z, Y, a, B, Bt, aux, start, stop, with_grad, G, Gt, sums, widen,
               W, gid, Bg, Sg, Xi, Xw, Bx, R):
    """Adds rows start .. stop - 1 to G (sum r z) and sums ([sum r, sum l, sum d, sum d2]);
    widen as in ``likelihood._gaussian_chunk``. With group terms (W: N x K, K > 0), eta_is
    gains W_i . Bg[gid_i, :, s] and Sg[gid_i, :, s] gains r_is W_i, in row order (a chunk holds
    whole groups, so no other chunk writes them). Other factors' terms (Xi, Xw: N x E, E > 0)
    add sum_e Xw[i, e] Bx[Xi[i, e], s] to eta_is, and R[i, s] (when R has rows) receives r_is
    for ``gather_effect_sums``."""
    S = B.shape[0]
    block = block_rows_for(Z, S)
    work = np.empty((8, block * S))
    q, yb, xb, a0, a1, llb, db, d2b = (work[0], work[1], work[2], work[3], work[4], work[5],
                                       work[6], work[7])
    acc = np.empty(W.shape[1] * S)
    _entry_auxiliary(family, aux, a0, a1, block)
    db[:] = 0.0
    d2b[:] = 0.0
    offset = uses_offset(family)
    wide = widening_rows(widen, block, Z.shape[1])
    for b0 in range(start, stop, block):
        nb = min(stop, b0 + block) - b0
        rows, first = block_rows(Z, b0, nb, wide)
        linear_predictors(rows, first, nb, B, Bt, a, q)
        prefetch_next_block(Z, b0, block, S)
        for r in range(nb):
            yr = Y[b0 + r, 0]
            xr = Y[b0 + r, 1]
            for s in range(S):
                yb[r * S + s] = yr
                xb[r * S + s] = xr
                if offset:
                    q[r * S + s] += xr
        _add_group_terms(W, gid, Bg, b0, nb, q, S)
        _add_extra_terms(Xi, Xw, Bx, b0, nb, q, S)
        _elementwise(family, q, yb, xb, a0, a1, llb, db, d2b, nb * S)
        _scatter_group_sums(W, gid, Sg, b0, nb, q, S, acc)
        if R.shape[0] > 0:
            for r in range(nb):
                for s in range(S):
                    R[b0 + r, s] = q[r * S + s]
        for s in range(S):
            s0 = 0.0
            s1 = 0.0
            s2 = 0.0
            s3 = 0.0
            for r in range(nb):
                k = r * S + s
                s0 += q[k]
                s1 += llb[k]
                s2 += db[k]
                s3 += d2b[k]
            sums[0, s] += s0
            sums[1, s] += s1
            sums[2, s] += s2
            sums[3, s] += s3
        if with_grad:
            accumulate_gradient(rows, first, nb, q, G, Gt)
    if with_grad:
        add_transposed(G, Gt)


@njit(inline="always", **JIT_OPTIONS)
def _add_group_terms(W, gid, Bg, b0, nb, q, S):
    """q[r S + s] += sum_k W[b0 + r, k] Bg[g, k, s], g the row's group (nothing for K = 0)."""
    K = W.shape[1]
    if K == 0:
        return
    for r in range(nb):
        i = b0 + r
        g = gid[i]
        for k in range(K):
            wk = W[i, k]
            for s in range(S):
                q[r * S + s] += wk * Bg[g, k, s]


@njit(inline="always", **JIT_OPTIONS)
def _add_extra_terms(Xi, Xw, Bx, b0, nb, q, S):
    """q[r S + s] += sum_e Xw[b0 + r, e] Bx[Xi[b0 + r, e], s] (nothing for E = 0)."""
    E = Xi.shape[1]
    if E == 0:
        return
    for r in range(nb):
        i = b0 + r
        for e in range(E):
            w = Xw[i, e]
            j = Xi[i, e]
            for s in range(S):
                q[r * S + s] += w * Bx[j, s]


@njit(parallel=True, **JIT_OPTIONS)
def gather_effect_sums(R, ptr, rows, weights):
    """Out[j, s] = sum over t in ptr[j] .. ptr[j + 1] - 1 of R[rows[t], s] weights[t]: each
    effect's sum of r_is w_i over its rows (in the order given, ascending rows), effects in
    parallel, so the sums are the same at any thread count."""
    n = ptr.shape[0] - 1
    S = R.shape[1]
    out = np.zeros((n, S))
    for j in prange(n):
        for t in range(ptr[j], ptr[j + 1]):
            i = rows[t]
            w = weights[t]
            for s in range(S):
                out[j, s] += R[i, s] * w
    return out


@njit(inline="always", **JIT_OPTIONS)
def _scatter_group_sums(W, gid, Sg, b0, nb, q, S, acc):
    """Sg[g, k, s] += sum of q[r S + s] W[b0 + r, k] over the block's rows of group g (q holds
    r = dl/deta). The rows are sorted by group, so each run of a group's rows is summed in the
    registers ``acc`` (K S entries) and added to Sg once: a store per row into Sg would chain
    every row's addition through memory."""
    K = W.shape[1]
    if K == 0:
        return
    acc[:] = 0.0
    current = gid[b0]
    for r in range(nb):
        i = b0 + r
        g = gid[i]
        if g != current:
            _flush_group_sums(Sg, current, acc, K, S)
            current = g
        for k in range(K):
            wk = W[i, k]
            for s in range(S):
                acc[k * S + s] += q[r * S + s] * wk
    _flush_group_sums(Sg, current, acc, K, S)


@njit(inline="always", **JIT_OPTIONS)
def _flush_group_sums(Sg, g, acc, K, S):
    for k in range(K):
        for s in range(S):
            Sg[g, k, s] += acc[k * S + s]
            acc[k * S + s] = 0.0


@njit(**JIT_OPTIONS)
def _auxiliary(U, first):
    """(S, 2) auxiliary parameters: the kernel columns from ``first`` on (zeros if fewer)."""
    S, P = U.shape
    aux = np.zeros((S, 2))
    for s in range(S):
        for k in range(min(2, P - first)):
            aux[s, k] = U[s, first + k]
    return aux


def _glm_loglik_grad(family, Z, Y, U, has_intercept, chunk_rows, with_grad):
    """(G, ll) of the family's log-likelihood over the rows (module doc), for each draw."""
    N, D = Z.shape
    S, P = U.shape
    off = 1 if has_intercept else 0
    n_chunks = (N + chunk_rows - 1) // chunk_rows
    grad_part = np.zeros((n_chunks, S, D if with_grad else 0))
    group_part = np.zeros((n_chunks, S // 8, D if with_grad else 0, 8))
    sum_part = np.zeros((n_chunks, 4, S))
    widen = Z.itemsize < 8 and S >= ROW_BLOCK_MIN_DRAWS
    marker = widening_marker(Z)
    a, B, Bt = _split_draws(U, has_intercept, D)
    aux = _auxiliary(U, off + D)
    no_w, no_id, no_b = np.zeros((0, 0)), np.zeros(0, dtype=np.int64), np.zeros((0, 0, 0))
    no_xi = np.zeros((0, 0), dtype=np.int64)
    for c in prange(n_chunks):
        start = c * chunk_rows
        stop = min(N, start + chunk_rows)
        if widen:
            _glm_chunk(family, Z, Y, a, B, Bt, aux, start, stop, with_grad, grad_part[c],
                       group_part[c], sum_part[c], marker, no_w, no_id, no_b, no_b, no_xi, no_w,
                       no_w, no_w)
        else:
            _glm_chunk(family, Z, Y, a, B, Bt, aux, start, stop, with_grad, grad_part[c],
                       group_part[c], sum_part[c], None, no_w, no_id, no_b, no_b, no_xi, no_w,
                       no_w, no_w)
    G_sum, sums = _reduce_chunks(grad_part, sum_part)
    return _finish(family, G_sum, sums, aux, N, P, has_intercept)


@njit(**JIT_OPTIONS)
def _finish(family, G_sum, sums, aux, N, P, has_intercept):
    """(G, ll) from the reduced sums: the intercept's and the auxiliary parameters' gradients and
    the per-draw terms of the log-likelihood (module doc)."""
    S = sums.shape[1]
    off = 1 if has_intercept else 0
    D = G_sum.shape[1]
    G = np.zeros((S, P))
    ll = np.empty(S)
    for s in range(S):
        if has_intercept:
            G[s, 0] = sums[0, s]
        for j in range(D):
            G[s, off + j] = G_sum[s, j]
        ll[s] = sums[1, s]
        k = off + D
        if family == GAUSSIAN:
            ll[s] -= N * (HALF_LOG_2PI + aux[s, 0])
            G[s, k] = -N + sums[2, s]
        elif family == NEGATIVE_BINOMIAL:
            G[s, k] = -sums[0, s] - math.exp(aux[s, 0]) * sums[2, s]
        elif family == STUDENT_T:
            t, nu = aux[s, 0], math.exp(aux[s, 1])
            ll[s] += N * (math.lgamma(0.5 * (nu + 1.0)) - math.lgamma(0.5 * nu)
                          - 0.5 * math.log(nu) - HALF_LOG_PI - t)
            G[s, k] = -N + (nu + 1.0) * sums[2, s]
            G[s, k + 1] = (N * (0.5 * nu * (digamma(0.5 * (nu + 1.0)) - digamma(0.5 * nu)) - 0.5)
                           - 0.5 * nu * sums[3, s] + 0.5 * (nu + 1.0) * sums[2, s])
    return G, ll


def _grouped_loglik_grad(family, Z, Y, W, gid, chunk_starts, U, Bg, has_intercept, with_grad,
                         Xi, Xw, Bx, R):
    """``_glm_loglik_grad`` with group terms: rows sorted by the primary factor, chunk c the rows
    chunk_starts[c] .. chunk_starts[c + 1] - 1 (whole groups); Bg (G x K x S) the draws' group
    effects on the kernel's scale. Returns (G, ll, Sg), Sg[g, k, s] = sum over the group's rows
    of r_is W_ik, each group's sum formed by one thread in row order (the same result at any
    thread count). The other factors' effects Bx (n x S) are reached through Xi and Xw
    (``_glm_chunk``); R (N x S, or 0 rows for none) receives each row's r."""
    N, D = Z.shape
    S, P = U.shape
    n_chunks = chunk_starts.shape[0] - 1
    grad_part = np.zeros((n_chunks, S, D if with_grad else 0))
    group_part = np.zeros((n_chunks, S // 8, D if with_grad else 0, 8))
    sum_part = np.zeros((n_chunks, 4, S))
    Sg = np.zeros(Bg.shape)
    widen = Z.itemsize < 8 and S >= ROW_BLOCK_MIN_DRAWS
    marker = widening_marker(Z)
    a, B, Bt = _split_draws(U, has_intercept, D)
    aux = _auxiliary(U, (1 if has_intercept else 0) + D)
    for c in prange(n_chunks):
        start = chunk_starts[c]
        stop = chunk_starts[c + 1]
        if widen:
            _glm_chunk(family, Z, Y, a, B, Bt, aux, start, stop, with_grad, grad_part[c],
                       group_part[c], sum_part[c], marker, W, gid, Bg, Sg, Xi, Xw, Bx, R)
        else:
            _glm_chunk(family, Z, Y, a, B, Bt, aux, start, stop, with_grad, grad_part[c],
                       group_part[c], sum_part[c], None, W, gid, Bg, Sg, Xi, Xw, Bx, R)
    G_sum, sums = _reduce_chunks(grad_part, sum_part)
    # The per-row constants count the rows of these chunks (a minibatch block's), not all N
    n_rows = chunk_starts[n_chunks] - chunk_starts[0] if n_chunks > 0 else 0
    G, ll = _finish(family, G_sum, sums, aux, n_rows, P, has_intercept)
    return G, ll, Sg


glm_loglik_grad = njit(parallel=True, **JIT_OPTIONS)(_glm_loglik_grad)
grouped_loglik_grad = njit(parallel=True, **JIT_OPTIONS)(_grouped_loglik_grad)
glm_loglik_grad_serial = njit(parallel=False, **JIT_OPTIONS)(
    _renamed(_glm_loglik_grad, "_serial"))


@njit(inline="always", **JIT_OPTIONS)
def _row_loglik(family, y, x, eta, aux0, aux1):
    """log p(y | eta) of one row with every constant (x: trials, or the log exposure already in
    eta); gaussian and student_t on the standardised response (the model adds -log s_y)."""
    if family == GAUSSIAN:
        e = y - eta
        return -HALF_LOG_2PI - aux0 - 0.5 * e * e * math.exp(-2.0 * aux0)
    if family == LOGIT:
        sp, _ = _softplus_sigmoid_exact(eta)
        return y * eta - sp
    if family == PROBIT:
        return log_ndtr_and_mills((2.0 * y - 1.0) * eta)[0]
    if family == BINOMIAL:
        sp, _ = _softplus_sigmoid_exact(eta)
        return (y * eta - x * sp + math.lgamma(x + 1.0) - math.lgamma(y + 1.0)
                - math.lgamma(x - y + 1.0))
    if family == POISSON:
        return y * eta - math.exp(eta) - math.lgamma(y + 1.0)
    if family == NEGATIVE_BINOMIAL:
        phi = math.exp(aux0)
        xs = eta - aux0
        sp, _ = _softplus_sigmoid_exact(xs)
        return y * xs - (y + phi) * sp + rising_log_terms(y, phi)[0] - math.lgamma(y + 1.0)
    # STUDENT_T
    nu = math.exp(aux1)
    e = y - eta
    return (math.lgamma(0.5 * (nu + 1.0)) - math.lgamma(0.5 * nu) - 0.5 * math.log(nu)
            - HALF_LOG_PI - aux0 - 0.5 * (nu + 1.0) * math.log1p(e * e * math.exp(-2.0 * aux0) / nu))


@njit(parallel=True, **JIT_OPTIONS)
def pointwise_loglik(family, Z, Y, U, has_intercept, rows, shift):
    """L[s, k] = log p(y_i | theta_s) for i = rows[k] and every draw s (S x len(rows)), with
    every constant of the row (``_row_loglik``); rows in parallel, each entry computed alone, so
    the result is the same at any thread count. ``shift`` (S x len(rows), or 0 x 0 for none)
    is added to each linear predictor: the row's group effects, on the kernel's scale."""
    S, P = U.shape
    D = Z.shape[1]
    off = 1 if has_intercept else 0
    aux = _auxiliary(U, off + D)
    L = np.empty((S, rows.shape[0]))
    offset = uses_offset(family)
    shifted = shift.shape[0] > 0
    for k in prange(rows.shape[0]):
        i = rows[k]
        zi = Z[i]
        for s in range(S):
            eta = U[s, 0] if has_intercept else 0.0
            for j in range(D):
                eta += zi[j] * U[s, off + j]
            if offset:
                eta += Y[i, 1]
            if shifted:
                eta += shift[s, k]
            L[s, k] = _row_loglik(family, Y[i, 0], Y[i, 1], eta, aux[s, 0], aux[s, 1])
    return L


# Below this count the negative binomial's Gamma ratios are summed term by term: the difference
# lgamma(y + phi) - lgamma(phi) loses lgamma(phi) x 1e-16 to cancellation (0.04 at phi = e^25)
RISING_SUM_MAX = 4096


@njit(inline="always", **JIT_OPTIONS)
def rising_log_terms(y, phi):
    """(log Gamma(y + phi) - log Gamma(phi), psi(y + phi) - psi(phi), psi'(y + phi) - psi'(phi))
    for a count y: the sums over j < y of log(phi + j), 1/(phi + j) and -1/(phi + j)^2 for y
    below RISING_SUM_MAX, else the differences of the functions."""
    if y < RISING_SUM_MAX:
        lg = 0.0
        d1 = 0.0
        d2 = 0.0
        for j in range(int(y)):
            v = phi + j
            lg += math.log(v)
            d1 += 1.0 / v
            d2 -= 1.0 / (v * v)
        return lg, d1, d2
    return (math.lgamma(y + phi) - math.lgamma(phi), digamma(y + phi) - digamma(phi),
            trigamma(y + phi) - trigamma(phi))


@njit(**JIT_OPTIONS)
def dispersion_terms(values, counts, log_phi):
    """For each draw's log phi: (sum_i log Gamma(y_i + phi) - log Gamma(phi), its derivative in
    log phi, phi sum_i psi(y_i + phi) - psi(phi), and the second derivative, adding
    phi^2 sum_i psi'(y_i + phi) - psi'(phi)) from the response's histogram (distinct values and
    their counts, ``rising_log_terms``), so the cost does not grow with the rows."""
    S = log_phi.shape[0]
    out = np.zeros((3, S))
    for s in range(S):
        phi = math.exp(log_phi[s])
        v0 = 0.0
        d1 = 0.0
        d2 = 0.0
        for m in range(values.shape[0]):
            c = counts[m]
            lg, dg, tg = rising_log_terms(values[m], phi)
            v0 += c * lg
            d1 += c * dg
            d2 += c * tg
        out[0, s] = v0
        out[1, s] = phi * d1
        out[2, s] = phi * d1 + phi * phi * d2
    return out
