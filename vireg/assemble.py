"""From a config to a ``Model``: read the data (in memory, from a disk cache, or on Dask
workers), resolve the priors, standardise, and check that the posterior exists."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np

from vireg.config import Config, resolve_inference
from vireg.errors import InputError


def build_model(cfg: Config):
    """Read the data and priors of a config into a ``Model`` (kernels are compiled lazily)."""
    return build(cfg)[1]


def build(cfg: Config):
    """(the config with its inference settled, the ``Model``): see ``model_of``."""
    design, intercept, source = read_design(cfg)
    try:
        return model_of(cfg, design, intercept, source)
    except BaseException:
        if source is not None and hasattr(source, "close"):
            source.close()
        raise


def settle(cfg: Config, n_rows: int, n_params: int, n_cov: int, likelihood: str,
           groups=None) -> Config:
    """The config with inference.family, estimator and samples decided, once, for a model of
    this shape (``config.resolve_inference``, ``engine.draws_per_step``); ``groups``: its
    group terms, if any."""
    from vireg.engine import draws_per_step
    from vireg.models.model import LIKELIHOODS

    cfg = resolve_inference(cfg, n_params, groups is not None)
    shape = SimpleNamespace(n_rows=n_rows, n_params=n_params, n_cov=n_cov,
                            likelihood=LIKELIHOODS[likelihood], groups=groups)
    return replace(cfg, inference=replace(cfg.inference,
                                          samples=draws_per_step(shape, cfg.inference)))


def model_of(cfg: Config, design, intercept: bool, source):
    """(settled config, ``Model``) of a design: priors resolved, inference settled for the
    model's shape, columns standardised (orthogonalised for full-rank), propriety checked."""
    from vireg.models.model import Model, positive_parameters, resolve_priors
    from vireg.models.propriety import check_posterior_exists

    m = cfg.model
    positive = positive_parameters(m.family, m.link, m.sigma, m.nu)
    priors = resolve_priors(m.prior, m.family, intercept, design.covariates, positive,
                            design.sources)
    if not priors:
        raise InputError("the model has no parameters to fit (no intercept, no covariates and no "
                         "unknown sigma): add covariates or set model.intercept: true")
    reserved = {"intercept": intercept, **{name: True for name in positive}}
    for name in design.covariates:
        if reserved.get(name):
            raise InputError(f"covariate '{name}' has the name of vireg's own parameter "
                             f"'{name}': rename the column")
    n_rows = source.moments.n_rows if source is not None else len(design.y)
    n_params = len(priors) + sum(f.K * (1 + f.n_groups) + f.n_cor for f in design.groups or ())
    cfg = settle(cfg, n_rows, n_params, len(design.covariates), cfg.model.family, design.groups)
    # A full-rank q is the same family in any affine coordinates, so its kernel can read the
    # columns orthogonalised; mean-field is defined on the standardised columns themselves.
    kwargs = dict(fixed_sigma=m.sigma, draws_per_step=cfg.inference.samples,
                  dtype=cfg.inference.dtype, source=source,
                  orthogonalize=cfg.inference.family == "fullrank", link=m.link, fixed_nu=m.nu)
    if design.groups is not None:
        model = _multilevel_model(cfg, design, intercept, priors, kwargs)
    else:
        model = Model(design, m.family, intercept, priors, **kwargs)
    check_posterior_exists(model)
    # The kernel reads the standardised copy; the raw covariates were needed only up to here.
    model.design = replace(model.design, X=np.empty((0, model.n_cov)))
    return cfg, model


def read_design(cfg: Config):
    """The design of a config: (Design, intercept, source). In memory the Design holds the data
    and source is None; out of core the Design holds only names and source streams the rows."""
    from vireg.data import build_design, drop_missing, read_table, release_reader_memory, standardize_design
    from vireg.models.model import likelihood_module

    path = cfg.resolve_path(cfg.data.path)
    intercept = cfg.model.intercept
    if cfg.runtime.backend == "dask":
        from vireg.distributed import DaskSource

        source = DaskSource(path, cfg.data.response, cfg.data.covariates, cfg.data.missing,
                            cfg.model.family, cfg.runtime.scheduler, cfg.runtime.partitions,
                            cfg.model.link, _row_data(cfg) and _row_data(cfg)[1],
                            _source_group_spec(cfg))
        return source.design, intercept, source
    if cfg.runtime.out_of_core:
        from vireg.cache import CachedSource

        cache_dir = (cfg.resolve_path(cfg.runtime.cache_dir) if cfg.runtime.cache_dir
                     else path.parent / ".vireg-cache")
        source = CachedSource(path, cfg.data.response, cfg.data.covariates, cfg.data.missing,
                              likelihood_module(cfg.model.family, cfg.model.link), intercept,
                              cfg.inference.dtype, cache_dir, cfg.runtime.memory_mb,
                              _row_data(cfg) and _row_data(cfg)[1], _source_group_spec(cfg))
        return source.design, intercept, source
    table = read_table(path)
    group_spec = [(f, t, True) for f, t in (cfg.data.groups or {}).items()]
    fixed = cfg.data.formula
    if fixed is not None:
        from vireg.models.multilevel import split_group_terms

        fixed, group_spec = split_group_terms(fixed)
    group_dropped = 0
    if group_spec:
        group_spec = _check_group_spec(table, group_spec)
        if fixed is not None:  # the formula's response: the names left of ~
            import re

            from vireg.config import check_not_response

            for name in re.findall(r"[A-Za-z_.][\w.]*", fixed.split("~")[0]):
                for factor, terms, _ in group_spec:
                    check_not_response(name if name in table.columns else None, factor, terms)
        if cfg.data.missing == "drop":
            table, group_dropped = drop_missing(table, _columns_used(cfg, table, fixed,
                                                                     group_spec))
    if fixed is not None:
        from vireg.formula import design_from_formula

        design, intercept = design_from_formula(table, fixed, cfg.data.missing)
        _check_formula_row_data(cfg.model.family, design.formula)
        if intercept and not cfg.model.intercept:
            raise InputError("model.intercept: false conflicts with data.formula, which has an "
                             "intercept: write '- 1' in the formula instead")
    else:
        design = build_design(table, cfg.data.response, cfg.data.covariates, cfg.data.missing,
                              _row_data(cfg))
    if group_spec:
        design = replace(design, groups=_group_terms(table, group_spec),
                         dropped_rows=design.dropped_rows + group_dropped)
    del table  # the columns as read: the design holds its own copy
    release_reader_memory()
    if cfg.data.standardize:
        design = standardize_design(design)
    return design, intercept, None


def _term_name(term: str) -> str:
    """A group term as the model names it: "(Intercept)" for intercept, 1 or (Intercept)."""
    from vireg.models.multilevel import INTERCEPT

    return INTERCEPT if term.lower() in ("intercept", "1", INTERCEPT.lower()) else term


def _source_group_spec(cfg: Config) -> list | None:
    """data.groups as (factor, terms with "(Intercept)", correlated) for a streamed source (the
    disk cache or Dask)."""
    if not cfg.data.groups:
        return None
    return [(factor, [_term_name(t) for t in terms], True)
            for factor, terms in cfg.data.groups.items()]


def _check_group_spec(table, spec: list[tuple[str, list[str], bool]]):
    """The group terms with their columns checked and intercepts named "(Intercept)"; a factor
    named twice is an error."""
    from vireg.models.multilevel import INTERCEPT

    factors = [f for f, _, _ in spec]
    twice = sorted({f for f in factors if factors.count(f) > 1})
    if twice:
        raise InputError(f"the grouping factor '{twice[0]}' has two group terms: write its terms "
                         f"in one, e.g. (1 + x | {twice[0]})")
    out = []
    for factor, terms, correlated in spec:
        for column in factor.split(":"):
            if column not in table.columns:
                raise InputError(f"group column '{column}' is not a column of '{table.source}': "
                                 f"columns are {', '.join(table.columns)}")
        names = [_term_name(t) for t in terms]
        for t in names:
            if t != INTERCEPT and t not in table.columns:
                raise InputError(f"the group term on '{t}' (varying by '{factor}') names a column "
                                 f"that '{table.source}' does not have: columns are "
                                 f"{', '.join(table.columns)}")
        out.append((factor, names, correlated))
    return out


def _columns_used(cfg: Config, table, formula: str | None, spec) -> list[str]:
    """Every column the model reads (what data.missing: drop looks at): the group columns and
    their terms' columns, and the formula's variables or data.response, covariates and row
    data."""
    import re

    from vireg.models.multilevel import INTERCEPT

    used = []
    for factor, terms, _ in spec:
        used += factor.split(":") + [t for t in terms if t != INTERCEPT]
    if formula is not None:
        used += [w for w in re.findall(r"[A-Za-z_.][\w.]*", formula) if w in table.columns]
    else:
        covariates = cfg.data.covariates
        if covariates is None:
            covariates = [c for c in table.columns if c not in used]
        row = _row_data(cfg)
        used += [cfg.data.response, *covariates] + ([row[1]] if row else [])
    return [c for c in dict.fromkeys(used) if c in table.columns]


def _group_terms(table, spec: list[tuple[str, list[str], bool]]):
    """The design's GroupTerms, one per grouping factor (``_check_group_spec``)."""
    from vireg.data import numeric_column
    from vireg.models.multilevel import group_terms

    return tuple(group_terms(factor, names, correlated, lambda name: table.columns[name],
                             lambda name: numeric_column(table, name))
                 for factor, names, correlated in spec)


def _multilevel_model(cfg: Config, design, intercept: bool, priors, kwargs):
    """A MultilevelModel with the config's group priors (defaults: half_student_t(3, s) with s
    the response's sd for gaussian and student_t, 2.5 for the others; lkj(1))."""
    from vireg.models.multilevel import MultilevelModel, lkj_prior
    from vireg.models.priors import parse_prior

    prior = cfg.model.prior
    if prior.group_sd is not None:
        group_sd = parse_prior(prior.group_sd, "model.prior.group_sd", "scale")
    else:
        y_sd = (float(np.std(design.y)) if kwargs.get("source") is None
                else kwargs["source"].moments.y_sd)
        scale = y_sd if cfg.model.family in ("gaussian", "student_t") else 2.5
        group_sd = parse_prior(f"half_student_t(3, {max(scale, 1e-12):.6g})",
                               "model.prior.group_sd", "scale")
    eta = lkj_prior(prior.group_cor, "model.prior.group_cor")
    return MultilevelModel(design, cfg.model.family, intercept, priors, design.groups, group_sd,
                           eta, **kwargs)


def _check_formula_row_data(family: str, state: dict) -> None:
    """A formula's p(y, n) goes with binomial (which needs it), offset(log(t)) with the count
    families."""
    from vireg.config import FAMILIES_WITH_EXPOSURE

    text = state["text"]
    if family == "binomial" and state["trials"] is None:
        raise InputError(f"family binomial needs the number of trials: write the response of "
                         f"data.formula '{text}' as p(successes, trials)")
    if state["trials"] is not None and family != "binomial":
        raise InputError(f"data.formula's p(y, n) response is for family binomial, not {family}: "
                         "write the response alone or set model.family: binomial")
    if state["exposure"] is not None and family not in FAMILIES_WITH_EXPOSURE:
        raise InputError(f"data.formula's offset(log(...)) applies to families poisson and "
                         f"negative_binomial, not {family}: remove it")


def _row_data(cfg: Config) -> tuple[str, str] | None:
    """(config key, column) of the binomial trials or the exposure, if the config names one."""
    if cfg.data.trials is not None:
        return "data.trials", cfg.data.trials
    if cfg.data.exposure is not None:
        return "data.exposure", cfg.data.exposure
    return None


def thread_count(requested: int | None) -> int:
    import numba

    available = numba.config.NUMBA_NUM_THREADS
    if requested is None:
        return available
    if requested > available:
        raise InputError(f"{requested} threads requested but Numba can use at most {available} "
                         "here: lower --threads (or set NUMBA_NUM_THREADS before starting)")
    return requested
