"""ArviZ InferenceData from a run: ``posterior.nc`` (netCDF), written by ``vireg fit`` with
``output.arviz: true`` and by ``vireg export RUN_DIR --to netcdf`` for an earlier run.

Groups (one chain: the draws from q are independent):

- posterior: the run's draws on the natural scale: ``intercept``, ``beta`` (dimension
  ``covariate``, named by the design columns) and the positive parameters (``sigma``, ...) as
  they are; with group terms also the group sds and correlation (``sd(g:x)``, ``cor(...)``)
  and ``group_effects`` (dimensions ``level`` and ``term``: each level's deviations, from the
  fit's own draws of q);
- sample_stats: ``lp`` = log p(y, theta), ``log_q`` = log q(theta) (theta with positive
  parameters on the log scale) and ``log_weight``, the Pareto-smoothed normalised log importance
  weights of lp - log_q (for importance-weighted summaries, as ``output.psis`` uses);
- log_likelihood: log p(y_i | theta_s), float32, one variable named after the response,
  dimension ``obs``, from a kernel pass over the rows. ``output.log_likelihood: auto`` writes it
  when draws x rows x 4 bytes is at most LOG_LIKELIHOOD_CAP_BYTES (200 MB: 50,000 rows at 1,000
  draws); true always, false never;
- observed_data: the response; constant_data: ``X``, the design as fitted (columns after
  formulas, categorical encoding and data.standardize; dimension ``covariate``), and the column
  of binomial trials or count exposure under its name, when rows x columns x 8 bytes is at most
  CONSTANT_DATA_CAP_BYTES.

Attributes: inference_library "vireg", its version, the likelihood family, the variational
family and the fit's Pareto k-hat.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from vireg.errors import InputError

LOG_LIKELIHOOD_CAP_BYTES = 200 * 10**6
CONSTANT_DATA_CAP_BYTES = 200 * 10**6
NEEDS_ARVIZ = "needs ArviZ and xarray: pip install 'vireg[arviz]'"


def require_arviz(what: str = "posterior.nc"):
    """The arviz module, or an ``InputError`` naming the extra to install."""
    try:
        import arviz
        import h5netcdf  # noqa: F401  (arviz writes netCDF through it)
        import xarray  # noqa: F401
    except ImportError:
        raise InputError(f"{what} {NEEDS_ARVIZ}") from None
    return arviz


def check_config(cfg) -> None:
    """Before a fit with ``output.arviz: true``: ArviZ is installed and there are draws to
    write (so that no fit is run whose results cannot be written)."""
    if not cfg.output.arviz:
        return
    require_arviz("output.arviz: true")
    if cfg.output.draws < 1:
        raise InputError("output.arviz: true needs draws in the run: set output.draws (e.g. "
                         "1000)")


def wants_log_likelihood(setting, n_draws: int, n_rows: int) -> bool:
    """Whether posterior.nc gets its log_likelihood group (``output.log_likelihood``)."""
    if setting == "auto":
        return n_draws * n_rows * 4 <= LOG_LIKELIHOOD_CAP_BYTES
    return bool(setting)


def inference_data(run, log_likelihood="auto"):
    """The run as an ``arviz.InferenceData`` (see the module docstring)."""
    import arviz as az

    from vireg.diagnostics import psis
    from vireg.workflow.run import block_rows, pointwise_loglik, rebuild, threads_of, to_u

    S = run.draws.shape[0]
    n_rows = int(run.doc.get("n_rows") or 0)
    covariates = run.covariates
    posterior = {}
    if run.intercept:
        posterior["intercept"] = run.draws[None, :, 0]
    if covariates:
        posterior["beta"] = run.coefficients()[None]
    for name in run.positive_names:
        posterior[name] = run.column(name)[None]
    coords = {"covariate": list(covariates), "obs": np.arange(n_rows)}
    dims = {"beta": ["covariate"]}
    if run.grouped:  # the group effects (deviations, lme4's ranef) of the fit's own draws
        _add_group_effects(run, S, posterior, coords, dims)
    log_ratio = run.log_p - run.log_q
    log_w = psis(log_ratio)[0] if np.all(np.isfinite(log_ratio)) else np.full(S, np.nan)
    sample_stats = {"lp": run.log_p[None], "log_q": run.log_q[None], "log_weight": log_w[None]}
    response = run.response
    groups: dict = {}
    attrs = {"inference_library": "vireg", "inference_library_version": _version(),
             "family": run.family, "variational_family": run.doc["variational"]["family"],
             "converged": int(bool(run.doc.get("converged"))), "n_rows": n_rows}
    if run.doc.get("khat") is not None:
        attrs["khat"] = float(run.doc["khat"])
    with_ll = wants_log_likelihood(log_likelihood, S, n_rows)
    with_x = n_rows * len(covariates) * 8 <= CONSTANT_DATA_CAP_BYTES
    if with_ll or with_x:
        with threads_of(run), rebuild(run) as rb:
            groups["observed_data"] = {response: np.asarray(rb.y, dtype=float)}
            if with_x:
                groups["constant_data"] = {"X": np.asarray(rb.X, dtype=float)}
                row_data = getattr(rb.design, "row_data", None)  # binomial trials, exposure
                if row_data is not None:
                    groups["constant_data"][rb.design.row_data_name] = np.asarray(row_data,
                                                                                  dtype=float)
            if with_ll:
                model = rb.model
                U = to_u(model, run)
                ll = np.empty((S, model.n_rows), dtype=np.float32)
                step = block_rows(S, model.n_rows)
                for lo in range(0, model.n_rows, step):
                    rows = np.arange(lo, min(lo + step, model.n_rows), dtype=np.int64)
                    ll[:, lo:lo + rows.size] = pointwise_loglik(model, U, rows)
                groups["log_likelihood"] = {response: ll[None]}
    if not with_ll:
        attrs["log_likelihood"] = ("omitted: output.log_likelihood is false" if log_likelihood
                                   is False else f"omitted: {S} draws x {n_rows} rows x 4 bytes "
                                   f"exceeds {LOG_LIKELIHOOD_CAP_BYTES // 10**6} MB; set "
                                   "output.log_likelihood: true")
    dims.update({response: ["obs"], "X": ["obs", "covariate"]})
    dims.update({name: ["obs"] for name in groups.get("constant_data", {}) if name != "X"})
    return az.from_dict(posterior=posterior, sample_stats=sample_stats, coords=coords, dims=dims,
                        posterior_attrs=attrs, sample_stats_attrs=dict(attrs), **groups)


def netcdf_writer(idata) -> Callable[[Path], None]:
    """A function writing ``idata`` as netCDF to the path it is given (``export.write_atomically``
    gives it a temporary name and renames it into place with the other files)."""

    def write(path: Path) -> None:
        idata.to_netcdf(str(path), engine="h5netcdf")

    return write


def export_run(run_dir: Path | str, out: Path | None = None, log_likelihood=None) -> Path:
    """``vireg export RUN_DIR --to netcdf``: write an earlier run's posterior.nc (default: into
    the run folder). ``log_likelihood`` (true, false or "auto") overrides the run's
    output.log_likelihood."""
    from vireg import export
    from vireg.workflow.run import load_run

    require_arviz("vireg export")
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    setting = run.config.output.log_likelihood if log_likelihood is None else log_likelihood
    target = Path(out) if out is not None else run_dir / "posterior.nc"
    if target.suffix.lower() != ".nc":
        raise InputError(f"--out '{target}' must end in .nc")
    parent = target.parent if str(target.parent) else Path(".")
    export.check_output_dir(parent)
    idata = inference_data(run, setting)
    export.write_atomically(parent, {target.name: netcdf_writer(idata)})
    return target


def _add_group_effects(run, S: int, posterior: dict, coords: dict, dims: dict) -> None:
    """Each factor's group effects (draws of the fit's own q) as a variable with dimensions
    level and term: ``group_effects`` (level, term) for one factor, ``group_effects_<factor>``
    (<factor>_level, <factor>_term; ":" of a nesting written "_") for several."""
    from vireg.models.multilevel import effects_of_record, records_of
    from vireg.posterior import redrawn

    U = redrawn(run.doc, S)
    records = records_of(run.doc["design"]["groups"])
    for rec in records:
        name = rec["factor"].replace(":", "_")
        var, level, term = ((f"group_effects_{name}", f"{name}_level", f"{name}_term")
                            if len(records) > 1 else ("group_effects", "level", "term"))
        posterior[var] = effects_of_record(U, rec)[None]
        coords.update({level: list(rec["levels"]), term: list(rec["terms"])})
        dims[var] = [level, term]


def _version() -> str:
    import vireg

    return vireg.__version__
