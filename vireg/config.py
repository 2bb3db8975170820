"""The config schema, YAML loading, dotted ``--set`` overrides and validation.

A config is four sections (``data``, ``model``, ``inference``, ``output``) plus an optional
``runtime``. Every key is checked against the schema below: an unknown key is an error that names
its full path and suggests the nearest valid key, a value of the wrong type names the expected type.
Paths inside a config file are relative to the folder of that file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from vireg.errors import InputError

FAMILY_ALIASES = {"gaussian": "gaussian", "linear": "gaussian", "bernoulli": "bernoulli",
                  "logistic": "bernoulli", "binomial": "binomial", "poisson": "poisson",
                  "negative_binomial": "negative_binomial", "student_t": "student_t"}
# What each family reads from the data and fits besides the coefficients
FAMILIES_WITH_SIGMA = ("gaussian", "student_t")
FAMILIES_WITH_EXPOSURE = ("poisson", "negative_binomial")
LINKS = {"bernoulli": ("logit", "probit")}
VARIATIONAL_FAMILIES = ("meanfield", "fullrank", "structured")
# inference.family: auto is fullrank up to this many parameters, meanfield above (a full-rank
# step's extra work, O(draws x parameters^2), then outweighs the pass over the rows)
FULLRANK_MAX_PARAMS = 200
# A full-rank q over a model with group terms: its P^2 / 2 scale entries grow with the groups
FULLRANK_MAX_GROUP_PARAMS = 2000
DEFAULT_ESTIMATOR = {"meanfield": "reparam", "fullrank": "stl", "structured": "stl"}
ESTIMATORS = ("reparam", "stl", "score")


@dataclass(frozen=True)
class DataConfig:
    path: str
    response: str | None = None  # required unless data.formula names it
    covariates: list[str] | None = None
    formula: str | None = None  # "y ~ x1 + C(g)": instead of response and covariates
    missing: str = "error"  # or "drop": leave out rows with a missing value in a used column
    standardize: bool = False  # fit on z-scored covariates; report both scales
    trials: str | None = None  # binomial: the column of trials n_i (response: successes)
    exposure: str | None = None  # poisson, negative_binomial: the column t_i (log t_i offset)
    # group terms: {factor column: [intercept, covariate, ...]} (or (1 + x | g) in a formula)
    groups: dict[str, list[str]] | None = None


@dataclass(frozen=True)
class PriorConfig:
    intercept: str = "flat"
    coefficients: str = "flat"
    sigma: str | None = None  # gaussian, student_t: "flat" unless given
    phi: str | None = None  # negative_binomial: default inv_sqrt_half_normal(1)
    nu: str | None = None  # student_t: default gamma(2, 0.1)
    group_sd: str | None = None  # group terms' sds: default half_student_t(3, s), s as documented
    group_cor: str = "lkj(1)"  # their correlation
    overrides: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig:
    family: str
    intercept: bool = True
    sigma: float | None = None  # a known noise sd (gaussian only): sigma is then not fitted
    link: str | None = None  # bernoulli: logit (default) or probit
    nu: float | None = None  # student_t: known degrees of freedom (then not fitted)
    prior: PriorConfig = field(default_factory=PriorConfig)


@dataclass(frozen=True)
class InferenceConfig:
    family: str = "auto"  # meanfield, fullrank, or auto (variational_family)
    estimator: str | None = None  # None: the family's default (DEFAULT_ESTIMATOR)
    samples: int | str = "auto"  # draws per step; auto: engine.draws_per_step
    max_steps: int = 20000
    # The fraction of the way to the local optimum that a step of q's means goes, in coordinates
    # whitened by the curvature at the posterior mode (engine); the scales' rate is at most this
    learning_rate: float = 0.5
    tolerance: float = 0.02
    window: int = 50
    seed: int = 0
    dtype: str = "float64"  # float32: the kernel reads X in float32 (sums stay float64)
    batch_size: int | None = None  # rows per step (minibatch VI); None: all rows every step
    control_variate: bool = True  # minibatch: per-epoch reference pass that cancels block noise
    # Quadratic control variate: add the log joint's curvature at the mean times (u - m) to
    # every draw's gradient (zero mean under q), subtracting its exact expectation from the
    # scale gradients. "auto": on with the reparam estimator (mean-field's default) and at
    # least 100 rows per parameter (engine.uses_quadratic_cv)
    quadratic_cv: bool | str = "auto"


@dataclass(frozen=True)
class OutputConfig:
    dir: str | None = None
    draws: int = 1000
    psis_draws: int = 2000  # draws for the Pareto k-hat diagnostic; 0 turns it off
    psis: bool = False  # summaries from Pareto-smoothed importance-weighted draws
    arviz: bool = False  # also write posterior.nc (ArviZ InferenceData, netCDF)
    group_draws: bool = False  # models with group terms: write group_draws.csv
    # per-observation log-likelihood in posterior.nc: auto writes it below a size cap
    log_likelihood: bool | str = "auto"


@dataclass(frozen=True)
class RuntimeConfig:
    threads: int | None = None
    out_of_core: bool = False  # stream the rows from a disk cache instead of holding them
    cache_dir: str | None = None  # out-of-core cache; None: .vireg-cache beside the data file
    memory_mb: int = 256  # out-of-core: the row buffers' memory
    backend: str = "local"  # or "dask": the rows live on Dask workers
    scheduler: str = "local"  # dask: a scheduler address, or "local" for a LocalCluster
    partitions: int | None = None  # dask: repartition the data into this many partitions


@dataclass(frozen=True)
class Config:
    data: DataConfig
    model: ModelConfig
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    base_dir: str = "."

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what ``fit.json`` records)."""
        out = asdict(self)
        out.pop("base_dir")
        return out

    def resolve_path(self, path: str) -> Path:
        """A path from the config, relative to the config file's folder (``-``: standard input)."""
        if path == "-":
            return Path("-")
        p = Path(os.path.expanduser(path))
        return p if p.is_absolute() else Path(os.path.normpath(Path(self.base_dir) / p))


# --- schema -------------------------------------------------------------------------------------
# One schema: the dataclasses above. Each leaf of SCHEMA is (expected type(s), required), read from
# a field's annotation (X | None allows null) and whether it has a default.


def _runtime_types(annotation: Any) -> Any:
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    if not args:
        return typing.get_origin(annotation) or annotation
    return tuple(typing.get_origin(a) or a for a in args)


def _schema_of(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name == "base_dir":
            continue
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            out[f.name] = _schema_of(t)
        else:
            required = (f.default is dataclasses.MISSING
                        and f.default_factory is dataclasses.MISSING)
            out[f.name] = (_runtime_types(t), required)
    return out


def _defaults(cls: type) -> dict[str, Any]:
    """The default of every field of a config section that has one."""
    return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}


SCHEMA: dict[str, Any] = _schema_of(Config)
_REQUIRED_SECTIONS = tuple(f.name for f in dataclasses.fields(Config)
                           if f.default is dataclasses.MISSING
                           and f.default_factory is dataclasses.MISSING)


def _type_name(t: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", dict: "a mapping", type(None): "null"}
    ts = t if isinstance(t, tuple) else (t,)
    if ts == (bool, str):  # inference.quadratic_cv, output.log_likelihood
        return "true, false or auto"
    if ts == (int, str):  # the one key of that type, inference.samples
        return "an integer or auto"
    return " or ".join(names[x] for x in ts)


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if close:
        return f"did you mean '{close[0]}'?"
    return "valid keys: " + ", ".join(valid)


def _check_type(path: str, value: Any, expected: Any) -> Any:
    ts = expected if isinstance(expected, tuple) else (expected,)
    # bool is a subclass of int in Python; a YAML `true` is never a valid count or rate.
    if isinstance(value, bool) and bool not in ts:
        raise InputError(f"config key '{path}' must be {_type_name(expected)}, got {value!r}")
    if float in ts and isinstance(value, int):
        return float(value)
    if float in ts and isinstance(value, str):
        # YAML 1.1 (PyYAML) reads 1e-3 without a dot as a string; users mean the number.
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"config key '{path}' must be a finite number, got {value!r}")
    if not isinstance(value, ts):
        raise InputError(f"config key '{path}' must be {_type_name(expected)}, got {value!r}")
    return value


def _validate(raw: Any, schema: dict[str, Any], prefix: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        where = f"section '{prefix}'" if prefix else "the config"
        raise InputError(f"{where} must be a mapping of keys to values, got {raw!r}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in schema:
            raise InputError(f"unknown config key '{path}': {_suggest(str(key), list(schema))}")
        spec = schema[key]
        if isinstance(spec, dict):
            out[key] = _validate({} if value is None else value, spec, path)
        else:
            out[key] = _check_type(path, value, spec[0])
    for key, spec in schema.items():
        if not isinstance(spec, dict) and spec[1] and key not in out:
            path = f"{prefix}.{key}" if prefix else key
            raise InputError(f"config key '{path}' is required: add it to the config")
    return out


def _check_values(d: dict[str, Any]) -> None:
    """Checks that go beyond types: allowed names, positive counts and rates, and options that
    exclude each other; each section with its defaults filled in (from the dataclasses)."""
    runtime = {**_defaults(RuntimeConfig), **d.get("runtime", {})}
    _check_model(d["model"])
    _check_inference({**_defaults(InferenceConfig), **d.get("inference", {})})
    _check_output({**_defaults(OutputConfig), **d.get("output", {})})
    _check_runtime(runtime)
    data = {**_defaults(DataConfig), **d["data"]}
    _check_data(data, streamed=bool(runtime["out_of_core"] or runtime["backend"] == "dask"))
    _check_family_columns(FAMILY_ALIASES[d["model"]["family"]], data)
    _check_groups(data, {**_defaults(InferenceConfig), **d.get("inference", {})}, runtime,
                  d.get("output", {}))


def _check_model(model: dict[str, Any]) -> None:
    fam = model["family"]
    if fam not in FAMILY_ALIASES:
        close = difflib.get_close_matches(fam, list(FAMILY_ALIASES), n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise InputError(f"model.family '{fam}' is not known{hint}: use gaussian (alias linear), "
                         "bernoulli (alias logistic), binomial, poisson, negative_binomial or "
                         "student_t")
    fam = FAMILY_ALIASES[fam]
    prior = model.get("prior", {})
    if model.get("sigma") is not None:
        if fam != "gaussian":
            raise InputError("model.sigma (a known noise sd) applies only to family gaussian: "
                             "remove it")
        if not model["sigma"] > 0:
            raise InputError(f"model.sigma must be a positive number, got {model['sigma']}")
        if prior.get("sigma") is not None:
            raise InputError("model.sigma fixes the noise sd, so model.prior.sigma has no effect: "
                             "remove one of them")
    if fam not in FAMILIES_WITH_SIGMA and prior.get("sigma") is not None:
        raise InputError(f"model.prior.sigma applies only to families gaussian and student_t (a "
                         f"{fam} model has no noise scale): remove it")
    for key in ("phi", "nu"):
        if str(prior.get(key) or "").strip().lower() == "flat":
            raise InputError(f"model.prior.{key}: flat makes the posterior improper (the "
                             f"likelihood stays positive as {key} grows without bound): give a "
                             "proper prior such as "
                             + ("'inv_sqrt_half_normal(1)'" if key == "phi" else "'gamma(2, 0.1)'"))
    if fam != "negative_binomial" and prior.get("phi") is not None:
        raise InputError("model.prior.phi (the dispersion) applies only to family "
                         "negative_binomial: remove it")
    _check_student_t(fam, model, prior)
    link = model.get("link")
    if link is not None and link not in LINKS.get(fam, ("logit",) if fam == "binomial" else ()):
        allowed = LINKS.get(fam)
        raise InputError(f"model.link '{link}' is not available for family {fam}: " + (
            f"use one of {', '.join(allowed)}" if allowed else "remove it (the family has one "
            "link)"))
    overrides = prior.get("overrides", {})
    for name, value in overrides.items():
        if not isinstance(value, str):
            raise InputError(f"model.prior.overrides.{name} must be a prior string such as "
                             f"'normal(0, 1)', got {value!r}")


def _check_student_t(fam: str, model: dict[str, Any], prior: dict[str, Any]) -> None:
    nu = model.get("nu")
    if fam != "student_t" and (nu is not None or prior.get("nu") is not None):
        key = "model.nu" if nu is not None else "model.prior.nu"
        raise InputError(f"{key} (degrees of freedom) applies only to family student_t: "
                         "remove it")
    if nu is not None and not nu > 0:
        raise InputError(f"model.nu must be a positive number, got {nu}")
    if nu is not None and prior.get("nu") is not None:
        raise InputError("model.nu fixes the degrees of freedom, so model.prior.nu has no "
                         "effect: remove one of them")


def _check_inference(inf: dict[str, Any]) -> None:
    vf = inf["family"]
    if vf not in (*VARIATIONAL_FAMILIES, "auto"):
        raise InputError(f"inference.family '{vf}' is not available: use one of "
                         f"{', '.join(VARIATIONAL_FAMILIES)} or auto")
    est = inf.get("estimator") or DEFAULT_ESTIMATOR.get(vf)
    if est is not None and est not in ESTIMATORS:
        raise InputError(f"inference.estimator '{est}' is not known: use one of {', '.join(ESTIMATORS)}")
    if inf["dtype"] not in ("float64", "float32"):
        raise InputError(f"inference.dtype '{inf['dtype']}' is not known: use float64 or float32")
    qcv = inf["quadratic_cv"]
    if isinstance(qcv, str) and qcv != "auto":
        raise InputError(f"inference.quadratic_cv must be true, false or auto, got {qcv!r}")
    if qcv is True and est is not None and est != "reparam":
        raise InputError(f"inference.quadratic_cv applies to the reparam estimator, not {est} "
                         "(stl already cancels the same noise for full-rank; score uses no "
                         "gradient): set inference.estimator: reparam or remove quadratic_cv")
    samples = inf["samples"]
    if isinstance(samples, str) and samples != "auto":
        raise InputError(f"config key 'inference.samples' must be an integer or auto, got "
                         f"{samples!r}")
    if est == "score" and samples != "auto" and samples < 2:
        raise InputError("inference.estimator 'score' needs inference.samples of at least 2 (its "
                         "leave-one-out baseline uses the other draws)")
    positive = {"samples": 1, "max_steps": 1, "window": 10, "batch_size": 1}
    for key, lo in positive.items():
        if inf.get(key) is not None and inf[key] != "auto" and inf[key] < lo:
            raise InputError(f"inference.{key} must be at least {lo}, got {inf[key]}")
    if inf["learning_rate"] > 1:
        raise InputError(f"inference.learning_rate is the fraction of the way to the optimum "
                         f"that a step goes, at most 1, got {inf['learning_rate']}")
    for key in ("learning_rate", "tolerance"):
        if key in inf and not inf[key] > 0:
            raise InputError(f"inference.{key} must be a positive number, got {inf[key]}")
    if inf["seed"] < 0:
        raise InputError(f"inference.seed must be a non-negative integer, got {inf['seed']}")


def _check_output(out: dict[str, Any]) -> None:
    if out["draws"] < 0:
        raise InputError(f"output.draws must be zero or more, got {out['draws']}")
    psis_draws = out["psis_draws"]
    if psis_draws != 0 and psis_draws < 100:
        raise InputError(f"output.psis_draws must be 0 (off) or at least 100, got {psis_draws}")
    if out.get("psis") and psis_draws == 0:
        raise InputError("output.psis: true needs output.psis_draws > 0 (the weighted draws)")
    ll = out["log_likelihood"]
    if isinstance(ll, str) and ll != "auto":
        raise InputError(f"output.log_likelihood must be true, false or auto, got {ll!r}")


def _check_runtime(runtime: dict[str, Any]) -> None:
    threads = runtime["threads"]
    if threads is not None and threads < 1:
        raise InputError(f"runtime.threads must be at least 1, got {threads}")
    if runtime["memory_mb"] < 1:
        raise InputError(f"runtime.memory_mb must be at least 1, got {runtime['memory_mb']}")
    if runtime.get("partitions") is not None and runtime["partitions"] < 1:
        raise InputError(f"runtime.partitions must be at least 1, got {runtime['partitions']}")
    backend = runtime["backend"]
    if backend not in ("local", "dask"):
        raise InputError(f"runtime.backend '{backend}' is not known: use local or dask")
    if backend == "dask" and runtime.get("out_of_core"):
        raise InputError("runtime.out_of_core applies to the local backend (Dask workers keep "
                         "their partitions in their own memory): remove one of them")


def _check_data(data: dict[str, Any], streamed: bool) -> None:
    if data.get("formula") is not None:
        clash = [k for k in ("response", "covariates") if data.get(k) is not None]
        if clash:
            raise InputError(f"data.formula names the response and covariates: remove "
                             f"data.{' and data.'.join(clash)}")
        if data.get("trials") is not None or data.get("exposure") is not None:
            raise InputError("with data.formula, write the trials as p(successes, trials) ~ ... "
                             "and the exposure as an offset(log(exposure)) term: remove "
                             "data.trials and data.exposure")
        if streamed:
            raise InputError("data.formula is not available with runtime.out_of_core or the "
                             "Dask backend: list data.response and data.covariates (numeric "
                             "columns)")
    elif data.get("response") is None:
        raise InputError("config key 'data.response' is required (or give data.formula): add it "
                         "to the config")
    if streamed and data["standardize"]:
        raise InputError("data.standardize is not available with runtime.out_of_core or the "
                         "Dask backend: z-score the columns beforehand or fit in memory")
    if data["missing"] not in ("error", "drop"):
        raise InputError(f"data.missing '{data['missing']}' is not known: use error or drop")
    covs = data["covariates"]
    if covs is not None:
        if not all(isinstance(c, str) for c in covs):
            raise InputError("data.covariates must be a list of column names (strings)")
        if len(set(covs)) != len(covs):
            dup = next(c for c in covs if covs.count(c) > 1)
            raise InputError(f"data.covariates lists '{dup}' twice: list each column once")


def _check_family_columns(family: str, data: dict[str, Any]) -> None:
    """data.trials goes with binomial (and binomial needs it, or a formula's p(y, n));
    data.exposure with poisson and negative_binomial."""
    if data["trials"] is not None and family != "binomial":
        raise InputError(f"data.trials applies to family binomial, not {family}: remove it or "
                         "set model.family: binomial")
    if family == "binomial" and data["trials"] is None and data["formula"] is None:
        raise InputError("family binomial needs the number of trials: set data.trials to its "
                         "column (the response is the count of successes)")
    if data["exposure"] is not None and family not in FAMILIES_WITH_EXPOSURE:
        raise InputError(f"data.exposure applies to families poisson and negative_binomial, not "
                         f"{family}: remove it")


def _check_groups(data: dict[str, Any], inference: dict[str, Any], runtime: dict[str, Any],
                  output: dict[str, Any]) -> None:
    """Group terms' own settings, and the settings that do not take them yet."""
    groups = data.get("groups")
    has_terms = bool(groups) or "|" in str(data.get("formula") or "")
    if output.get("group_draws") and not has_terms:
        raise InputError("output.group_draws applies to models with group terms such as "
                         "(1 | g): remove it")
    if groups is not None:
        if not isinstance(groups, dict) or not groups:
            raise InputError("data.groups maps each grouping column to the terms that vary by "
                             "it, e.g. groups: {county: [intercept, floor]}")
        for factor, terms in groups.items():
            if not isinstance(terms, list) or not terms or not all(
                    isinstance(t, str) for t in terms):
                raise InputError(f"data.groups.{factor} must list the terms that vary by "
                                 f"'{factor}', e.g. [intercept, floor]")
            check_not_response(data.get("response"), factor, terms)
    if has_terms and data.get("standardize"):
        raise InputError("data.standardize does not apply to models with group terms (their "
                         "slopes vary on the columns as given): remove it")
    streamed = runtime["out_of_core"] or runtime["backend"] == "dask"
    if has_terms and streamed and any(":" in f for f in groups or {}):
        raise InputError("an interaction of grouping columns (a:b) is fitted with the rows in "
                         "memory: remove runtime.out_of_core and runtime.backend: dask, or add "
                         "a column holding the pairs")


def check_not_response(response: str | None, factor: str, terms: list[str]) -> None:
    """A group term may neither group by the response nor let a slope on it vary."""
    if response is None:
        return
    if response in str(factor).split(":"):
        raise InputError(f"the response '{response}' is used as a grouping column: group by "
                         "another column")
    if response in terms:
        raise InputError(f"the group term varying by '{factor}' has a slope on the response "
                         f"'{response}': drop it from the term")


def parse_overrides(items: list[str]) -> list[tuple[list[str], Any]]:
    """Parse ``key.path=value`` strings; the value is read as YAML (so 0.1 is a number)."""
    parsed = []
    for item in items:
        if "=" not in item:
            raise InputError(f"--set '{item}' must look like key.path=value, e.g. inference.seed=3")
        key, _, text = item.partition("=")
        keys = [k for k in key.strip().split(".")]
        if not all(keys):
            raise InputError(f"--set '{item}': the key path '{key}' has an empty part")
        try:
            # "-" (standard input, as a path) would read as a YAML list holding null
            value = (text.strip() if text.strip() == "-"
                     else yaml.safe_load(text) if text.strip() else None)
        except yaml.YAMLError:
            value = text
        parsed.append((keys, value))
    return parsed


def _apply_overrides(raw: dict[str, Any], overrides: list[tuple[list[str], Any]]) -> None:
    for keys, value in overrides:
        node = raw
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value


def config_from_dict(raw: Any, base_dir: str | Path = ".",
                     overrides: list[str] | None = None) -> Config:
    """Validate a config given as plain data (e.g. from ``yaml.safe_load``) and fill defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError("the config must be a YAML mapping with sections data, model, inference, output")
    raw = _deepcopy(raw)
    _apply_overrides(raw, parse_overrides(overrides or []))
    d = _validate(raw, SCHEMA, "")
    for section in _REQUIRED_SECTIONS:
        if section not in d:
            raise InputError(f"config section '{section}' is missing: add it (see configs/ for examples)")
    _check_values(d)
    model = dict(d["model"])
    model["family"] = FAMILY_ALIASES[model["family"]]
    model["prior"] = PriorConfig(**model.get("prior", {}))
    inf = d.get("inference", {})
    return Config(
        data=DataConfig(**d["data"]),
        model=ModelConfig(**model),
        inference=InferenceConfig(**{**inf, "estimator": inf.get("estimator")
                                     or DEFAULT_ESTIMATOR.get(inf.get("family",
                                                                      InferenceConfig.family))}),
        output=OutputConfig(**d.get("output", {})),
        runtime=RuntimeConfig(**d.get("runtime", {})),
        base_dir=str(base_dir),
    )


def variational_family(name: str, n_params: int, grouped: bool = False) -> str:
    """The variational family a config asks for, with "auto" resolved: structured for a model
    with group terms (``grouped``), else fullrank up to FULLRANK_MAX_PARAMS parameters, else
    meanfield. Structured needs group terms; fullrank over group terms stops at
    FULLRANK_MAX_GROUP_PARAMS parameters."""
    if name == "auto":
        if grouped:
            return "structured"
        return "fullrank" if n_params <= FULLRANK_MAX_PARAMS else "meanfield"
    if name == "structured" and not grouped:
        raise InputError("inference.family: structured is the family of models with group "
                         "terms such as (1 | g): add one, or use fullrank or meanfield")
    if name == "fullrank" and grouped and n_params > FULLRANK_MAX_GROUP_PARAMS:
        raise InputError(f"inference.family: fullrank over {n_params} parameters (group effects "
                         f"included) would step a {n_params} x {n_params} factor; above "
                         f"{FULLRANK_MAX_GROUP_PARAMS} use structured (the default), which "
                         "keeps each group's block and its dependence on the globals")
    return name


def resolve_inference(cfg: Config, n_params: int, grouped: bool = False) -> Config:
    """The config with inference.family and inference.estimator settled for a model of
    n_params parameters (what fit.json records); ``grouped``: it has group terms."""
    inf = cfg.inference
    family = variational_family(inf.family, n_params, grouped)
    estimator = inf.estimator or DEFAULT_ESTIMATOR[family]
    if inf.quadratic_cv is True and estimator != "reparam":
        raise InputError(f"inference.quadratic_cv applies to the reparam estimator, not "
                         f"{estimator} (inference.family {family}): set inference.estimator: "
                         "reparam or remove quadratic_cv")
    return replace(cfg, inference=replace(inf, family=family, estimator=estimator))


def as_config(config: Config | dict | str | Path, overrides: list[str] | None) -> Config:
    """A ``Config`` from a Config, a dict with the YAML structure, or a YAML file's path."""
    if isinstance(config, Config):
        if overrides:
            raise InputError("overrides need a config path or dict, not a Config object")
        return config
    if isinstance(config, dict):
        return config_from_dict(config, overrides=overrides)
    return load_config(config, overrides)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file (with ``yaml.safe_load``) and validate it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"config file '{path}' not found: check the path") from None
    except IsADirectoryError:
        raise InputError(f"config '{path}' is a directory: give the path of a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read config '{path}': {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise InputError(f"config '{path}' is not valid YAML{where}: {problem}") from None
    return config_from_dict(raw, base_dir=path.resolve().parent, overrides=overrides)


def _deepcopy(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _deepcopy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deepcopy(v) for v in x]
    return x
