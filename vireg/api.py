"""The Python API: ``fit(config) -> FitResult``. The CLI is a thin layer over this module."""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from vireg.config import (
    Config,
    config_from_dict,
    load_config,
    resolve_inference,
    variational_family,
)
from vireg.errors import InputError
from vireg.threads import compute_threads

Z95 = 1.6448536269514722  # standard normal 95% quantile


@dataclass(frozen=True)
class Summary:
    """Posterior summaries of q on the natural scale, one entry per parameter."""

    names: list[str]
    mean: np.ndarray
    sd: np.ndarray
    q5: np.ndarray
    q50: np.ndarray
    q95: np.ndarray


@dataclass
class FitResult:
    """Everything a fit produced; ``export.write_results`` turns it into files."""

    config: Config
    param_names: list[str]
    summary: Summary
    theta_mean: np.ndarray  # mean of q over theta = (alpha, beta, log sigma)
    theta_cov: np.ndarray  # covariance of q over theta
    natural_cov: np.ndarray  # covariance of q over (intercept, coefficients, sigma)
    summary_original: Summary | None  # data.standardize: coefficients of the covariates as given
    variational: dict
    affine: dict
    steps: int
    converged: bool
    reason: str
    elbo_trace: np.ndarray
    elbo: float
    elbo_se: float
    compile_seconds: float
    fit_seconds: float
    threads: int
    n_rows: int
    has_sigma: bool  # whether the last parameter is a fitted sigma
    phi: np.ndarray = field(repr=False)  # the family's variational parameters, over u
    draws: np.ndarray = field(repr=False)
    draws_log_p: np.ndarray = field(repr=False)
    draws_log_q: np.ndarray = field(repr=False)
    khat: float | None  # PSIS k-hat of log p - log q over output.psis_draws draws (None: off)
    log_ratio_sd: float | None
    psis_ess: float | None
    summary_method: str  # "q": exact summaries of q; "psis": Pareto-smoothed importance weights
    diagnostics_seconds: float
    extras: dict = field(default_factory=dict)

    def summary_rows(self, summary: Summary | None = None) -> list[dict]:
        """One dict per parameter; ``summary`` defaults to the main one (see summary_original)."""
        s = summary or self.summary
        khat = self.khat  # None when the diagnostic is off (output.psis_draws: 0)
        return [{"parameter": n, "mean": float(s.mean[i]), "sd": float(s.sd[i]),
                 "q5": float(s.q5[i]), "q50": float(s.q50[i]), "q95": float(s.q95[i]),
                 "khat": khat}
                for i, n in enumerate(s.names)]


@dataclass(frozen=True)
class Preparing:
    """What the fit is doing before its first step: "reading the data" (and setting up the
    model), then "loading the kernels" (compiling them on a machine's first run)."""

    phase: str


@dataclass(frozen=True)
class Started:
    """The fit has compiled its kernels and starts optimising."""

    n_rows: int
    n_params: int
    compile_seconds: float
    threads: int
    max_steps: int
    dropped_rows: int = 0


@dataclass(frozen=True)
class Diagnosing:
    """The optimisation has ended; ``done`` of ``total`` draws from q have had their log joint
    evaluated over the full data (for the ELBO, k-hat and the output draws)."""

    done: int
    total: int


@dataclass(frozen=True)
class Finished:
    result: FitResult


def _as_config(config: Config | dict | str | Path, overrides: list[str] | None) -> Config:
    if isinstance(config, Config):
        if overrides:
            raise InputError("overrides need a config path or dict, not a Config object")
        return config
    if isinstance(config, dict):
        return config_from_dict(config, overrides=overrides)
    return load_config(config, overrides)


def build_model(cfg: Config):
    """Read the data and priors of a config into a ``Model`` (kernels are compiled lazily)."""
    design, intercept, source = read_design(cfg)
    try:
        return _model_of(cfg, design, intercept, source)
    except BaseException:
        if source is not None and hasattr(source, "close"):
            source.close()
        raise


def _model_of(cfg: Config, design, intercept: bool, source):
    from vireg.models.model import Model, resolve_priors
    from vireg.models.propriety import check_posterior_exists

    priors = resolve_priors(cfg.model.prior, cfg.model.family, intercept,
                            design.covariates, cfg.model.sigma, design.sources)
    if not priors:
        raise InputError("the model has no parameters to fit (no intercept, no covariates and no "
                         "unknown sigma): add covariates or set model.intercept: true")
    reserved = {"intercept": intercept, "sigma": len(priors) > len(design.covariates) + intercept}
    for name in design.covariates:
        if reserved.get(name):
            raise InputError(f"covariate '{name}' has the name of vireg's own parameter "
                             f"'{name}': rename the column")
    from vireg.engine import DEFAULT_SAMPLES

    # With samples: auto the draws per step are settled once the model is known
    # (engine.draws_per_step); the rows' serial-or-parallel choice takes the larger default.
    samples = DEFAULT_SAMPLES if cfg.inference.samples == "auto" else cfg.inference.samples
    # A full-rank q is the same family in any affine coordinates, so its kernel can read the
    # columns orthogonalised; mean-field is defined on the standardised columns themselves.
    fullrank = variational_family(cfg.inference.family, len(priors)) == "fullrank"
    model = Model(design, cfg.model.family, intercept, priors, cfg.model.sigma,
                  draws_per_step=samples, dtype=cfg.inference.dtype, source=source,
                  orthogonalize=fullrank)
    check_posterior_exists(model)
    # The kernel reads the standardised copy; the raw covariates were needed only up to here.
    model.design = replace(model.design, X=np.empty((0, model.n_cov)))
    return model


def read_design(cfg: Config):
    """The design of a config: (Design, intercept, source). In memory the Design holds the data
    and source is None; out of core the Design holds only names and source streams the rows."""
    from vireg.data import build_design, read_table, release_reader_memory, standardize_design

    path = cfg.resolve_path(cfg.data.path)
    intercept = cfg.model.intercept
    if cfg.runtime.backend == "dask":
        from vireg.distributed import DaskSource

        source = DaskSource(path, cfg.data.response, cfg.data.covariates, cfg.data.missing,
                            cfg.model.family, cfg.runtime.scheduler, cfg.runtime.partitions)
        return source.design, intercept, source
    if cfg.runtime.out_of_core:
        from vireg.cache import CachedSource

        cache_dir = (cfg.resolve_path(cfg.runtime.cache_dir) if cfg.runtime.cache_dir
                     else path.parent / ".vireg-cache")
        source = CachedSource(path, cfg.data.response, cfg.data.covariates, cfg.data.missing,
                              cfg.model.family, intercept, cfg.inference.dtype, cache_dir,
                              cfg.runtime.memory_mb)
        return source.design, intercept, source
    table = read_table(path)
    if cfg.data.formula is not None:
        from vireg.formula import design_from_formula

        design, intercept = design_from_formula(table, cfg.data.formula, cfg.data.missing)
        if intercept and not cfg.model.intercept:
            raise InputError("model.intercept: false conflicts with data.formula, which has an "
                             "intercept: write '- 1' in the formula instead")
    else:
        design = build_design(table, cfg.data.response, cfg.data.covariates, cfg.data.missing)
    del table  # the columns as read: the design holds its own copy
    release_reader_memory()
    if cfg.data.standardize:
        design = standardize_design(design)
    return design, intercept, None


def _thread_count(requested: int | None) -> int:
    import numba

    available = numba.config.NUMBA_NUM_THREADS
    if requested is None:
        return available
    if requested > available:
        raise InputError(f"{requested} threads requested but Numba can use at most {available} "
                         "here: lower --threads (or set NUMBA_NUM_THREADS before starting)")
    return requested


def natural_summary(model, mean_u: np.ndarray, cov_u: np.ndarray) -> tuple[Summary, np.ndarray,
                                                                             np.ndarray]:
    """Exact summaries of q pushed to the natural scale.

    theta = T u + c is Gaussian with mean T m + c and covariance T Sigma T^T; the intercept and
    coefficients are reported as those normal marginals, sigma = exp(tau) as a log-normal.
    """
    mean_t = model.T @ mean_u + model.c
    cov_t = model.T @ cov_u @ model.T.T
    sd_t = np.sqrt(np.diag(cov_t))
    mean, sd = mean_t.copy(), sd_t.copy()
    q5, q50, q95 = mean_t - Z95 * sd_t, mean_t.copy(), mean_t + Z95 * sd_t
    if model.has_scale:
        mu, v = mean_t[-1], cov_t[-1, -1]
        mean[-1] = math.exp(mu + 0.5 * v)
        sd[-1] = mean[-1] * math.sqrt(math.expm1(v))
        q5[-1], q50[-1], q95[-1] = (math.exp(mu - Z95 * sd_t[-1]), math.exp(mu),
                                    math.exp(mu + Z95 * sd_t[-1]))
    return Summary(model.param_names, mean, sd, q5, q50, q95), mean_t, cov_t


def natural_cov(model, mean_t: np.ndarray, cov_t: np.ndarray) -> np.ndarray:
    """Covariance of q over the natural parameters (intercept, coefficients, sigma).

    For jointly Gaussian (x, tau), Stein's lemma gives Cov(x, e^tau) = Cov(x, tau) E[e^tau];
    Var(e^tau) = E[e^tau]^2 (e^v - 1).
    """
    cov = cov_t.copy()
    if model.has_scale:
        mu, v = mean_t[-1], cov_t[-1, -1]
        e_sigma = math.exp(mu + 0.5 * v)
        cov[:-1, -1] = cov[-1, :-1] = cov_t[:-1, -1] * e_sigma
        cov[-1, -1] = e_sigma**2 * math.expm1(v)
    return cov


def original_scale(model, mean_t: np.ndarray, cov_t: np.ndarray) -> Summary | None:
    """With data.standardize: the summaries of q for coefficients of the covariates as given.

    beta_j = beta_z,j / sd_j and alpha = alpha_z - sum_j beta_z,j mean_j / sd_j, an affine map A,
    so the natural parameters stay normal (mean A m, covariance A Sigma A^T); sigma is unchanged.
    """
    st = model.design.standardization
    if st is None:
        return None
    mean, sd = np.asarray(st["mean"]), np.asarray(st["sd"])
    P, off, D = model.n_params, int(model.intercept), model.n_cov
    A = np.eye(P)
    A[off:off + D, off:off + D] = np.diag(1.0 / sd)
    if model.intercept:
        A[0, off:off + D] = -mean / sd
    m, cov = A @ mean_t, A @ cov_t @ A.T
    s = np.sqrt(np.diag(cov))
    out = Summary(model.param_names, m.copy(), s.copy(), m - Z95 * s, m.copy(), m + Z95 * s)
    if model.has_scale:  # sigma: log-normal, as in natural_summary
        mu, v = mean_t[-1], cov_t[-1, -1]
        out.mean[-1] = math.exp(mu + 0.5 * v)
        out.sd[-1] = out.mean[-1] * math.sqrt(math.expm1(v))
        out.q5[-1], out.q50[-1], out.q95[-1] = (math.exp(mu - Z95 * math.sqrt(v)), math.exp(mu),
                                                math.exp(mu + Z95 * math.sqrt(v)))
    return out


def to_natural(model, U: np.ndarray) -> np.ndarray:
    """Draws in u to the natural scale (intercept, coefficients, sigma), one row per draw."""
    theta = model.to_theta(U)
    if model.has_scale:
        theta[:, -1] = np.exp(theta[:, -1])
    return theta


@dataclass(frozen=True)
class PosteriorDraws:
    """Draws from the fitted q with what the diagnostics need: log p(y, theta) and log q(theta)
    over theta = (intercept, coefficients, log sigma), and the PSIS k-hat of their ratios."""

    natural: np.ndarray
    log_p: np.ndarray
    log_q: np.ndarray
    khat: float | None
    log_weights: np.ndarray | None  # Pareto-smoothed, normalised, for the first psis_draws draws
    log_ratio_sd: float | None
    ess: float | None  # relative effective sample size of the smoothed weights
    elbo: float
    elbo_se: float


def draw_posterior(model, family, phi: np.ndarray, n_draws: int, psis_draws: int,
                   rng: np.random.Generator) -> Iterator[Diagnosing]:
    """Draw max(n_draws, psis_draws, 256) from q, evaluate the log joint over the full data for
    each (one kernel pass per batch of draws, a ``Diagnosing`` event after each), and compute the
    ELBO and k-hat from them: ``post = yield from draw_posterior(...)``."""
    from vireg.diagnostics import psis, relative_ess

    M = max(n_draws, psis_draws, 256)
    eps = rng.standard_normal((M, model.n_params))
    U = family.sample(phi, eps)
    log_p = np.empty(M)
    for start, values in model.log_joint_batches(U):
        log_p[start:start + values.size] = values
        yield Diagnosing(start + values.size, M)
    log_q = family.log_q(phi, eps) - model.log_det_T  # density of q over theta
    finite = log_p[np.isfinite(log_p)]
    elbo = float(finite.mean()) + family.entropy(phi) + model.log_det_T
    elbo_se = float(finite.std(ddof=1) / np.sqrt(finite.size))
    khat, log_w, ratio_sd, ess = None, None, None, None
    if psis_draws > 0:
        log_ratio = log_p[:psis_draws] - log_q[:psis_draws]
        log_w, khat = psis(log_ratio)
        khat = float(khat)
        ratio_sd = float(np.std(log_ratio)) if np.all(np.isfinite(log_ratio)) else float("inf")
        ess = relative_ess(log_w)
    return PosteriorDraws(to_natural(model, U), log_p, log_q, khat, log_w, ratio_sd, ess, elbo,
                          elbo_se)


def iter_fit(config: Config | dict | str | Path, overrides: list[str] | None = None
             ) -> Iterator[object]:
    """Fit a config, yielding ``Preparing`` events, ``Started``, ``engine.Progress`` events,
    ``Diagnosing`` events, then ``Finished``."""
    cfg = _as_config(config, overrides)
    yield Preparing("reading the data")
    model = build_model(cfg)
    try:
        yield from _fit_model(cfg, model)
    finally:
        model.rows.close()  # cache files, Dask client


def _fit_model(cfg: Config, model) -> Iterator[object]:
    threads = _thread_count(cfg.runtime.threads)

    from vireg import engine
    from vireg.families import make_family

    cfg = resolve_inference(cfg, model.n_params)
    cfg = replace(cfg, inference=replace(cfg.inference,
                                         samples=engine.draws_per_step(model, cfg.inference)))

    opt_seq, draw_seq, block_seq = np.random.SeedSequence(cfg.inference.seed).spawn(3)
    minibatch = None
    batch = cfg.inference.batch_size
    if batch is not None and batch < model.n_rows:
        from vireg.minibatch import MinibatchLogJoint

        minibatch = MinibatchLogJoint(model, batch, cfg.inference.samples,
                                      np.random.default_rng(block_seq),
                                      cfg.inference.control_variate)
    with compute_threads(threads):
        yield Preparing("loading the kernels (the first run on a machine compiles them, "
                        "about 15 s)")
        t0 = time.perf_counter()
        model.warm_up()
        compile_seconds = time.perf_counter() - t0
        yield Started(model.n_rows, model.n_params, compile_seconds, threads,
                      cfg.inference.max_steps, model.design.dropped_rows)

        t0 = time.perf_counter()
        from vireg.laplace import find_mode

        laplace = find_mode(model)
        family = make_family(cfg.inference.family, model.n_params, laplace)
        outcome = None
        # Without the control variate, minibatch noise dwarfs the posterior sd: levels lengthen
        # as the step size falls (Robbins-Monro), or the averages freeze before they arrive.
        growth = 2 if minibatch is not None and not cfg.inference.control_variate else 1
        for event in engine.optimise(model, family, cfg.inference, np.random.default_rng(opt_seq),
                                     laplace, minibatch, growth):
            if isinstance(event, engine.Outcome):
                outcome = event
            else:
                yield event
        fit_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        post = yield from draw_posterior(model, family, outcome.phi, cfg.output.draws,
                                         cfg.output.psis_draws, np.random.default_rng(draw_seq))
        diagnostics_seconds = time.perf_counter() - t0

    mean_u, cov_u = family.mean_cov(outcome.phi)
    summary, mean_t, cov_t = natural_summary(model, mean_u, cov_u)
    summary_method = "q"
    if cfg.output.psis:
        from vireg.diagnostics import weighted_summary

        w = weighted_summary(post.natural[:cfg.output.psis_draws], post.log_weights)
        summary = Summary(model.param_names, w["mean"], w["sd"], w["q5"], w["q50"], w["q95"])
        summary_method = "psis"
    n_out = cfg.output.draws
    result = FitResult(
        config=cfg, param_names=model.param_names, summary=summary, theta_mean=mean_t,
        theta_cov=cov_t, natural_cov=natural_cov(model, mean_t, cov_t),
        summary_original=original_scale(model, mean_t, cov_t),
        variational={"family": family.name, "space": "standardised (u)",
                     **family.to_dict(outcome.phi)},
        affine={"T": model.T.tolist(), "c": model.c.tolist()},
        steps=outcome.steps, converged=outcome.converged, reason=outcome.reason,
        elbo_trace=outcome.elbo_trace, elbo=post.elbo, elbo_se=post.elbo_se,
        compile_seconds=compile_seconds, fit_seconds=fit_seconds, threads=threads,
        n_rows=model.n_rows, has_sigma=model.has_scale, phi=outcome.phi,
        draws=post.natural[:n_out],
        draws_log_p=post.log_p[:n_out], draws_log_q=post.log_q[:n_out], khat=post.khat,
        log_ratio_sd=post.log_ratio_sd, psis_ess=post.ess,
        summary_method=summary_method, diagnostics_seconds=diagnostics_seconds,
        extras={"levels": outcome.levels, "backoffs": outcome.backoffs,
                "last_distance": outcome.last_distance,
                "dropped_rows": model.design.dropped_rows,
                "data_passes": (outcome.steps if minibatch is None
                                else round(minibatch.epochs_read, 2)),
                "passes": round((outcome.steps if minibatch is None else minibatch.epochs_read)
                                + outcome.curvature_passes + outcome.guard_passes
                                + laplace.passes, 2),
                "laplace": {"newton_steps": laplace.newton_steps, "passes": laplace.passes,
                            "log_p": laplace.log_p},
                "restarts": outcome.restarts,
                "data_source": model.rows.describe(),
                "quadratic_cv": engine.uses_quadratic_cv(model, cfg.inference),
                "curvature_passes": outcome.curvature_passes,
                "minibatch": None if minibatch is None else {
                    "batch_size": batch, "blocks": minibatch.n_blocks,
                    "epochs": minibatch.epochs,
                    "control_variate": cfg.inference.control_variate},
                "encodings": model.design.encodings or {},
                "design": {"response": model.design.response, "columns": model.design.covariates,
                           "sources": model.design.sources or model.design.covariates,
                           "family": model.family, "intercept": model.intercept,
                           "formula": model.design.formula,
                           "standardization": model.design.standardization}},
    )
    yield Finished(result)


def fit(config: Config | dict | str | Path, overrides: list[str] | None = None) -> FitResult:
    """Fit the model a config describes and return its variational posterior.

    ``config`` is a ``Config``, a dict with the YAML structure, or the path of a YAML file;
    ``overrides`` are ``key.path=value`` strings as for ``vireg fit --set``.
    """
    for event in iter_fit(config, overrides):
        if isinstance(event, Finished):
            return event.result
    raise AssertionError("iter_fit ended without a result")


def check(config: Config | dict | str | Path, overrides: list[str] | None = None) -> dict:
    """Validate a config and its data without fitting (what ``vireg check`` prints).

    Raises ``InputError`` with the first problem, exactly as ``fit`` would before fitting.
    """
    from vireg.models.priors import display_name

    cfg = _as_config(config, overrides)
    model = build_model(cfg)
    model.rows.close()
    cfg = resolve_inference(cfg, model.n_params)
    return {
        "config": cfg.to_dict(),
        "data": str(cfg.resolve_path(cfg.data.path)),
        "rows": model.n_rows,
        "columns": [{"name": n, "role": "response" if i == 0 else "covariate", "mean": m,
                     "sd": sd, "min": lo, "max": hi}
                    for i, (n, m, sd, lo, hi) in enumerate(model.column_stats)],
        "parameters": [{"name": n, "prior": display_name(p)}
                       for n, p in zip(model.param_names, model.priors, strict=False)],
        "fixed_sigma": cfg.model.sigma,
    }


def u_names(model) -> list[str]:
    """Names of the coordinates of u (the standardised parameters q is defined on)."""
    names = model.param_names
    return names[:-1] + ["log_sigma"] if model.has_scale else names


# gradvar --at zero: the null model on the standardised scale with sds at most this (where plain
# ADVI starts, away from the posterior).
ZERO_START_SD = 0.1


def gradvar(config: Config | dict | str | Path, at: str = "zero", draws: int = 1000,
            fits: bool = False, fit_steps: int = 2000, overrides: list[str] | None = None) -> dict:
    """The gradient-variance study behind ``vireg gradvar``.

    ``at`` is "zero" (m = 0 on the standardised scale, sds min(ZERO_START_SD, 1/sqrt(diag H*)):
    a start away from the posterior, as plain ADVI's), "init" (where a vireg fit starts: the
    Laplace approximation), "fit" (after fitting the config) or the folder of an
    earlier run (its fit.json). With ``fits``, also short fits from the same start with each
    estimator and the same step budget.
    """
    import json

    doc = None
    if at not in ("zero", "init", "fit"):
        run = Path(at)
        doc_path = run / "fit.json"
        if not doc_path.is_file():
            raise InputError(f"--at '{at}' is neither zero, init, fit, nor a run folder with "
                             "a fit.json")
        try:
            doc = json.loads(doc_path.read_text())
            cfg = config_from_dict(doc["config"], base_dir=doc["config_dir"])
        except (ValueError, KeyError) as exc:
            raise InputError(f"cannot read '{doc_path}' as a vireg result: {exc}") from None
    else:
        cfg = _as_config(config, overrides)
    model = build_model(cfg)
    try:
        return _gradvar_study(cfg, model, at, draws, fits, fit_steps, doc)
    finally:
        model.rows.close()


def _gradvar_study(cfg: Config, model, at: str, draws: int, fits: bool, fit_steps: int,
                   doc: dict | None) -> dict:
    from vireg.diagnostics import ESTIMATOR_NAMES, gradient_variance
    from vireg.engine import draws_per_step, initial_phi
    from vireg.errors import FitError
    from vireg.families import make_family
    from vireg.laplace import find_mode

    cfg = resolve_inference(cfg, model.n_params)
    # q over u itself (no frame), so that every estimator's gradient is in the same coordinates
    family = make_family(cfg.inference.family, model.n_params)
    threads = _thread_count(cfg.runtime.threads)
    with compute_threads(threads):
        model.warm_up()
        if at == "zero":
            sd = np.minimum(ZERO_START_SD, find_mode(model).meanfield_sd)
            phi = family.init(sd)
        elif at == "init":
            laplace = find_mode(model)
            start = make_family(cfg.inference.family, model.n_params, laplace)
            phi = family.from_dict(start.to_dict(initial_phi(start, laplace)))
        elif at == "fit":
            phi = family.from_dict(fit(cfg).variational)
        else:
            phi = family.from_dict(doc["variational"])
        t0 = time.perf_counter()
        rng = np.random.default_rng(np.random.SeedSequence([cfg.inference.seed, 7]))
        study = gradient_variance(model, family, phi, draws, rng,
                                  batch=max(2, draws_per_step(model, cfg.inference)))
        study["seconds"] = time.perf_counter() - t0
    study.update({"at": at, "family": family.name, "labels": family.labels(u_names(model)),
                  "fits": []})
    if fits:
        for estimator in ESTIMATOR_NAMES:
            run_cfg = [f"inference.estimator={estimator}", f"inference.max_steps={fit_steps}",
                       "output.draws=0"]
            t0 = time.perf_counter()
            try:
                r = fit(config_from_dict(cfg.to_dict(), base_dir=cfg.base_dir,
                                         overrides=run_cfg))
                row = {"estimator": estimator, "elbo": r.elbo, "elbo_se": r.elbo_se,
                       "steps": r.steps, "converged": r.converged}
            except FitError as exc:
                row = {"estimator": estimator, "elbo": None, "elbo_se": None, "steps": None,
                       "converged": False, "error": str(exc)}
            row["seconds"] = time.perf_counter() - t0
            study["fits"].append(row)
    return study


def versions() -> dict[str, str]:
    import numba

    import vireg

    return {"vireg": vireg.__version__, "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__}
