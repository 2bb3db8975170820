"""Throughput measurement behind ``vireg bench``: vireg's gradient step against a vectorised
NumPy implementation of the same step and against the machine's read bandwidth, in one run.

The step timed is what the optimiser does each iteration: draw eps, form the S draws, one pass of
the data kernel over X (all draws), the priors, the family's gradient algebra and the scaled Newton update.
"""

from __future__ import annotations

import time

import numpy as np

from vireg.data import Design
from vireg.kernels.codes import GAUSSIAN, LOGIT

# --model: the likelihood timed (logistic and linear are bernoulli-logit and gaussian)
BENCH_MODELS = ("logistic", "linear", "binomial", "poisson", "negative_binomial", "student_t",
                "probit")
FAMILY_OF = {"logistic": "bernoulli", "linear": "gaussian", "probit": "bernoulli"}


def synthetic_data(model: str, n: int, d: int, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Standard normal covariates, a response from the model, and the binomial trials or the
    count models' exposure (None for the others)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    beta = rng.standard_normal(d) * (0.5 / np.sqrt(d))
    eta = 0.2 + X @ beta
    p = 1.0 / (1.0 + np.exp(-eta))
    if model in ("logistic", "probit"):
        return X, (rng.random(n) < p).astype(float), None
    if model == "binomial":
        trials = rng.integers(1, 20, n).astype(float)
        return X, rng.binomial(trials.astype(np.int64), p).astype(float), trials
    if model in ("poisson", "negative_binomial"):
        exposure = rng.uniform(0.5, 2.0, n)
        return X, rng.poisson(exposure * np.exp(eta) * rng.gamma(2.0, 0.5, n)).astype(float), \
            exposure
    if model == "student_t":
        return X, eta + rng.standard_t(4, n), None
    return X, eta + rng.standard_normal(n), None


def add_kernel_problem_args(parser, samples: int = 1) -> None:
    """The options of the kernel-only scripts in bench/: the problem, and how often to time it."""
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=100)
    parser.add_argument("--samples", type=int, default=samples)
    parser.add_argument("--model", choices=["logistic", "linear"], default="logistic")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=7)


def kernel_problem(model: str, n: int, d: int, samples: int, dtype: str = "float64"):
    """(Z, y, U, chunk_rows, kernel name) for timing the data kernel alone: synthetic rows in the
    kernel's dtype and S draws near 0 in its layout."""
    from vireg.kernels.flags import chunk_rows_for

    X, y, _ = synthetic_data(model, n, d)
    Z = np.ascontiguousarray(X, dtype=dtype)
    P = d + 1 + (model == "linear")
    U = np.random.default_rng(0).standard_normal((samples, P)) * 0.05
    name = "bernoulli_loglik_grad" if model == "logistic" else "gaussian_loglik_grad"
    return Z, y.astype(dtype), U, chunk_rows_for(n, d), name


def synthetic_model(model: str, family: str, n: int, d: int, samples: int, seed: int = 0,
                    dtype: str = "float64"):
    from vireg.models.model import Model, positive_parameters
    from vireg.models.priors import parse_prior

    X, y, row_data = synthetic_data(model, n, d, seed)
    fam = FAMILY_OF.get(model, model)
    link = "probit" if model == "probit" else None
    design = Design(y=y, X=X, response="y", covariates=[f"x{j}" for j in range(d)],
                    row_data=row_data, row_data_name=None if row_data is None else "n")
    priors = [parse_prior("normal(0, 5)", "bench", "location")] * (d + 1)
    priors += [parse_prior("half_normal(5)", "bench", "scale")
               for _ in positive_parameters(fam, link)]
    return Model(design, fam, True, priors, draws_per_step=samples, dtype=dtype, link=link)


def numpy_step(model, U: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The data part of the same step in plain vectorised NumPy (BLAS for the products); None
    for the probit link (NumPy has no normal cdf)."""
    a, B = U[:, 0], U[:, 1:1 + model.n_cov]
    eta = model.Z @ B.T + a  # (N, S)
    if model.likelihood.CODE not in (GAUSSIAN, LOGIT):  # the likelihoods of kernels.glm
        return _numpy_glm_step(model, U, eta)
    if model.likelihood_name == "bernoulli":
        p = 0.5 * (1.0 + np.tanh(0.5 * eta))
        r = model.y[:, None] - p
        ll = np.sum(model.y[:, None] * eta - np.logaddexp(0.0, eta), axis=0)
        G = np.hstack([r.sum(axis=0)[:, None], r.T @ model.Z])
    else:
        t = U[:, -1]
        w = np.exp(-2.0 * t)
        e = model.y[:, None] - eta
        sse = np.sum(e * e, axis=0)
        ll = -model.n_rows * (0.5 * np.log(2 * np.pi) + t) - 0.5 * w * sse
        G = np.hstack([(w * e.sum(axis=0))[:, None], w[:, None] * (e.T @ model.Z),
                       (-model.n_rows + w * sse)[:, None]])
    return G, ll


def _numpy_glm_step(model, U: np.ndarray, eta: np.ndarray):
    """``numpy_step`` for binomial, poisson and negative binomial (the kernel's terms)."""
    name = model.likelihood.NAME
    y, x = model.Y[:, :1], model.Y[:, 1:]
    if name == "binomial":
        ll = np.sum(y * eta - x * np.logaddexp(0.0, eta), axis=0)
        r = y - x / (1.0 + np.exp(-eta))
    elif name == "poisson":
        eta = eta + x
        mu = np.exp(eta)
        ll, r = np.sum(y * eta - mu, axis=0), y - mu
    elif name == "negative_binomial":
        phi = np.exp(U[:, -1])
        xs = eta + x - U[:, -1]
        sp = np.logaddexp(0.0, xs)
        ll = np.sum(y * xs - (y + phi) * sp, axis=0)
        r = y - (y + phi) / (1.0 + np.exp(-xs))
    else:
        return None
    G = np.hstack([r.sum(axis=0)[:, None], r.T @ model.Z])
    if name == "negative_binomial":
        G = np.hstack([G, (-r.sum(axis=0) - phi * sp.sum(axis=0))[:, None]])
    return G, ll


def matmul_gflop_s(size: int = 1024, repeats: int = 5) -> float:
    """Float64 flop rate of a square matrix product in NumPy's BLAS (its own threads, all cores):
    the arithmetic ceiling that the data kernel's multiply-adds are compared with."""
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((size, size)), rng.standard_normal((size, size))
    A @ B
    seconds = min(median_ms(lambda: A @ B, 1) for _ in range(repeats)) * 1e-3
    return 2.0 * size**3 / seconds / 1e9


def kernel_flops(n: int, d: int, samples: int) -> float:
    """Multiply-add flops of one pass of the data kernel: n x d x samples multiply-adds for the
    linear predictors and as many for the gradient sums (2 flops each)."""
    return 4.0 * n * d * samples


def median_ms(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn``, in milliseconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def run_bench(model: str = "logistic", family: str = "meanfield", n: int = 100_000, d: int = 50,
              samples: int = 8, threads: int | None = None, steps: int = 20,
              dtype: str = "float64") -> dict:
    import numba

    from vireg.config import DEFAULT_ESTIMATOR, InferenceConfig
    from vireg.engine import Optimiser
    from vireg.families import make_family
    from vireg.kernels.bandwidth import streaming_sum
    from vireg.laplace import Laplace
    from vireg.threads import compute_threads

    available = numba.config.NUMBA_NUM_THREADS
    threads = available if threads is None else min(threads, available)
    with compute_threads(threads):
        m = synthetic_model(model, family, n, d, samples, dtype=dtype)
        # A fit's step from a start with the curvature at u = 0 (no Newton search: the timing
        # is of the step, not of where it is taken).
        H = m.curvature_at(np.zeros(m.n_params)) + 1e-6 * np.eye(m.n_params)
        start = Laplace(np.zeros(m.n_params), H, float("nan"), 0, 1)
        fam = make_family(family, m.n_params, start)
        estimator = DEFAULT_ESTIMATOR[family]
        rng = np.random.default_rng(1)
        # A fit's own step (engine.Optimiser), with small steps so that q stays put.
        icfg = InferenceConfig(family=family, estimator=estimator, samples=samples,
                               learning_rate=1e-3, quadratic_cv=False)

        t0 = time.perf_counter()
        m.warm_up()
        streaming_sum(m.rows.Z[:1], m.rows.chunk_rows)
        compile_s = time.perf_counter() - t0

        opt = Optimiser(m, fam, icfg, rng, start)
        U0 = fam.sample(opt.phi, rng.standard_normal((samples, m.n_params)))
        opt.step()
        ms = median_ms(opt.step, steps)
        G_nb, ll_nb = m.rows.kernel(m.rows.Z, m.rows.y, U0, m.intercept, m.rows.chunk_rows,
                                    True)
        streaming_sum(m.rows.Z, m.rows.chunk_rows)
        read_ms = median_ms(lambda: streaming_sum(m.rows.Z, m.rows.chunk_rows), max(5, steps // 2))
    # NumPy runs as a user would run it: BLAS with its own default threads.
    numpy_ms, agree = None, None
    if numpy_step(m, U0) is not None:
        numpy_ms = median_ms(lambda: numpy_step(m, U0), max(3, steps // 4))
        G_np, ll_np = numpy_step(m, U0)
        # float32 data are the float64 data rounded: compare to a relative precision it can
        # reach.
        tol = 1e-8 if dtype == "float64" else 1e-4
        agree = bool(np.allclose(G_np, G_nb, rtol=tol, atol=tol * np.abs(G_np).max())
                     and np.allclose(ll_np, ll_nb, rtol=tol * 1e-2))
    return {
        "model": model, "family": family, "estimator": estimator, "n": n, "d": d,
        "samples": samples, "dtype": dtype, "threads": threads, "steps": steps,
        "ms_per_step": ms, "numpy_ms_per_step": numpy_ms,
        "speedup_vs_numpy": numpy_ms / ms if numpy_ms else None,
        **_rooflines(ms, read_ms, m.rows.Z.nbytes, kernel_flops(n, d, samples)),
        "compile_s": compile_s, "kernel_matches_numpy": agree,
        "parallel_kernel": m.rows.parallel,
    }


def _rooflines(ms: float, read_ms: float, x_bytes: int, flops: float) -> dict:
    """The step against the machine's limits: a streaming read of X (memory) and the float64
    matrix-product rate (arithmetic)."""
    roofline_ms = read_ms
    gflop_s = matmul_gflop_s()
    compute_roofline_ms = flops / (gflop_s * 1e9) * 1e3
    return {
        "bandwidth_gb_s": x_bytes / (read_ms * 1e-3) / 1e9, "x_bytes": x_bytes,
        "roofline_ms_per_step": roofline_ms,
        "efficiency": roofline_ms / ms, "matmul_gflop_s": gflop_s,
        "compute_roofline_ms_per_step": compute_roofline_ms,
        "compute_efficiency": compute_roofline_ms / ms,
        "bound": "memory" if roofline_ms >= compute_roofline_ms else "compute",
    }
