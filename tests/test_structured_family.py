"""The structured (arrowhead) Gaussian family against the dense full-rank family given the same
frame and factor embedded in P x P matrices; its ELBO gradient against finite differences; its
precision factorisation against a dense inverse; and the round trip through to_dict."""

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


def random_factor(rng, Pg, G, K, scale=0.3):
    """A structured lower-triangular matrix with a positive diagonal."""
    A_G = (np.tril(scale * rng.standard_normal((Pg, Pg)), -1)
           + np.diag(np.exp(scale * rng.standard_normal(Pg))))
    D = np.tril(scale * rng.standard_normal((G, K, K)), -1)
    D[:, np.arange(K), np.arange(K)] = np.exp(scale * rng.standard_normal((G, K)))
    return StructuredFactor(A_G, scale * rng.standard_normal((G, K, Pg)), D)


def random_family(rng, K, Pg=PG, n_groups=G):
    P = Pg + n_groups * K
    return Structured(Pg, n_groups, K, origin=rng.standard_normal(P),
                      frame=random_factor(rng, Pg, n_groups, K))


def random_phi(rng, fam):
    P = fam.P
    return np.concatenate([rng.standard_normal(P), 0.3 * rng.standard_normal(P),
                           0.3 * rng.standard_normal(fam.size - 2 * P)])


def pattern_entries(Pg, G, K):
    """(i, j) in u of each B entry of phi, in the documented order, written out by loops."""
    out = [(i, j) for i in range(Pg) for j in range(i)]
    out += [(Pg + g * K + k, j) for g in range(G) for k in range(K) for j in range(Pg)]
    out += [(Pg + g * K + r, Pg + g * K + c) for g in range(G) for r in range(K) for c in range(r)]
    return out


def dense_twin(fam, phi):
    """FullRank with the same origin and dense frame, and its phi for the same m and dense L."""
    L = fam.factor(phi).dense()
    fr = FullRank(fam.P, fam.origin, fam.frame.dense(), fam.frame.log_det)
    return fr, fr.phi_of(phi[:fam.P], L)


def fullrank_columns(fam, fr):
    """Columns of FullRank's phi that hold the structured family's phi entries, in its order."""
    pos = np.full((fam.P, fam.P), -1)
    pos[fr.rows, fr.cols] = np.arange(fr.rows.size)
    b = np.array([pos[i, j] for i, j in pattern_entries(fam.Pg, fam.G, fam.K)], dtype=int)
    return np.concatenate([np.arange(2 * fam.P), 2 * fam.P + b]).astype(int)


def arrowhead_precision(rng, Pg, G, K):
    """Random (H_GG, C, D) whose arrowhead H is positive definite, and H dense."""
    H_GG = rng.standard_normal((Pg, Pg))
    H_GG = H_GG @ H_GG.T
    C = rng.standard_normal((G, K, Pg))
    D = rng.standard_normal((G, K, K))
    D = D @ np.swapaxes(D, 1, 2)
    H = dense_arrowhead(H_GG, C, D)
    shift = 1.0 - min(0.0, np.linalg.eigvalsh(H).min())
    H_GG = H_GG + shift * np.eye(Pg)
    D = D + shift * np.eye(K)
    return H_GG, C, D, dense_arrowhead(H_GG, C, D)


def dense_arrowhead(H_GG, C, D):
    G, K, Pg = C.shape
    H = np.zeros((Pg + G * K, Pg + G * K))
    H[:Pg, :Pg] = H_GG
    H[Pg:, :Pg] = C.reshape(G * K, Pg)
    H[:Pg, Pg:] = H[Pg:, :Pg].T
    for g in range(G):
        s = slice(Pg + g * K, Pg + (g + 1) * K)
        H[s, s] = D[g]
    return H


def draw_inputs(rng, fam):
    return rng.standard_normal((S, fam.P)), rng.standard_normal(S), rng.standard_normal((S, fam.P))


@pytest.fixture(params=[1, 2, 3], ids=lambda k: f"K{k}")
def case(request):
    rng = np.random.default_rng(100 + request.param)
    fam = random_family(rng, request.param)
    phi = random_phi(rng, fam)
    return rng, fam, phi, *dense_twin(fam, phi)


def test_size_counts_every_pattern_entry(case):
    _, fam, phi, _, _ = case
    assert fam.size == phi.size == 2 * fam.P + len(pattern_entries(fam.Pg, fam.G, fam.K))


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


def test_moments_equal_fullrank(case):
    _, fam, phi, fr, phi_fr = case
    m, Sigma = fam.mean_cov(phi)
    m_fr, Sigma_fr = fr.mean_cov(phi_fr)
    np.testing.assert_allclose(m, m_fr, rtol=RTOL)
    np.testing.assert_allclose(fam.mean(phi), m_fr, rtol=RTOL)
    np.testing.assert_allclose(Sigma, Sigma_fr, rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(fam.marginal_sd(phi), np.sqrt(np.diag(Sigma_fr)), rtol=RTOL)


def test_global_and_group_moments_are_blocks_of_the_dense_ones(case):
    _, fam, phi, fr, phi_fr = case
    m, Sigma = fr.mean_cov(phi_fr)
    Pg, K = fam.Pg, fam.K
    m_G, S_G = fam.global_mean_cov(phi)
    np.testing.assert_allclose(m_G, m[:Pg], rtol=RTOL)
    np.testing.assert_allclose(S_G, Sigma[:Pg, :Pg], rtol=RTOL, atol=1e-12)
    m_Z, S_Z = fam.group_mean_cov(phi)
    for g in range(fam.G):
        s = slice(Pg + g * K, Pg + (g + 1) * K)
        np.testing.assert_allclose(m_Z[g], m[s], rtol=RTOL)
        np.testing.assert_allclose(S_Z[g], Sigma[s, s], rtol=RTOL, atol=1e-12)


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
    np.testing.assert_allclose(A.log_det, np.linalg.slogdet(Ad)[1], rtol=RTOL)
    C = random_factor(rng, fam.Pg, fam.G, fam.K)
    np.testing.assert_allclose(A.matmul(C).dense(), Ad @ C.dense(), rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(A.left_solve(C).dense(), np.linalg.solve(Ad, C.dense()),
                               rtol=1e-9, atol=1e-12)


def masked_distance(fam, phi_new, phi_old):
    """FullRank's distance from dense moments, over the covariance entries the structured family
    watches (the globals' block and each group's own block)."""
    m1, S1 = fam.mean_cov(phi_new)
    m0, S0 = fam.mean_cov(phi_old)
    sd1, sd0 = np.sqrt(np.diag(S1)), np.sqrt(np.diag(S0))
    group = np.concatenate([np.full(fam.Pg, -1), np.repeat(np.arange(fam.G), fam.K)])
    watched = group[:, None] == group[None, :]
    d_cov = np.max((np.abs(S1 - S0) / np.outer(sd1, sd1))[watched])
    return max(np.max(np.abs(m1 - m0) / sd1), np.max(np.abs(np.log(sd1 / sd0))), d_cov)


def test_distance_matches_the_dense_one_over_watched_entries(case):
    rng, fam, phi, fr, phi_fr = case
    phi_new = phi + 0.05 * rng.standard_normal(phi.size)
    d = fam.distance(phi_new, phi)
    np.testing.assert_allclose(d, masked_distance(fam, phi_new, phi), rtol=RTOL)
    assert d <= fr.distance(dense_twin(fam, phi_new)[1], phi_fr) * (1 + RTOL)


def test_to_dict_round_trip_is_exact(case):
    _, fam, phi, fr, phi_fr = case
    d = json.loads(json.dumps(fam.to_dict(phi)))
    assert (d["structure"], d["n_global"], d["n_groups"], d["K"]) == ("arrowhead", fam.Pg,
                                                                      fam.G, fam.K)
    np.testing.assert_allclose(fam.from_dict(d), phi, rtol=1e-10, atol=1e-10)


def test_from_dict_reexpresses_q_in_another_frame(case):
    rng, fam, phi, fr, phi_fr = case
    other = random_family(rng, fam.K)
    phi_other = other.from_dict(fam.to_dict(phi))
    m, Sigma = fam.mean_cov(phi)
    m2, Sigma2 = other.mean_cov(phi_other)
    np.testing.assert_allclose(m2, m, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(Sigma2, Sigma, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("K", [1, 2, 3])
def test_from_precision_inverts_an_arrowhead_precision(K):
    rng = np.random.default_rng(20 + K)
    H_GG, C, D, H = arrowhead_precision(rng, PG, G, K)
    F = StructuredFactor.from_precision(H_GG, C, D).dense()
    np.testing.assert_allclose(F @ F.T, np.linalg.inv(H), rtol=1e-9, atol=1e-12)
    assert np.all(np.diag(F) > 0)
    np.testing.assert_array_equal(F, np.tril(F))


def test_from_precision_refuses_an_indefinite_group_block():
    H_GG, C, D, _ = arrowhead_precision(np.random.default_rng(3), PG, G, 2)
    D[2] = -D[2]
    with pytest.raises(np.linalg.LinAlgError):
        StructuredFactor.from_precision(H_GG, C, D)


def test_from_precision_refuses_an_indefinite_schur_complement():
    H_GG, C, D, _ = arrowhead_precision(np.random.default_rng(4), PG, G, 2)
    # positive H_GG and D_g, but S = H_GG - sum C^T D^-1 C is not
    with pytest.raises(np.linalg.LinAlgError):
        StructuredFactor.from_precision(0.01 * np.eye(PG), C, D)


def gaussian_target(rng, K):
    """(mu, H) of N(mu, H^-1) with an arrowhead precision, its blocks, and log p with gradient."""
    H_GG, C, D, H = arrowhead_precision(rng, PG, G, K)
    mu = rng.standard_normal(H.shape[0])

    def logp_grad(U):
        R = U - mu
        return -0.5 * np.einsum("si,ij,sj->s", R, H, R), -R @ H

    return mu, (H_GG, C, D), logp_grad


@pytest.mark.parametrize("K", [1, 2, 3])
def test_reparam_gradient_matches_finite_differences(K):
    rng = np.random.default_rng(30 + K)
    fam = random_family(rng, K)
    phi = random_phi(rng, fam)
    _, _, logp_grad = gaussian_target(rng, K)
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


@pytest.mark.parametrize("K", [1, 2, 3])
@pytest.mark.parametrize("in_target_frame", [False, True], ids=["identity_frame", "target_frame"])
def test_stl_gradient_vanishes_at_the_gaussian_target(K, in_target_frame):
    rng = np.random.default_rng(40 + K)
    mu, blocks, logp_grad = gaussian_target(rng, K)
    F = StructuredFactor.from_precision(*blocks)
    if in_target_frame:
        fam = Structured(PG, G, K, origin=mu, frame=F)
        phi = fam.init(sd=np.ones(fam.P))
    else:
        fam = Structured(PG, G, K)
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
    expected = [f"B[u{i},u{j}]" for i, j in pattern_entries(fam.Pg, fam.G, fam.K)]
    assert labels[2 * fam.P:] == expected
    assert labels[0] == "m[u0]" and labels[fam.P] == "log_diag_L[u0]"


def test_frame_curvature_is_two_for_log_scales_only(case):
    _, fam, _, _, _ = case
    c = fam.frame_curvature()
    assert c.size == fam.size
    np.testing.assert_array_equal(c[fam.P:2 * fam.P], 2.0)
    np.testing.assert_array_equal(np.delete(c, np.arange(fam.P, 2 * fam.P)), 1.0)


def test_init_is_diagonal_at_the_given_sd():
    fam = Structured(PG, G, 2)
    sd = np.linspace(0.5, 2.0, fam.P)
    _, Sigma = fam.mean_cov(fam.init(sd))
    np.testing.assert_allclose(Sigma, np.diag(sd ** 2), rtol=RTOL)


def test_refusals():
    fam = Structured(PG, G, 2)
    phi = fam.init(np.ones(fam.P))
    with pytest.raises(ValueError, match="cov"):
        fam.init(np.ones(fam.P), cov=np.eye(fam.P))
    with pytest.raises(NotImplementedError):
        fam.quadratic_cv_mean(phi, np.eye(fam.P))
    big = Structured(1, 5001, 1)
    with pytest.raises(ValueError, match="dense"):
        big.mean_cov(big.init(np.ones(big.P)))
    with pytest.raises(ValueError, match="match"):
        Structured(PG, G, 3).from_dict(fam.to_dict(phi))


def test_distance_leaves_out_a_cross_covariance_move_alone():
    # one group coordinate whose regression on two globals rotates: means, sds and the group's
    # own variance stay put, only its covariance with the globals changes (0.8 -> 0), which
    # FullRank's distance sees and the structured family's leaves out
    fam = Structured(2, 1, 1)
    phi_old = np.concatenate([np.zeros(6), [0.0], [0.8, 0.0]])
    phi_new = np.concatenate([np.zeros(6), [0.0], [0.0, 0.8]])
    np.testing.assert_allclose(fam.distance(phi_new, phi_old), 0.0, atol=1e-12)
    fr, phi_fr_old = dense_twin(fam, phi_old)
    np.testing.assert_allclose(fr.distance(dense_twin(fam, phi_new)[1], phi_fr_old),
                               0.8 / np.sqrt(1.0 + 0.8 ** 2), rtol=RTOL)
