"""Models with group terms: the hand-derived gradient, the arrowhead Hessian, the EM start,
the outputs, predict, and one-line errors on bad input."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import write_csv
from typer.testing import CliRunner

from vireg.assemble import build_model
from vireg.cli import app
from vireg.config import config_from_dict
from vireg.grouped_start import find_start, frame_hessian
from vireg.laplace import base_start

DATA = Path(__file__).parent / "data" / "multilevel"
runner = CliRunner()


def grouped_data(tmp_path, family="gaussian", n=400, G=12, seed=0, levels=None):
    """A CSV with y, x, z, a group column g (levels ``levels`` or g0..) and a second column h
    (5 levels, crossed with g and without an effect)."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, G, n)
    x, z = rng.standard_normal(n), rng.standard_normal(n)
    b0, b1 = rng.normal(0, 0.7, G), rng.normal(0, 0.4, G)
    eta = 0.3 + 0.8 * x - 0.5 * z + b0[g] + b1[g] * x
    if family in ("bernoulli", "probit"):
        y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int)
    elif family in ("poisson", "negative_binomial"):
        y = rng.poisson(np.exp(0.3 * eta))
    elif family == "binomial":
        y = rng.binomial(10, 1 / (1 + np.exp(-eta)))
    else:
        y = eta + rng.normal(0, 0.8, n)
    names = levels or [f"g{j}" for j in range(G)]
    cols = {"y": y, "x": x, "z": z, "g": [names[j] for j in g],
            "h": np.random.default_rng(seed + 100).integers(0, 5, n)}
    if family == "binomial":
        cols["n"] = np.full(n, 10)
    return write_csv(tmp_path / "grouped.csv", cols)


def model_of(path, formula, family="gaussian", **extra):
    data = {"path": str(path), "formula": formula}
    data.update(extra.pop("data", {}))
    cfg = {"data": data, "model": {"family": family, "prior": {"group_sd": "half_normal(1)"}}}
    cfg["model"].update(extra)
    return build_model(config_from_dict(cfg))


FORMULAS = ["y ~ x + z + (1 | g)", "y ~ x + z + (1 + x | g)", "y ~ x + (1 + x || g)",
            "y ~ z + (0 + x | g)", "y ~ x + (1 + x + z | g)", "y ~ x + (1 + x | g) + (1 | h)",
            "y ~ x + (1 | g/h)"]


def random_centring(model, rng):
    """Random lambda and mu for every factor."""
    model.centring = [rng.uniform(0, 1, c.shape) for c in model.centring]
    model.cor_centring = [rng.uniform(0, 1, c.shape) for c in model.cor_centring]


def assert_gradient_matches_finite_differences(model, u):
    """The log joint's gradient at u against central differences, and ``log_joint_values``
    against ``log_joint_grad``'s log p."""
    _, g = model.log_joint_grad(u[None])
    h = 1e-5
    E = np.eye(model.n_params) * h
    lp, _ = model.log_joint_grad(np.vstack([u + E, u - E]))
    fd = (lp[:model.n_params] - lp[model.n_params:]) / (2 * h)
    np.testing.assert_allclose(g[0], fd, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(g).max()))
    values = model.log_joint_values(np.vstack([u + E, u - E])[:4])
    np.testing.assert_allclose(values, lp[:4], rtol=1e-13)


def assert_same_posterior(mini, full, tol: float = 0.1) -> None:
    """Every reported quantity's and group effect's mean within ``tol`` of the full-batch
    posterior sd, and their sds within 10%."""
    rows = {r["parameter"]: r for r in full.summary_rows()}
    for r in mini.summary_rows():
        ref = rows[r["parameter"]]
        assert abs(r["mean"] - ref["mean"]) < tol * ref["sd"], (r["parameter"], r, ref)
        assert abs(r["sd"] / ref["sd"] - 1) < 0.1, (r["parameter"], r["sd"], ref["sd"])
    for a, b in zip(mini.group_rows, full.group_rows, strict=True):
        assert abs(a["mean"] - b["mean"]) < tol * b["sd"] and abs(a["sd"] / b["sd"] - 1) < 0.1


@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("family", ["gaussian", "bernoulli", "poisson", "binomial",
                                    "negative_binomial", "student_t", "probit"])
def test_gradient_matches_finite_differences(tmp_path, formula, family):
    """Every coordinate (base, log tau, the correlation, each group's effects) at a random
    point, with random centrings lambda and mu."""
    path = grouped_data(tmp_path, family)
    if family == "binomial":
        formula = formula.replace("y ~", "p(y, n) ~")
    link = {"link": "probit"} if family == "probit" else {}
    model = model_of(path, formula, "bernoulli" if family == "probit" else family, **link)
    rng = np.random.default_rng(1)
    random_centring(model, rng)
    assert_gradient_matches_finite_differences(model, rng.normal(0, 0.3, model.n_params))


def random_conditioning(model, rng):
    """Random (H, r) for every factor: H positive semi-definite (one group's singular)."""
    out = []
    for lay in model.layouts:
        A = rng.normal(0, 1, (lay.G, lay.K, lay.K))
        H = np.matmul(A, np.swapaxes(A, 1, 2)) * rng.uniform(0, 20, (lay.G, 1, 1))
        H[0] = 0.0
        out.append((H, rng.normal(0, 2, (lay.G, lay.K))))
    return out


@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("family", ["gaussian", "bernoulli"])
def test_gradient_matches_finite_differences_with_the_conditional_map(tmp_path, formula,
                                                                      family):
    """Every coordinate with each factor's effects mapped by its conditioning (H, r)
    (``models.conditional``): the Cholesky factor's reverse mode and the population's."""
    model = model_of(grouped_data(tmp_path, family), formula, family)
    rng = np.random.default_rng(3)
    model.conditioning = random_conditioning(model, rng)
    assert_gradient_matches_finite_differences(model, rng.normal(0, 0.3, model.n_params))


def test_conditional_map_standardises_the_gaussian_conditional_posterior():
    """With H and r the data's information and linear term, b's conditional posterior given the
    population N(P^-1 r, P^-1) is x ~ N(0, I): the map of 0 is its mean, and the map's
    Jacobian times the identity is P^-1; setting the conditioning keeps the effects."""
    from vireg.models.conditional import ConditionalMap, coordinates
    from vireg.models.lkj import corr_cholesky

    rng = np.random.default_rng(4)
    K, G = 3, 5
    A = rng.normal(0, 1, (G, K, K))
    H = np.matmul(A, np.swapaxes(A, 1, 2))
    r = rng.normal(0, 1, (G, K))
    log_tau, c = rng.normal(0, 0.5, (1, K)), rng.normal(0, 0.5, (1, 3))
    L_R = corr_cholesky(c, K)
    tau = np.exp(log_tau[0])
    Psi = tau[:, None] * (L_R[0] @ L_R[0].T) * tau[None, :]
    P = np.linalg.inv(Psi)[None] + H
    m = ConditionalMap(log_tau, L_R, np.zeros((1, G, K)), H, r)
    np.testing.assert_allclose(m.b[0], np.linalg.solve(P, r[..., None])[..., 0], rtol=1e-10)
    J = np.stack([ConditionalMap(log_tau, L_R, np.eye(K)[None, None, k].repeat(G, 1), H, r).b[0]
                  - m.b[0] for k in range(K)], axis=-1)  # (G, K, K): column k = d b / d x_k
    np.testing.assert_allclose(J @ np.swapaxes(J, 1, 2), np.linalg.inv(P), rtol=1e-10,
                               atol=1e-12)
    b = rng.normal(0, 1, (1, G, K))
    x = coordinates(b, log_tau, L_R, H, r)
    np.testing.assert_allclose(ConditionalMap(log_tau, L_R, x, H, r).b, b, rtol=1e-10)


def test_stacked_cholesky_and_triangular_inverse_match_numpy():
    from vireg.models.conditional import cholesky, lower_inverse

    rng = np.random.default_rng(6)
    for K in (1, 2, 3, 6):
        A = rng.normal(0, 1, (4, 7, K, K))
        P = np.matmul(A, np.swapaxes(A, 2, 3)) + 0.1 * np.eye(K)
        L = cholesky(P)
        np.testing.assert_allclose(L, np.linalg.cholesky(P), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(lower_inverse(L), np.linalg.inv(L), rtol=1e-9, atol=1e-10)
    assert np.isnan(cholesky(-np.eye(2)[None])).any()


def test_centring_changes_coordinates_not_effects(tmp_path):
    model = model_of(grouped_data(tmp_path), "y ~ x + (1 + x | g)")
    rng = np.random.default_rng(2)
    U = rng.normal(0, 0.5, (3, model.n_params))
    b = model.group_effects(U)
    lam = [rng.uniform(0, 1, c.shape) for c in model.centring]
    U2 = model.set_centring(lam, [rng.uniform(0, 1, c.shape) for c in model.cor_centring], U)
    for new, old in zip(model.group_effects(U2), b, strict=True):
        np.testing.assert_allclose(new, old, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("formula", ["y ~ x + z + (1 + x | g)", "y ~ x + (1 + x | g) + (1 | h)"])
def test_frame_hessian_matches_dense_differences(tmp_path, formula):
    """The blocks from one pass of differences (the dense block coordinate by coordinate, the
    primary factor coloured) against the full dense Hessian by differences of the gradient,
    coordinate by coordinate: the dense block (the globals and h's effects), each group's block
    and coupling to it."""
    model = model_of(grouped_data(tmp_path, "bernoulli"), formula, "bernoulli")
    rng = np.random.default_rng(3)
    random_centring(model, rng)
    u = rng.normal(0, 0.3, model.n_params)
    H_dense, crosses, blocks = frame_hessian(model, u)
    P, n = model.n_params, model.n_joint
    h = 1e-5
    E = np.eye(P) * h
    _, G = model.log_joint_grad(np.vstack([u + E, u - E]))
    H = -(G[:P] - G[P:]) / (2 * h)
    H = 0.5 * (H + H.T)
    tol = 1e-5 * np.abs(H).max()
    np.testing.assert_allclose(H_dense, H[:n, :n], atol=tol)
    (lay,) = [lay for lay, joint in zip(model.layouts, model.joint, strict=True) if not joint]
    (cross,), (block,) = crosses, blocks
    K = lay.K
    for g in range(lay.G):
        rows = slice(lay.x_at + g * K, lay.x_at + (g + 1) * K)
        np.testing.assert_allclose(cross[g], H[rows, :n], atol=tol)
        np.testing.assert_allclose(block[g], H[rows, rows], atol=tol)
        own = np.delete(H[rows, lay.x_at:lay.x_at + lay.n_x], np.arange(g * K, (g + 1) * K),
                        axis=1)
        assert np.all(np.abs(own) < tol)  # a factor's groups couple only through the globals


def test_em_start_is_the_marginal_likelihood_mode(tmp_path):
    """For a gaussian random-intercept model with flat priors on the base coordinates, EM's
    fixed point is the mode of the exact marginal posterior over (beta, log sigma, log tau), found
    here by a general-purpose optimiser on the dense N x N covariance, with the priors of sigma
    and tau on their logs (the flat prior on sigma adds log sigma there; tau's default
    half-Student-t, its density on log tau)."""
    from scipy.optimize import minimize

    path = grouped_data(tmp_path, n=150, G=8)
    cfg = {"data": {"path": str(path), "formula": "y ~ x + (1 | g)"},
           "model": {"family": "gaussian", "prior": {"coefficients": "flat", "intercept": "flat",
                                                      "sigma": "flat"}}}
    model = build_model(config_from_dict(cfg))
    start = find_start(model, base_start(model))
    natural = model.natural(start.mode[None])[0]  # intercept, x, sigma, tau
    rows = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1), dtype=float)
    y, x = rows[:, 0], rows[:, 1]
    lines = path.read_text().splitlines()
    at = lines[0].split(",").index("g")
    cells = [line.strip().split(",")[at] for line in lines[1:]]
    same = np.equal.outer(cells, cells).astype(float)
    X = np.column_stack([np.ones_like(x), x])

    def negative_log_lik(v):
        beta, log_s, log_t = v[:2], v[2], v[3]
        C = np.exp(2 * log_s) * np.eye(len(y)) + np.exp(2 * log_t) * same
        r = y - X @ beta
        return (0.5 * (np.linalg.slogdet(C)[1] + r @ np.linalg.solve(C, r)) - log_s
                - model.group_sd.logpdf(np.array([log_t]))[0])

    v0 = np.concatenate([natural[:2], np.log(natural[2:])])
    best = minimize(negative_log_lik, v0, method="Nelder-Mead",
                    options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20000}).x
    np.testing.assert_allclose(natural[:2], best[:2], atol=2e-4)
    np.testing.assert_allclose(np.log(natural[2:]), best[2:], atol=2e-4)


def fit_cli(tmp_path, formula, family="gaussian", extra_model=None, **data):
    path = data.pop("path", None) or grouped_data(tmp_path, family)
    cfg = {"data": {"path": str(path), "formula": formula, **data},
           "model": {"family": family, **(extra_model or {})},
           "inference": {"seed": 4}, "output": {"dir": str(tmp_path / "out"), "draws": 200}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return runner.invoke(app, ["fit", str(config), "--quiet"]), tmp_path / "out"


def test_outputs_name_group_terms_and_levels_as_written(tmp_path):
    path = grouped_data(tmp_path, levels=[str(10 * j + 1) for j in range(12)])
    res, out = fit_cli(tmp_path, "y ~ x + z + (1 + x | g)", path=path)
    assert res.exit_code == 0, res.stderr
    names = [r["parameter"] for r in csv.DictReader((out / "summary.csv").open())]
    assert names == ["intercept", "x", "z", "sigma", "sd(g:(Intercept))", "sd(g:x)",
                     "cor(g:(Intercept),x)"]
    rows = list(csv.DictReader((out / "groups.csv").open()))
    assert list(rows[0]) == ["group", "level", "term", "mean", "sd", "q5", "q50", "q95"]
    assert [r["level"] for r in rows[::2]] == [str(10 * j + 1) for j in range(12)]  # 1, 11, ..
    assert {r["term"] for r in rows} == {"(Intercept)", "x"}
    doc = json.loads((out / "fit.json").read_text())
    assert doc["config"]["inference"]["family"] == "structured"
    assert doc["design"]["groups"]["factors"][0]["factor"] == "g" and doc["converged"]


def test_predict_uses_seen_levels_and_draws_new_ones(tmp_path):
    res, out = fit_cli(tmp_path, "y ~ x + z + (1 | g)")
    assert res.exit_code == 0, res.stderr
    new = write_csv(tmp_path / "new.csv", {"y": [0, 0, 0], "x": [0.0, 0.0, 0.0],
                                           "z": [0.0, 0.0, 0.0], "g": ["g0", "g1", "unseen"]})
    with_groups = runner.invoke(app, ["predict", str(out), str(new)])
    assert with_groups.exit_code == 0, with_groups.stderr
    assert "1 of 3 rows have a level of 'g' the fit never saw" in with_groups.stderr
    rows = list(csv.DictReader(with_groups.stdout.splitlines()))
    population = list(csv.DictReader(runner.invoke(
        app, ["predict", str(out), str(new), "--no-group-effects"]).stdout.splitlines()))
    groups = {r["level"]: r for r in csv.DictReader((out / "groups.csv").open())}
    for row, level in zip(rows[:2], ["g0", "g1"], strict=True):
        shift = float(row["eta_mean"]) - float(population[0]["eta_mean"])
        assert abs(shift - float(groups[level]["mean"])) < 0.05
    tau = float(next(r for r in csv.DictReader((out / "summary.csv").open())
                     if r["parameter"] == "sd(g:(Intercept))")["mean"])
    assert float(rows[2]["eta_sd"]) > 0.8 * tau  # a new level carries the population's spread
    assert float(population[2]["eta_sd"]) < 0.5 * tau


@pytest.mark.parametrize("formula, data, message", [
    ("y ~ x + (1 | g)", {"path": "one"}, "has 1 level(s)"),
    ("y ~ x + (1 | county)", {}, "group column 'county' is not a column"),
    ("y ~ x + (1 + w | g)", {}, "the group term on 'w'"),
    ("y ~ x + (1 + c | g)", {"path": "constant"}, "constant within every 'g' group"),
    ("y ~ x + (1 + x + z + a + b + c + d | g)", {"path": "many"}, "up to 6 terms"),
    ("y ~ x + 1 | g", {}, "in parentheses"),
    ("y ~ x + (1 | )", {}, "must end with a grouping column"),
    ("y ~ x + (1 | g/)", {}, "must end with a grouping column"),
    ("y ~ x + (1 | g) + (0 + x | g)", {}, "has two group terms"),
    ("y ~ x + (1 | g:county)", {}, "group column 'county' is not a column"),
    ("y ~ x + (1 | g) + (1 | h)", {"path": "one h"}, "'h' has 1 level(s)"),
    ("y ~ x + (x^2 | g)", {}, "takes column names"),
])
def test_bad_group_terms_fail_in_one_line(tmp_path, formula, data, message):
    rng = np.random.default_rng(0)
    n = 40
    cols = {"y": rng.standard_normal(n), "x": rng.standard_normal(n),
            "z": rng.standard_normal(n), "g": [f"g{i % 4}" for i in range(n)]}
    kind = data.pop("path", None)
    if kind == "one":
        cols["g"] = ["a"] * n
    if kind == "constant":
        cols["c"] = [i % 4 for i in range(n)]
    if kind == "one h":
        cols["h"] = ["h0"] * n
    if kind == "many":
        cols.update({c: rng.standard_normal(n) for c in "abcd"})
    path = write_csv(tmp_path / "bad.csv", cols)
    res, out = fit_cli(tmp_path, formula, path=path, **data)
    assert res.exit_code == 2, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert not out.exists()


@pytest.mark.parametrize("inference, message", [
    ({"family": "fullrank"}, None),
    ({"family": "structured", "batch_size": 20}, None),
])
def test_settings_that_do_not_apply_to_group_terms(tmp_path, inference, message):
    path = grouped_data(tmp_path, n=60, G=3)
    cfg = {"data": {"path": str(path), "formula": "y ~ x + (1 | g)"},
           "model": {"family": "gaussian"}, "inference": inference,
           "output": {"dir": str(tmp_path / "out"), "draws": 100}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["fit", str(config), "--quiet"])
    if message is None:  # fullrank is allowed while small, minibatches always
        assert res.exit_code == 0, res.stderr
    else:
        assert res.exit_code == 2 and message in res.stderr


def test_structured_needs_group_terms(tmp_path):
    path = grouped_data(tmp_path, n=60, G=3)
    cfg = {"data": {"path": str(path), "response": "y", "covariates": ["x"]},
           "model": {"family": "gaussian"}, "inference": {"family": "structured"}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["fit", str(config), "--quiet"])
    assert res.exit_code == 2 and "structured is the family of models with group terms" in \
        res.stderr


def test_groups_without_a_formula(tmp_path):
    """data.groups is the formula's (1 + x | g)."""
    path = grouped_data(tmp_path)
    (tmp_path / "a").mkdir()
    res_a, out_a = fit_cli(tmp_path / "a", "y ~ x + z + (1 + x | g)", path=path)
    cfg = {"data": {"path": str(path), "response": "y", "covariates": ["x", "z"],
                    "groups": {"g": ["intercept", "x"]}},
           "model": {"family": "gaussian"}, "inference": {"seed": 4},
           "output": {"dir": str(tmp_path / "b"), "draws": 200}}
    config = tmp_path / "b.yaml"
    config.write_text(yaml.safe_dump(cfg))
    res_b = runner.invoke(app, ["fit", str(config), "--quiet"])
    assert res_a.exit_code == 0 and res_b.exit_code == 0, res_b.stderr
    a = (out_a / "summary.csv").read_text()
    b = (tmp_path / "b" / "summary.csv").read_text()
    assert a == b


def test_same_numbers_at_any_thread_count(tmp_path):
    path = grouped_data(tmp_path, "bernoulli", n=600, G=20)
    outs = []
    for threads in (1, 2):
        cfg = {"data": {"path": str(path), "formula": "y ~ x + z + (1 + x | g)"},
               "model": {"family": "bernoulli"}, "inference": {"seed": 5},
               "runtime": {"threads": threads},
               "output": {"dir": str(tmp_path / f"t{threads}"), "draws": 100}}
        config = tmp_path / f"t{threads}.yaml"
        config.write_text(yaml.safe_dump(cfg))
        res = runner.invoke(app, ["fit", str(config), "--quiet"])
        assert res.exit_code == 0, res.stderr
        outs.append((tmp_path / f"t{threads}" / "groups.csv").read_text())
    assert outs[0] == outs[1]


def test_group_draws_and_posterior_nc(tmp_path):
    """group_draws.csv on request; posterior.nc (output.arviz and vireg export) holds the group
    sds, the group effects and the per-observation log-likelihood with them."""
    az = pytest.importorskip("arviz")
    res, out = fit_cli(tmp_path, "y ~ x + (1 + x | g)")
    assert res.exit_code == 0, res.stderr
    assert not (out / "group_draws.csv").exists()
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    cfg["output"].update({"group_draws": True, "arviz": True, "dir": str(tmp_path / "b")})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["fit", str(tmp_path / "config.yaml"), "--quiet"])
    assert res.exit_code == 0, res.stderr
    rows = list(csv.reader((tmp_path / "b" / "group_draws.csv").open()))
    assert rows[0][:2] == ["g[g0]:(Intercept)", "g[g0]:x"] and len(rows[0]) == 24
    assert len(rows) == 201
    idata = az.from_netcdf(str(tmp_path / "b" / "posterior.nc"))
    b = idata.posterior["group_effects"]
    assert b.shape == (1, 200, 12, 2) and list(b.coords["term"].values) == ["(Intercept)", "x"]
    draws = np.array(rows[1:], dtype=float).reshape(200, 12, 2)
    np.testing.assert_allclose(b.values[0], draws, rtol=1e-9)  # the same draws of q
    assert "sd(g:x)" in idata.posterior and idata.log_likelihood["y"].shape == (1, 200, 400)
    res = runner.invoke(app, ["export", str(out), "--to", "netcdf"])
    assert res.exit_code == 0, res.stderr
    assert az.from_netcdf(str(out / "posterior.nc")).posterior["group_effects"].shape[2] == 12


@pytest.mark.parametrize("family", ["gaussian", "bernoulli", "poisson"])
def test_pointwise_loglik_adds_each_rows_group_effects(tmp_path, family):
    """Per observation, in the data's own row order: the likelihood at eta = alpha + x beta +
    w . b_g, computed here from the natural-scale parameters."""
    from scipy import stats

    path = grouped_data(tmp_path, family, n=300, G=9)
    model = model_of(path, "y ~ x + z + (1 + x | g)", family)
    rng = np.random.default_rng(6)
    random_centring(model, rng)
    U = rng.normal(0, 0.2, (3, model.n_params))
    rows = np.array([5, 0, 299, 17, 120], dtype=np.int64)
    got = model.pointwise_loglik(U, rows)
    table = np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding=None)
    theta = model.natural(U)  # intercept, x, z, (sigma), tau..., cor
    b = model.group_effects(U)[0]
    levels = model.groups[0].levels
    for s in range(3):
        for k, i in enumerate(rows):
            g = levels.index(table["g"][i])
            eta = (theta[s, 0] + theta[s, 1] * table["x"][i] + theta[s, 2] * table["z"][i]
                   + b[s, g, 0] + b[s, g, 1] * table["x"][i])
            y = table["y"][i]
            if family == "gaussian":
                want = stats.norm.logpdf(y, eta, theta[s, 3])
            elif family == "bernoulli":
                want = stats.bernoulli.logpmf(y, 1 / (1 + np.exp(-eta)))
            else:
                want = stats.poisson.logpmf(y, np.exp(eta))
            np.testing.assert_allclose(got[s, k], want, rtol=1e-10)


def test_loo_and_compare_take_group_models(tmp_path):
    """The runs' draws are redrawn from their q (log p matches draws.csv, or loo refuses), and
    compare prefers the model whose slopes vary, as the data were made."""
    rng = np.random.default_rng(8)
    n, G = 480, 12
    g = rng.integers(0, G, n)
    x = rng.standard_normal(n)
    y = 0.5 + (1.0 + rng.normal(0, 1.0, G)[g]) * x + rng.normal(0, 0.5, G)[g] \
        + rng.normal(0, 0.5, n)
    path = write_csv(tmp_path / "slopes.csv", {"y": y, "x": x, "g": [f"s{j}" for j in g]})
    runs = []
    for name, formula in (("int", "y ~ x + (1 | g)"), ("slope", "y ~ x + (1 + x | g)")):
        (tmp_path / name).mkdir()
        res, out = fit_cli(tmp_path / name, formula, path=path)
        assert res.exit_code == 0, res.stderr
        runs.append(str(out))
    res = runner.invoke(app, ["loo", runs[1], "--out", "-"])
    assert res.exit_code == 0, res.stderr
    res = runner.invoke(app, ["compare", *runs, "--out", "-"])
    assert res.exit_code == 0, res.stderr
    rows = list(csv.DictReader(res.stdout.splitlines()))
    assert rows[0]["run"] == runs[1]  # the varying slopes first
    assert float(rows[1]["elpd_diff"]) < -2 * float(rows[1]["se_diff"])


def test_check_lists_the_group_priors(tmp_path):
    from vireg.api import check

    path = grouped_data(tmp_path)
    report = check({"data": {"path": str(path), "formula": "y ~ x + (1 + x | g)"},
                    "model": {"family": "gaussian"}})
    priors = {p["name"]: p["prior"] for p in report["parameters"]}
    assert priors["sd(g:(Intercept))"] == priors["sd(g:x)"]
    assert priors["sd(g:x)"].startswith("half_student_t(3, ")
    assert priors["cor(g:(Intercept),x)"] == "lkj(1)"


def test_ppc_replicates_with_the_group_effects(tmp_path):
    """Strong county-like intercepts (sd 2 against a noise sd of 0.5): replicated data keep the
    observed spread only with each row's group effects (without them their sd would be about
    a quarter of the observed one)."""
    from vireg.workflow.ppc import ppc_of_run
    from vireg.workflow.run import load_run

    rng = np.random.default_rng(9)
    n, G = 400, 20
    g = rng.integers(0, G, n)
    x = rng.standard_normal(n)
    y = 1.0 + 0.5 * x + rng.normal(0, 2.0, G)[g] + rng.normal(0, 0.5, n)
    path = write_csv(tmp_path / "strong.csv", {"y": y, "x": x, "g": [f"c{j}" for j in g]})
    res, out = fit_cli(tmp_path, "y ~ x + (1 | g)", path=path)
    assert res.exit_code == 0, res.stderr
    result = ppc_of_run(load_run(out), seed=1)
    sd_row = next(r for r in result.statistics if r["statistic"] == "sd")
    assert 0.05 < sd_row["p_value"] < 0.95, sd_row
    assert abs(sd_row["rep_mean"] / sd_row["observed"] - 1) < 0.1


def test_small_crossed_factor_joins_the_dense_block(tmp_path):
    """(1 | g) + (1 | h): h (5 effects) is fitted in the structured family's dense block with
    the globals, so with g the only factor outside it, the family holds the Laplace
    approximation exactly: the start's frame is the inverse of the dense Hessian there, g's
    coupling to h's effects included."""
    from vireg.families.structured import StructuredFactor

    model = model_of(grouped_data(tmp_path, n=300, G=12), "y ~ x + (1 | g) + (1 | h)")
    assert model.joint == [False, True] and model.n_joint == model.n_global + 5
    assert model.segments == [(12, 1)]
    start = find_start(model, base_start(model))
    u, P = start.mode, model.n_params
    h = 1e-5
    E = np.eye(P) * h
    _, G = model.log_joint_grad(np.vstack([u + E, u - E]))
    H = -(G[:P] - G[P:]) / (2 * h)
    A = StructuredFactor.from_precision(*frame_hessian(model, u)).dense()
    np.testing.assert_allclose(A @ A.T, np.linalg.inv(0.5 * (H + H.T)), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("formula", ["y ~ x + z + (1 + x | g)", "y ~ x + (1 | g) + (1 | h)"])
def test_minibatch_gives_the_full_batch_answer(tmp_path, formula):
    """Blocks of whole groups, with the control variate: every reported quantity's mean and
    every group effect's within 0.1 of the full-batch posterior sd, and their sds within 10%."""
    from vireg.api import fit

    path = grouped_data(tmp_path, n=4000, G=40, seed=3)
    base = {"data": {"path": str(path), "formula": formula}, "model": {"family": "gaussian"},
            "output": {"draws": 4000}}
    full = fit({**base, "inference": {"seed": 2}})
    mini = fit({**base, "inference": {"seed": 2, "batch_size": 500}})
    assert full.converged and mini.converged, mini.reason
    assert mini.extras["minibatch"]["blocks"] == 8
    assert not any("minibatch" in w for w in mini.warnings())
    assert_same_posterior(mini, full)


@pytest.mark.parametrize("control_variate", [True, False])
def test_minibatch_estimate_averages_to_the_full_pass(tmp_path, control_variate):
    """The estimate of one block, averaged over the blocks (each equally likely), is the full
    log joint and gradient at every coordinate: unbiased, the groups' own effects included."""
    from vireg.minibatch import GroupedMinibatch

    model = model_of(grouped_data(tmp_path, "bernoulli", n=600, G=15),
                     "y ~ x + (1 + x | g) + (1 | h)", "bernoulli")
    rng = np.random.default_rng(5)
    random_centring(model, rng)
    U = rng.normal(0, 0.3, (3, model.n_params))
    mb = GroupedMinibatch(model, 100, np.random.default_rng(0), control_variate)
    mb._next_block(U + 0.1)  # an epoch, its reference away from the draws
    estimates = [model.log_joint_grad(U, kernel_pass=lambda U, e, _, b=b: mb._estimate(U, e, b))
                 for b in range(mb.n_blocks)]
    lp, G = model.log_joint_grad(U)
    assert len(mb.blocks) > 3
    np.testing.assert_allclose(np.mean([e[0] for e in estimates], axis=0), lp, rtol=1e-10)
    np.testing.assert_allclose(np.mean([e[1] for e in estimates], axis=0), G, rtol=1e-8,
                               atol=1e-8 * np.abs(G).max())


def test_a_single_factor_record_of_the_earlier_layout_reads_as_one_factor():
    """fit.json files whose design.groups has one factor's keys (factor, has_cor, n_base,
    n_global) give the same layout as the per-factor records."""
    from vireg.models.multilevel import effects_of_record, records_of

    old = {"factor": "g", "terms": ["(Intercept)", "x"], "has_cor": True, "levels": ["a", "b"],
           "n_global": 6, "n_base": 3, "centring": [[1.0, 0.5], [0.0, 1.0]],
           "cor_centring": [0.75, 0.5]}
    (rec,) = records_of(old)
    assert (rec["tau_at"], rec["x_at"], rec["correlated"]) == (3, 6, True)
    U = np.random.default_rng(0).normal(0, 0.3, (4, 10))
    assert effects_of_record(U, rec).shape == (4, 2, 2)


def test_two_factors_outside_the_dense_block_are_named_in_a_warning(tmp_path, monkeypatch):
    """Crossed factors too large for the dense block are independent given the globals in q
    (measured: on 100,000 rows over 3,000 x 2,500 crossed levels the intercept's sd came out
    0.0040, where the group sds and the noise imply about 0.011, with k-hat 3.0): the fit says
    which factors and what to distrust."""
    import vireg.models.multilevel as multilevel
    from vireg.api import fit

    path = grouped_data(tmp_path)
    base = {"data": {"path": str(path), "formula": "y ~ x + (1 | g) + (1 | h)"},
            "model": {"family": "gaussian"}, "output": {"draws": 200, "psis_draws": 200}}
    assert not any("dense block" in w for w in fit(base).warnings())
    monkeypatch.setattr(multilevel, "JOINT_EFFECTS_MAX", 3)  # h's 5 levels stay outside
    words = [w for w in fit(base).warnings() if "dense block" in w]
    assert len(words) == 1 and "'g' and 'h'" in words[0] and "MCMC" in words[0]


@pytest.mark.parametrize(("data", "words"), [
    ({"response": "y", "covariates": ["x"], "groups": {"y": ["intercept"]}},
     "the response 'y' is used as a grouping column"),
    ({"response": "y", "covariates": ["x"], "groups": {"g": ["intercept", "y"]}},
     "has a slope on the response 'y'"),
    ({"formula": "y ~ x + (1 + y | g)"}, "has a slope on the response 'y'"),
    ({"formula": "y ~ x + (1 | y)"}, "the response 'y' is used as a grouping column"),
])
def test_group_terms_on_the_response_are_refused(tmp_path, data, words):
    import vireg
    from vireg.api import fit

    cfg = {"data": {"path": str(grouped_data(tmp_path)), **data}, "model": {"family": "gaussian"}}
    with pytest.raises(vireg.InputError, match=re.escape(words)):
        fit(cfg)

