"""The structured (arrowhead) Gaussian family against the dense full-rank family given the same
frame and factor embedded in P x P matrices, with one segment of groups and with several of
different block sizes; its ELBO gradient against finite differences; its precision
factorisation against a dense inverse; and the round trip through to_dict, also from the
single-segment form (keys n_groups and K)."""

import json

import numpy as np
import pytest

from vireg.families.fullrank import FullRank
from vireg.families.structured import Structured, StructuredFactor

RTOL = 1e-10  # the same arithmetic done blockwise and densely
FD_STEP = 1e-6
FD_RTOL = 1e-5
PG, G = 4, 5
S = 7  # Monte Carlo draws

# (G_f, K_f) per segment: one segment of each block size, then several of different sizes
SEGMENTS = [[(G, 1)], [(G, 2)], [(G, 3)], [(5, 2), (3, 1)], [(4, 3), (2, 1), (3, 2)]]


def segments_id(segments):
    return "+".join(f"{n}x{k}" for n, k in segments)


def group_starts(Pg, segments):
    """Per segment, the u index of the first coordinate of each of its groups, by loops."""
    out, i = [], Pg
    for n, k in segments:
        starts = []
        for _ in range(n):
            starts.append(i)
            i += k
        out.append(starts)
    return out


def random_factor(rng, Pg, segments, scale=0.3):
    """A structured lower-triangular matrix with a positive diagonal."""
    A_G = (np.tril(scale * rng.standard_normal((Pg, Pg)), -1)
           + np.diag(np.exp(scale * rng.standard_normal(Pg))))
    cross, blocks = [], []
    for n, k in segments:
        D = np.tril(scale * rng.standard_normal((n, k, k)), -1)
        D[:, np.arange(k), np.arange(k)] = np.exp(scale * rng.standard_normal((n, k)))
        cross.append(scale * rng.standard_normal((n, k, Pg)))
        blocks.append(D)
    return StructuredFactor(A_G, tuple(cross), tuple(blocks))


def n_coords(Pg, segments):
    return Pg + sum(n * k for n, k in segments)


def random_family(rng, segments, Pg=PG):
    return Structured(Pg, segments, origin=rng.standard_normal(n_coords(Pg, segments)),
                      frame=random_factor(rng, Pg, segments))


def random_phi(rng, fam):
    P = fam.P
    return np.concatenate([rng.standard_normal(P), 0.3 * rng.standard_normal(P),
                           0.3 * rng.standard_normal(fam.size - 2 * P)])


def pattern_entries(Pg, segments):
    """(i, j) in u of each B entry of phi, in the documented order, written out by loops: B_G,
    then every segment's cross entries, then every segment's diagonal-block entries."""
    out = [(i, j) for i in range(Pg) for j in range(i)]
    starts = group_starts(Pg, segments)
    for (_, k), firsts in zip(segments, starts, strict=True):
        out += [(s + r, j) for s in firsts for r in range(k) for j in range(Pg)]
    for (_, k), firsts in zip(segments, starts, strict=True):
        out += [(s + r, s + c) for s in firsts for r in range(k) for c in range(r)]
    return out


def group_of(Pg, segments):
    """Per coordinate of u: -1 for a global, else a number unique to its group."""
    out = [-1] * Pg
    for firsts, (_, k) in zip(group_starts(Pg, segments), segments, strict=True):
        for s in firsts:
            out += [s] * k
    return np.array(out)


def segment_of(Pg, segments):
    """Per coordinate of u: -1 for a global, else the index of its segment."""
    return np.array([-1] * Pg + [f for f, (n, k) in enumerate(segments) for _ in range(n * k)])


def block_size_of(Pg, segments):
    """Per coordinate of u: 0 for a global, else the K_f of its segment."""
    return np.array([0] * Pg + [k for n, k in segments for _ in range(n * k)])


def dense_twin(fam, phi):
    """FullRank with the same origin and dense frame, and its phi for the same m and dense L."""
    L = fam.factor(phi).dense()
    fr = FullRank(fam.P, fam.origin, fam.frame.dense(), fam.frame.log_det)
    return fr, fr.phi_of(phi[:fam.P], L)


def fullrank_columns(fam, fr):
    """Columns of FullRank's phi that hold the structured family's phi entries, in its order."""
    pos = np.full((fam.P, fam.P), -1)
    pos[fr.rows, fr.cols] = np.arange(fr.rows.size)
    b = np.array([pos[i, j] for i, j in pattern_entries(fam.Pg, fam.segments)], dtype=int)
    assert np.all(b >= 0)
    return np.concatenate([np.arange(2 * fam.P), 2 * fam.P + b]).astype(int)


def dense_arrowhead(H_GG, C, D):
    """The dense H of the blocks: C and D hold one array per segment."""
    Pg = H_GG.shape[0]
    segments = [X.shape[:2] for X in C]
    H = np.zeros((n_coords(Pg, segments),) * 2)
    H[:Pg, :Pg] = H_GG
    for firsts, C_f, D_f in zip(group_starts(Pg, segments), C, D, strict=True):
        k = C_f.shape[1]
        for s, C_g, D_g in zip(firsts, C_f, D_f, strict=True):
            H[s:s + k, :Pg] = C_g
            H[:Pg, s:s + k] = C_g.T
            H[s:s + k, s:s + k] = D_g
    return H


def arrowhead_precision(rng, Pg, segments):
    """Random (H_GG, C, D) whose arrowhead H is positive definite (C and D tuples per segment),
    and H dense."""
    H_GG = rng.standard_normal((Pg, Pg))
    H_GG = H_GG @ H_GG.T
    C = tuple(rng.standard_normal((n, k, Pg)) for n, k in segments)
    D = tuple(X @ np.swapaxes(X, 1, 2) for X in (rng.standard_normal((n, k, k))
                                                  for n, k in segments))
    shift = 1.0 - min(0.0, np.linalg.eigvalsh(dense_arrowhead(H_GG, C, D)).min())
    H_GG = H_GG + shift * np.eye(Pg)
    D = tuple(D_f + shift * np.eye(D_f.shape[1]) for D_f in D)
    return H_GG, C, D, dense_arrowhead(H_GG, C, D)


def draw_inputs(rng, fam):
    return rng.standard_normal((S, fam.P)), rng.standard_normal(S), rng.standard_normal((S, fam.P))


@pytest.fixture(params=SEGMENTS, ids=segments_id)
def case(request):
    rng = np.random.default_rng(100 + sum(n * 10 + k for n, k in request.param))
    fam = random_family(rng, request.param)
    phi = random_phi(rng, fam)
    return rng, fam, phi, *dense_twin(fam, phi)


def test_size_counts_every_pattern_entry(case):
    _, fam, phi, _, _ = case
    assert fam.size == phi.size == 2 * fam.P + len(pattern_entries(fam.Pg, fam.segments))
    assert n_coords(fam.Pg, fam.segments) == fam.P


def test_factor_reports_its_pattern(case):
    _, fam, _, _, _ = case
    assert fam.frame.n_global == fam.Pg
    assert fam.frame.segments == fam.segments
    assert fam.frame.dense().shape == (fam.P, fam.P)


def test_a_bare_array_is_one_segment():
    F = random_factor(np.random.default_rng(1), PG, [(G, 2)])
    bare = StructuredFactor(F.G_block, F.cross[0], F.diag_blocks[0])
    assert isinstance(bare.cross, tuple) and len(bare.cross) == 1
    assert bare.segments == ((G, 2),) and bare.n_global == PG
    np.testing.assert_array_equal(bare.dense(), F.dense())


def test_factor_refuses_blocks_that_do_not_fit():
    F = random_factor(np.random.default_rng(2), PG, [(G, 2), (3, 1)])
    with pytest.raises(ValueError, match="fit together"):
        StructuredFactor(F.G_block, F.cross, F.diag_blocks[:1])
    with pytest.raises(ValueError, match="fit together"):
        StructuredFactor(F.G_block, F.cross, F.diag_blocks[::-1])
    with pytest.raises(ValueError, match="fit together"):
        StructuredFactor(F.G_block[:-1, :-1], F.cross, F.diag_blocks)


def test_sample_entropy_and_log_q_equal_fullrank(case):
    rng, fam, phi, fr, phi_fr = case
    eps = rng.standard_normal((S, fam.P))
    np.testing.assert_allclose(fam.sample(phi, eps), fr.sample(phi_fr, eps), rtol=RTOL)
    np.testing.assert_allclose(fam.entropy(phi), fr.entropy(phi_fr), rtol=RTOL)
    np.testing.assert_allclose(fam.log_q(phi, eps), fr.log_q(phi_fr, eps), rtol=RTOL)


@pytest.mark.parametrize("estimator", ["reparam", "stl", "score"])
def test_draw_grads_equal_fullrank_on_the_pattern(case, estimator):
    rng, fam, phi, fr, phi_fr = case
    eps, logp, g = draw_inputs(rng, fam)
    ours = fam.draw_grads(phi, eps, logp, g, estimator)
    dense = fr.draw_grads(phi_fr, eps, logp, g, estimator)
    np.testing.assert_allclose(ours, dense[:, fullrank_columns(fam, fr)], rtol=RTOL, atol=1e-12)


@pytest.mark.parametrize("estimator", ["reparam", "stl", "score"])
def test_elbo_grad_is_the_mean_of_draw_grads(case, estimator):
    rng, fam, phi, fr, phi_fr = case
    eps, logp, g = draw_inputs(rng, fam)
    elbo, grad = fam.elbo_grad(phi, eps, logp, g, estimator)
    np.testing.assert_allclose(grad, fam.draw_grads(phi, eps, logp, g, estimator).mean(axis=0),
                               rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(elbo, fr.elbo_grad(phi_fr, eps, logp, g, estimator)[0], rtol=RTOL)


@pytest.mark.parametrize("estimator", ["reparam", "stl", "score"])
def test_elbo_grad_equals_fullrank_on_the_pattern(case, estimator):
    rng, fam, phi, fr, phi_fr = case
    eps, logp, g = draw_inputs(rng, fam)
    _, grad = fam.elbo_grad(phi, eps, logp, g, estimator)
    _, dense = fr.elbo_grad(phi_fr, eps, logp, g, estimator)
    np.testing.assert_allclose(grad, dense[fullrank_columns(fam, fr)], rtol=RTOL, atol=1e-12)


def test_moments_equal_fullrank(case):
    _, fam, phi, fr, phi_fr = case
    m, Sigma = fam.mean_cov(phi)
    m_fr, Sigma_fr = fr.mean_cov(phi_fr)
    np.testing.assert_allclose(m, m_fr, rtol=RTOL)
    np.testing.assert_allclose(fam.mean(phi), m_fr, rtol=RTOL)
    np.testing.assert_allclose(Sigma, Sigma_fr, rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(fam.marginal_sd(phi), np.sqrt(np.diag(Sigma_fr)), rtol=RTOL)


def test_groups_are_independent_given_the_globals(case):
    # the conditional covariance of the groups given the globals is block diagonal, one block
    # per group, across segments too
    _, fam, phi, _, _ = case
    _, Sigma = fam.mean_cov(phi)
    Pg = fam.Pg
    cond = Sigma[Pg:, Pg:] - Sigma[Pg:, :Pg] @ np.linalg.solve(Sigma[:Pg, :Pg], Sigma[:Pg, Pg:])
    group = group_of(Pg, fam.segments)[Pg:]
    off_block = group[:, None] != group[None, :]
    np.testing.assert_allclose(cond[off_block], 0.0, atol=1e-10)
    assert np.max(np.abs(Sigma[Pg:, Pg:][off_block])) > 1e-3  # coupled through the globals


def test_global_and_group_moments_are_blocks_of_the_dense_ones(case):
    _, fam, phi, fr, phi_fr = case
    m, Sigma = fr.mean_cov(phi_fr)
    Pg = fam.Pg
    m_G, S_G = fam.global_mean_cov(phi)
    np.testing.assert_allclose(m_G, m[:Pg], rtol=RTOL)
    np.testing.assert_allclose(S_G, Sigma[:Pg, :Pg], rtol=RTOL, atol=1e-12)
    per_segment = fam.group_mean_cov(phi)
    assert len(per_segment) == len(fam.segments)
    for (n, k), firsts, (m_Z, S_Z) in zip(fam.segments, group_starts(Pg, fam.segments),
                                         per_segment, strict=True):
        assert m_Z.shape == (n, k) and S_Z.shape == (n, k, k)
        for g, s in enumerate(firsts):
            np.testing.assert_allclose(m_Z[g], m[s:s + k], rtol=RTOL)
            np.testing.assert_allclose(S_Z[g], Sigma[s:s + k, s:s + k], rtol=RTOL, atol=1e-12)


def test_u_blocks_factor_the_covariance(case):
    _, fam, phi, fr, phi_fr = case
    A = StructuredFactor(*fam.u_blocks(phi)).dense()
    np.testing.assert_allclose(A @ A.T, fr.mean_cov(phi_fr)[1], rtol=RTOL, atol=1e-12)
    L = StructuredFactor(*fam.cholesky_blocks(phi)).dense()
    np.testing.assert_allclose(L, fr.cholesky_factor(phi_fr), rtol=RTOL)


def test_factor_solves_match_dense_ones(case):
    rng, fam, _, _, _ = case
    A = fam.frame
    Ad = A.dense()
    x = rng.standard_normal((S, fam.P))
    np.testing.assert_allclose(A.apply(x), x @ Ad.T, rtol=RTOL)
    np.testing.assert_allclose(A.apply_T(x), x @ Ad, rtol=RTOL)
    np.testing.assert_allclose(A.solve(x), np.linalg.solve(Ad, x.T).T, rtol=1e-9)
    np.testing.assert_allclose(A.solve_T(x), np.linalg.solve(Ad.T, x.T).T, rtol=1e-9)
    np.testing.assert_allclose(A.row_norms2(), np.sum(Ad ** 2, axis=1), rtol=RTOL)
    np.testing.assert_allclose(A.log_det, np.linalg.slogdet(Ad)[1], rtol=RTOL)
    C = random_factor(rng, fam.Pg, fam.segments)
    np.testing.assert_allclose(A.matmul(C).dense(), Ad @ C.dense(), rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(A.left_solve(C).dense(), np.linalg.solve(Ad, C.dense()),
                               rtol=1e-9, atol=1e-12)


def test_dense_places_every_block(case):
    # dense() against the pattern written out by loops: every pattern entry is where the
    # blocks say, and nothing is outside the pattern
    _, fam, _, _, _ = case
    A, Ad = fam.frame, fam.frame.dense()
    Pg = fam.Pg
    expected = np.zeros_like(Ad)
    expected[:Pg, :Pg] = A.G_block
    for firsts, X, D in zip(group_starts(Pg, fam.segments), A.cross, A.diag_blocks, strict=True):
        k = X.shape[1]
        for s, X_g, D_g in zip(firsts, X, D, strict=True):
            expected[s:s + k, :Pg] = X_g
            expected[s:s + k, s:s + k] = D_g
    np.testing.assert_array_equal(Ad, expected)


def test_factor_refuses_rows_of_another_length(case):
    _, fam, _, _, _ = case
    with pytest.raises(ValueError, match="coordinates"):
        fam.frame.apply(np.zeros((2, fam.P + 1)))


def test_products_refuse_another_pattern():
    rng = np.random.default_rng(5)
    A = random_factor(rng, PG, [(5, 2), (3, 1)])
    for other in ([(3, 1), (5, 2)], [(5, 2)]):
        with pytest.raises(ValueError, match="pattern"):
            A.matmul(random_factor(rng, PG, other))
        with pytest.raises(ValueError, match="pattern"):
            A.left_solve(random_factor(rng, PG, other))


def masked_distance(fam, phi_new, phi_old):
    """FullRank's distance from dense moments, over the covariance entries the structured family
    watches (the globals' block and each group's own block)."""
    m1, S1 = fam.mean_cov(phi_new)
    m0, S0 = fam.mean_cov(phi_old)
    sd1, sd0 = np.sqrt(np.diag(S1)), np.sqrt(np.diag(S0))
    group = group_of(fam.Pg, fam.segments)
    watched = group[:, None] == group[None, :]
    d_cov = np.max((np.abs(S1 - S0) / np.outer(sd1, sd1))[watched])
    return max(np.max(np.abs(m1 - m0) / sd1), np.max(np.abs(np.log(sd1 / sd0))), d_cov)


def test_distance_matches_the_dense_one_over_watched_entries(case):
    rng, fam, phi, fr, phi_fr = case
    phi_new = phi + 0.05 * rng.standard_normal(phi.size)
    d = fam.distance(phi_new, phi)
    np.testing.assert_allclose(d, masked_distance(fam, phi_new, phi), rtol=RTOL)
    assert d <= fr.distance(dense_twin(fam, phi_new)[1], phi_fr) * (1 + RTOL)


@pytest.mark.parametrize("segments", SEGMENTS[3:], ids=segments_id)
def test_distance_sees_a_move_in_any_segments_own_block(segments):
    # one B_D entry of one group moves: every mean stays, and so does every sd but one of that
    # group's, whose covariance with its neighbour in the group changes most
    fam = Structured(PG, segments)
    phi_old = fam.init(np.ones(fam.P))
    segment = segment_of(fam.Pg, segments)
    moved = 0
    for f, (_, k) in enumerate(segments):
        if k == 1:
            continue
        last = max(n for n, (i, j) in enumerate(pattern_entries(fam.Pg, segments))
                   if j >= fam.Pg and segment[i] == f)
        phi_new = phi_old.copy()
        phi_new[2 * fam.P + last] = 0.5
        d = fam.distance(phi_new, phi_old)
        np.testing.assert_allclose(d, masked_distance(fam, phi_new, phi_old), rtol=RTOL)
        np.testing.assert_allclose(d, 0.5 / np.sqrt(1.25), rtol=RTOL)  # the covariance entry
        moved += 1
    assert moved >= 1


def test_to_dict_round_trip_is_exact(case):
    _, fam, phi, fr, phi_fr = case
    d = json.loads(json.dumps(fam.to_dict(phi)))
    assert (d["structure"], d["n_global"]) == ("arrowhead", fam.Pg)
    assert d["segments"] == [[n, k] for n, k in fam.segments]
    assert len(d["L_cross"]) == len(d["L_blocks"]) == len(fam.segments)
    assert [np.shape(X) for X in d["L_cross"]] == [(n, k, fam.Pg) for n, k in fam.segments]
    assert [np.shape(D) for D in d["L_blocks"]] == [(n, k, k) for n, k in fam.segments]
    np.testing.assert_allclose(fam.from_dict(d), phi, rtol=1e-10, atol=1e-10)


def test_to_dict_holds_the_blocks_of_the_covariance_factor(case):
    _, fam, phi, fr, phi_fr = case
    d = json.loads(json.dumps(fam.to_dict(phi)))
    A = StructuredFactor(np.array(d["L_global"]), tuple(np.array(X) for X in d["L_cross"]),
                         tuple(np.array(D) for D in d["L_blocks"])).dense()
    m, Sigma = fr.mean_cov(phi_fr)
    np.testing.assert_allclose(d["m"], m, rtol=RTOL)
    np.testing.assert_allclose(A @ A.T, Sigma, rtol=1e-9, atol=1e-12)


def test_from_dict_reexpresses_q_in_another_frame(case):
    rng, fam, phi, fr, phi_fr = case
    other = random_family(rng, fam.segments)
    phi_other = other.from_dict(fam.to_dict(phi))
    m, Sigma = fam.mean_cov(phi)
    m2, Sigma2 = other.mean_cov(phi_other)
    np.testing.assert_allclose(m2, m, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(Sigma2, Sigma, rtol=1e-9, atol=1e-12)


def single_segment_dict(fam, phi):
    """q as a single-segment fit.json records it: keys n_groups and K, L_cross and L_blocks one
    nested array each."""
    (n, k), = fam.segments
    G_block, (cross,), (blocks,) = fam.u_blocks(phi)
    return {"structure": "arrowhead", "n_global": fam.Pg, "n_groups": n, "K": k,
            "m": fam.mean(phi).tolist(), "L_global": G_block.tolist(),
            "L_cross": cross.tolist(), "L_blocks": blocks.tolist()}


@pytest.mark.parametrize("K", [1, 2, 3])
def test_from_dict_reads_a_single_segment_dict(K):
    rng = np.random.default_rng(60 + K)
    fam = random_family(rng, [(G, K)])
    phi = random_phi(rng, fam)
    old = json.loads(json.dumps(single_segment_dict(fam, phi)))
    np.testing.assert_allclose(fam.from_dict(old), phi, rtol=1e-10, atol=1e-10)
    identity = Structured(PG, [(G, K)])
    m, Sigma = fam.mean_cov(phi)
    m2, Sigma2 = identity.mean_cov(identity.from_dict(old))
    np.testing.assert_allclose(m2, m, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(Sigma2, Sigma, rtol=1e-9, atol=1e-12)


def test_a_single_segment_dict_does_not_load_into_several_segments():
    rng = np.random.default_rng(7)
    fam = random_family(rng, [(G, 2)])
    old = single_segment_dict(fam, random_phi(rng, fam))
    with pytest.raises(ValueError, match="match"):
        Structured(PG, [(G, 2), (3, 1)]).from_dict(old)
    with pytest.raises(ValueError, match="match"):
        Structured(PG, [(G, 3)]).from_dict(old)


@pytest.mark.parametrize("segments", SEGMENTS, ids=segments_id)
def test_from_precision_inverts_an_arrowhead_precision(segments):
    rng = np.random.default_rng(20 + len(segments) * 7 + segments[0][1])
    H_GG, C, D, H = arrowhead_precision(rng, PG, segments)
    F = StructuredFactor.from_precision(H_GG, C, D)
    assert F.segments == tuple(segments)
    Fd = F.dense()
    np.testing.assert_allclose(Fd @ Fd.T, np.linalg.inv(H), rtol=1e-9, atol=1e-12)
    assert np.all(np.diag(Fd) > 0)
    np.testing.assert_array_equal(Fd, np.tril(Fd))


def test_from_precision_takes_bare_arrays_for_one_segment():
    H_GG, (C,), (D,), H = arrowhead_precision(np.random.default_rng(8), PG, [(G, 2)])
    F = StructuredFactor.from_precision(H_GG, C, D)
    np.testing.assert_array_equal(F.dense(), StructuredFactor.from_precision(H_GG, (C,),
                                                                             (D,)).dense())
    np.testing.assert_allclose(F.dense() @ F.dense().T, np.linalg.inv(H), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("segment", [0, 1])
def test_from_precision_refuses_an_indefinite_group_block(segment):
    H_GG, C, D, _ = arrowhead_precision(np.random.default_rng(3), PG, [(G, 2), (3, 1)])
    D = list(D)
    D[segment] = D[segment].copy()
    D[segment][2] = -D[segment][2]
    with pytest.raises(np.linalg.LinAlgError):
        StructuredFactor.from_precision(H_GG, tuple(C), tuple(D))


def test_from_precision_refuses_an_indefinite_schur_complement():
    H_GG, C, D, _ = arrowhead_precision(np.random.default_rng(4), PG, [(G, 2), (3, 1)])
    # positive H_GG and D_g, but S = H_GG - sum C^T D^-1 C is not
    with pytest.raises(np.linalg.LinAlgError):
        StructuredFactor.from_precision(0.01 * np.eye(PG), C, D)


def gaussian_target(rng, segments):
    """(mu, H) of N(mu, H^-1) with an arrowhead precision, its blocks, and log p with gradient."""
    H_GG, C, D, H = arrowhead_precision(rng, PG, segments)
    mu = rng.standard_normal(H.shape[0])

    def logp_grad(U):
        R = U - mu
        return -0.5 * np.einsum("si,ij,sj->s", R, H, R), -R @ H

    return mu, (H_GG, C, D), logp_grad


@pytest.mark.parametrize("segments", SEGMENTS, ids=segments_id)
def test_reparam_gradient_matches_finite_differences(segments):
    rng = np.random.default_rng(30 + len(segments) * 7 + segments[0][1])
    fam = random_family(rng, segments)
    phi = random_phi(rng, fam)
    _, _, logp_grad = gaussian_target(rng, segments)
    eps = rng.standard_normal((S, fam.P))

    def elbo(p):
        return np.mean(logp_grad(fam.sample(p, eps))[0]) + fam.entropy(p)

    logp, g = logp_grad(fam.sample(phi, eps))
    _, grad = fam.elbo_grad(phi, eps, logp, g, "reparam")
    fd = np.empty(phi.size)
    for i in range(phi.size):
        step = np.zeros(phi.size)
        step[i] = FD_STEP
        fd[i] = (elbo(phi + step) - elbo(phi - step)) / (2 * FD_STEP)
    np.testing.assert_allclose(grad, fd, rtol=FD_RTOL, atol=FD_RTOL * np.max(np.abs(fd)))


@pytest.mark.parametrize("segments", SEGMENTS, ids=segments_id)
@pytest.mark.parametrize("in_target_frame", [False, True], ids=["identity_frame", "target_frame"])
def test_stl_gradient_vanishes_at_the_gaussian_target(segments, in_target_frame):
    rng = np.random.default_rng(40 + len(segments) * 7 + segments[0][1])
    mu, blocks, logp_grad = gaussian_target(rng, segments)
    F = StructuredFactor.from_precision(*blocks)
    if in_target_frame:
        fam = Structured(PG, segments, origin=mu, frame=F)
        phi = fam.init(sd=np.ones(fam.P))
    else:
        fam = Structured(PG, segments)
        phi = fam.phi_of(mu, F)
    eps = rng.standard_normal((S, fam.P))
    logp, g = logp_grad(fam.sample(phi, eps))
    _, grad = fam.elbo_grad(phi, eps, logp, g, "stl")
    np.testing.assert_allclose(grad, 0.0, atol=1e-9)
    assert np.max(np.abs(fam.elbo_grad(phi, eps, logp, g, "reparam")[1])) > 1e-3


def test_labels_name_every_entry(case):
    _, fam, phi, _, _ = case
    names = [f"u{i}" for i in range(fam.P)]
    labels = fam.labels(names)
    assert len(labels) == phi.size
    expected = [f"B[u{i},u{j}]" for i, j in pattern_entries(fam.Pg, fam.segments)]
    assert labels[2 * fam.P:] == expected
    assert labels[0] == "m[u0]" and labels[fam.P] == "log_diag_L[u0]"


def test_scale_dims_count_a_groups_own_coordinates(case):
    # P for a scale parameter of a global row (lambda_i or B_ij with i a global), Pg + K_f for
    # one of a row of a group of segment f
    _, fam, _, _, _ = case
    rows = np.concatenate([np.arange(fam.P),
                           [i for i, _ in pattern_entries(fam.Pg, fam.segments)]]).astype(int)
    k = block_size_of(fam.Pg, fam.segments)[rows]
    expected = np.where(k == 0, fam.P, fam.Pg + k).astype(float)
    dims = fam.scale_dims()
    assert dims.shape == (fam.size - fam.P,)
    np.testing.assert_array_equal(dims, expected)


def test_scale_dims_of_two_segments_by_hand():
    # Pg = 2, segment 0: 2 groups of 2, segment 1: 1 group of 1; P = 7
    fam = Structured(2, [(2, 2), (1, 1)])
    lam = [7, 7, 4, 4, 4, 4, 3]
    B_G = [7]
    cross = [4] * 8 + [3] * 2
    B_D = [4, 4]
    np.testing.assert_array_equal(fam.scale_dims(), lam + B_G + cross + B_D)


def test_frame_curvature_is_two_for_log_scales_only(case):
    _, fam, _, _, _ = case
    c = fam.frame_curvature()
    assert c.size == fam.size
    np.testing.assert_array_equal(c[fam.P:2 * fam.P], 2.0)
    np.testing.assert_array_equal(np.delete(c, np.arange(fam.P, 2 * fam.P)), 1.0)


@pytest.mark.parametrize("segments", [[(G, 2)], [(5, 2), (3, 1)]], ids=segments_id)
def test_init_is_diagonal_at_the_given_sd(segments):
    fam = Structured(PG, segments)
    sd = np.linspace(0.5, 2.0, fam.P)
    _, Sigma = fam.mean_cov(fam.init(sd))
    np.testing.assert_allclose(Sigma, np.diag(sd ** 2), rtol=RTOL)


def test_refusals():
    fam = Structured(PG, [(G, 2)])
    phi = fam.init(np.ones(fam.P))
    with pytest.raises(ValueError, match="cov"):
        fam.init(np.ones(fam.P), cov=np.eye(fam.P))
    with pytest.raises(NotImplementedError):
        fam.quadratic_cv_mean(phi, np.eye(fam.P))
    big = Structured(1, [(5001, 1)])
    with pytest.raises(ValueError, match="dense"):
        big.mean_cov(big.init(np.ones(big.P)))
    with pytest.raises(ValueError, match="match"):
        Structured(PG, [(G, 3)]).from_dict(fam.to_dict(phi))
    two = Structured(PG, [(5, 2), (3, 1)])
    with pytest.raises(ValueError, match="match"):
        Structured(PG, [(3, 1), (5, 2)]).from_dict(two.to_dict(two.init(np.ones(two.P))))
    with pytest.raises(ValueError, match="match"):
        Structured(PG, [(G, 2)], frame=StructuredFactor.identity(PG, [(G, 3)]))
    with pytest.raises(ValueError, match="match"):
        Structured(PG, [(G, 2)], origin=np.zeros(PG + 2 * G + 1))
    with pytest.raises(ValueError, match="positive"):
        Structured(PG, [(G, 2), (0, 1)])


def test_distance_leaves_out_a_cross_covariance_move_alone():
    # one group coordinate whose regression on two globals rotates: means, sds and the group's
    # own variance stay put, only its covariance with the globals changes (0.8 -> 0), which
    # FullRank's distance sees and the structured family's leaves out
    fam = Structured(2, [(1, 1)])
    phi_old = np.concatenate([np.zeros(6), [0.0], [0.8, 0.0]])
    phi_new = np.concatenate([np.zeros(6), [0.0], [0.0, 0.8]])
    np.testing.assert_allclose(fam.distance(phi_new, phi_old), 0.0, atol=1e-12)
    fr, phi_fr_old = dense_twin(fam, phi_old)
    np.testing.assert_allclose(fr.distance(dense_twin(fam, phi_new)[1], phi_fr_old),
                               0.8 / np.sqrt(1.0 + 0.8 ** 2), rtol=RTOL)
