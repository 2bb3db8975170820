"""The Python API: ``fit(config) -> FitResult``. The CLI is a thin layer over this module."""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vireg.assemble import build, build_model, thread_count
from vireg.config import Config, as_config
from vireg.posterior import (
    Diagnosing,
    Summary,
    draw_posterior,
    draw_stream,
    natural_cov,
    natural_summary,
    original_scale,
)
from vireg.study import gradvar
from vireg.threads import compute_threads

__all__ = ["FitResult", "Preparing", "Started", "Diagnosing", "Finished", "build_model", "check",
           "fit", "gradvar", "iter_fit", "versions"]


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
    n_positive: int  # how many of the last parameters are positive (sigma, phi, nu; fitted as logs)
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
    theta_names: list[str] | None = None  # names of theta's coordinates (fit.json)
    group_rows: list[dict] | None = None  # groups.csv: each group effect's summary
    group_draws: np.ndarray | None = field(default=None, repr=False)  # (draws, effects)
    group_names: list[str] | None = None  # "factor[level]:term", group by group

    def warnings(self) -> list[str]:
        """What a user must be told of this fit: a k-hat above its threshold (with advice for
        the fit's variational family), and why it did not converge."""
        from vireg.diagnostics import KHAT_BAD, khat_message

        out = []
        if self.khat is not None and not self.khat <= KHAT_BAD:
            out.append(khat_message(self.khat, self.log_ratio_sd, self.psis_ess,
                                    self.config.inference.family))
        if not self.converged:
            out.append(f"warning: {self.reason}")
        apart = self._factors_apart()
        if len(apart) > 1 and self.config.inference.family == "structured":
            out.append(f"warning: the grouping factors {' and '.join(apart)} each have too "
                       "many effects for the structured family's dense block, so q holds their "
                       "effects independent given the globals; rows they share couple them, "
                       "so read the intercept's and their effects' sds as too narrow (k-hat "
                       "shows how far), and check them with MCMC")
        return out

    def _factors_apart(self) -> list[str]:
        """The grouping factors outside the structured family's dense block."""
        groups = (self.extras or {}).get("design", {}).get("groups")
        if not groups:
            return []
        return [f"'{f['factor']}'" for f in groups["factors"] if f["x_at"] >= groups["n_joint"]]

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
class Finished:
    result: FitResult


def iter_fit(config: Config | dict | str | Path, overrides: list[str] | None = None
             ) -> Iterator[object]:
    """Fit a config, yielding ``Preparing`` events, ``Started``, ``engine.Progress`` events,
    ``Diagnosing`` events, then ``Finished``."""
    cfg = as_config(config, overrides)
    yield Preparing("reading the data")
    cfg, model = build(cfg)
    try:
        yield from fit_model(cfg, model)
    finally:
        model.rows.close()  # cache files, Dask client


def fit_model(cfg: Config, model) -> Iterator[object]:
    """Fit an assembled model with its settled config (``assemble.build``): the events of
    ``iter_fit`` from "loading the kernels" on."""

    threads = thread_count(cfg.runtime.threads)
    opt_seq, _, block_seq = np.random.SeedSequence(cfg.inference.seed).spawn(3)
    minibatch = _minibatch(cfg, model, np.random.default_rng(block_seq))
    with compute_threads(threads):
        yield Preparing("loading the kernels (the first run on a machine compiles them, "
                        "about 20 s)")
        t0 = time.perf_counter()
        model.warm_up()
        timing = {"compile": time.perf_counter() - t0}
        yield Started(model.n_rows, model.n_params, timing["compile"], threads,
                      cfg.inference.max_steps, model.design.dropped_rows)
        t0 = time.perf_counter()
        run = yield from _optimise(cfg, model, minibatch, np.random.default_rng(opt_seq))
        timing["fit"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        post = yield from draw_posterior(model, run.family, run.outcome.phi, cfg.output.draws,
                                         cfg.output.psis_draws, draw_stream(cfg.inference.seed))
        timing["diagnostics"] = time.perf_counter() - t0
    yield Finished(_result(cfg, model, run, post, timing, threads))


@dataclass(frozen=True)
class _Run:
    """What the optimisation left: the Laplace start, the family (in its frame), the outcome,
    and the minibatch reader (None with all rows every step)."""

    laplace: object
    family: object
    outcome: object
    minibatch: object


def _minibatch(cfg: Config, model, rng: np.random.Generator):
    batch = cfg.inference.batch_size
    if batch is None or batch >= model.n_rows:
        return None
    from vireg.minibatch import GroupedMinibatch, MinibatchLogJoint

    if getattr(model, "groups", None) is not None:
        return GroupedMinibatch(model, batch, rng, cfg.inference.control_variate)
    return MinibatchLogJoint(model, batch, cfg.inference.samples, rng,
                             cfg.inference.control_variate)


def _optimise(cfg: Config, model, minibatch, rng: np.random.Generator) -> Iterator[object]:
    """The Laplace start, then the optimiser's events; returns a ``_Run``."""
    from vireg import engine
    from vireg.families import make_family
    from vireg.laplace import find_mode

    if getattr(model, "groups", None) is not None:
        from vireg.grouped_start import find_start
        from vireg.laplace import base_start

        laplace = find_start(model, base_start(model))
    else:
        laplace = find_mode(model)
    family = make_family(cfg.inference.family, model.n_params, laplace, model)
    # Without the control variate, minibatch noise dwarfs the posterior sd: levels lengthen
    # as the step size falls (Robbins-Monro), or the averages freeze before they arrive.
    growth = 2 if minibatch is not None and not cfg.inference.control_variate else 1
    outcome = None
    for event in engine.optimise(model, family, cfg.inference, rng, laplace, minibatch, growth):
        if isinstance(event, engine.Outcome):
            outcome = event
        else:
            yield event
    return _Run(laplace, family, outcome, minibatch)


def _result(cfg: Config, model, run: _Run, post, timing: dict, threads: int) -> FitResult:
    outcome, family = run.outcome, run.family
    grouped = getattr(model, "groups", None) is not None
    if grouped:
        summary, mean_t, cov_t, nat_cov = _multilevel_summary(model, family, outcome.phi, post)
    else:
        summary, mean_t, cov_t = natural_summary(model, *family.mean_cov(outcome.phi))
        nat_cov = natural_cov(model, mean_t, cov_t)
    summary_method = "q"
    if cfg.output.psis:
        from vireg.diagnostics import weighted_summary

        w = weighted_summary(post.natural[:cfg.output.psis_draws], post.log_weights)
        summary = Summary(model.param_names, w["mean"], w["sd"], w["q5"], w["q50"], w["q95"])
        summary_method = "psis"
    n_out = cfg.output.draws
    return FitResult(
        config=cfg, param_names=model.param_names, summary=summary, theta_mean=mean_t,
        theta_cov=cov_t, natural_cov=nat_cov,
        summary_original=None if grouped else original_scale(model, mean_t, cov_t),
        variational={"family": family.name, "space": "standardised (u)",
                     **family.to_dict(outcome.phi)},
        affine={"T": model.T.tolist(), "c": model.c.tolist()},
        steps=outcome.steps, converged=outcome.converged, reason=outcome.reason,
        elbo_trace=outcome.elbo_trace, elbo=post.elbo, elbo_se=post.elbo_se,
        compile_seconds=timing["compile"], fit_seconds=timing["fit"], threads=threads,
        n_rows=model.n_rows, n_positive=model.n_positive, phi=outcome.phi,
        draws=post.natural[:n_out],
        draws_log_p=post.log_p[:n_out], draws_log_q=post.log_q[:n_out], khat=post.khat,
        log_ratio_sd=post.log_ratio_sd, psis_ess=post.ess,
        summary_method=summary_method, diagnostics_seconds=timing["diagnostics"],
        extras=_extras(cfg, model, run), theta_names=model.theta_names,
        group_rows=getattr(model, "fitted_groups", None),
        group_draws=(np.hstack([b[:n_out].reshape(b[:n_out].shape[0], -1)
                                for b in post.group_effects])
                     if grouped and cfg.output.group_draws else None),
        group_names=model.group_names() if grouped else None)


def _multilevel_summary(model, family, phi, post):
    """A model with group terms: the summaries of its reported quantities from q's draws (tau
    and the correlation are not normal), q's mean and covariance over the global coordinates,
    and the groups' effects (``group_table``) into ``model.fitted_groups``."""
    from vireg.models.multilevel import group_table

    values = post.natural
    q = np.quantile(values, [0.05, 0.5, 0.95], axis=0)
    summary = Summary(model.param_names, values.mean(axis=0), values.std(axis=0, ddof=1),
                      q[0], q[1], q[2])
    n = model.n_global
    mean_u, cov_u = _global_moments(family, phi, n)
    mean_t = model.T[:n, :n] @ mean_u[:n] + model.c[:n]
    cov_t = model.T[:n, :n] @ cov_u[:n, :n] @ model.T[:n, :n].T
    model.fitted_groups = group_table(model, post.group_effects)
    return summary, mean_t, cov_t, np.cov(values, rowvar=False)


def _global_moments(family, phi: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """q's mean and covariance over the first n coordinates of u (never dense over all)."""
    if hasattr(family, "global_mean_cov"):
        return family.global_mean_cov(phi)
    if family.name == "meanfield":
        m, omega = family.split(phi)
        return m[:n].copy(), np.diag(np.exp(2.0 * omega[:n]))
    mean_u, cov_u = family.mean_cov(phi)
    return mean_u[:n], cov_u[:n, :n]


def _extras(cfg: Config, model, run: _Run) -> dict:
    """fit.json's optimisation record and the design a later ``vireg predict`` needs."""
    from vireg.engine import uses_quadratic_cv

    outcome, laplace, minibatch = run.outcome, run.laplace, run.minibatch
    steps = outcome.steps if minibatch is None else minibatch.epochs_read
    design = model.design
    return {
        "levels": outcome.levels, "backoffs": outcome.backoffs,
        "last_distance": outcome.last_distance, "dropped_rows": design.dropped_rows,
        "data_passes": outcome.steps if minibatch is None else round(steps, 2),
        "passes": round(steps + outcome.curvature_passes + outcome.guard_passes
                        + laplace.passes, 2),
        "laplace": {"newton_steps": laplace.newton_steps, "passes": laplace.passes,
                    "log_p": laplace.log_p},
        "restarts": outcome.restarts, "data_source": model.rows.describe(),
        "quadratic_cv": uses_quadratic_cv(model, cfg.inference),
        "curvature_passes": outcome.curvature_passes,
        "minibatch": None if minibatch is None else {
            "batch_size": cfg.inference.batch_size, "blocks": minibatch.n_blocks,
            "epochs": minibatch.epochs, "control_variate": cfg.inference.control_variate},
        "encodings": design.encodings or {},
        "design": {"response": design.response, "columns": design.covariates,
                   "sources": design.sources or design.covariates, "family": model.likelihood_name,
                   "intercept": model.intercept, "formula": design.formula,
                   "standardization": design.standardization,
                   "groups": model.groups_record() if hasattr(model, "groups_record") else None}}


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

    cfg = as_config(config, overrides)
    cfg, model = build(cfg)
    model.rows.close()
    return {
        "config": cfg.to_dict(),
        "data": str(cfg.resolve_path(cfg.data.path)),
        "rows": model.n_rows,
        "columns": [{"name": n, "role": "response" if i == 0 else "covariate", "mean": m,
                     "sd": sd, "min": lo, "max": hi}
                    for i, (n, m, sd, lo, hi) in enumerate(model.column_stats)],
        "parameters": [{"name": n, "prior": display_name(p)}
                       for n, p in zip(model.param_names, _priors_of(model), strict=False)],
        "fixed_sigma": cfg.model.sigma,
    }


def _priors_of(model) -> list:
    """Each reported parameter's prior: the model's, then for group terms the group sds' and
    the correlation's (``lkj(eta)``)."""
    priors = list(model.priors)
    if getattr(model, "groups", None) is not None:
        from vireg.models.priors import Prior

        for f in model.groups:
            priors += [model.group_sd] * f.K + [Prior("lkj", (model.group_cor_eta,))] * f.n_cor
    return priors


def versions() -> dict[str, str]:
    import numba

    import vireg

    return {"vireg": vireg.__version__, "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__}
