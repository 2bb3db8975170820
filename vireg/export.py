"""Result files, written atomically: every file goes to a temporary name in the output folder
first and is renamed into place only when all of them are complete, so an interrupted or failed
run never leaves a half-written file and never clobbers an earlier run's results part-way."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vireg.errors import InputError

SUMMARY_COLUMNS = ["parameter", "mean", "sd", "q5", "q50", "q95", "khat"]


def _num(x: float | None) -> str:
    """Shortest text that reads back as the same float; None (not computed) is an empty cell."""
    return "" if x is None else repr(float(x))


def _finite_or_none(x: float | None) -> float | None:
    """A float JSON can hold: None for a value not computed or not finite."""
    return float(x) if x is not None and np.isfinite(x) else None


def _json_rows(rows: list[dict]) -> list[dict]:
    return [{**row, "khat": _finite_or_none(row["khat"])} for row in rows]


def summary_csv(result, summary=None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUMMARY_COLUMNS)
    for row in result.summary_rows(summary):
        w.writerow([row["parameter"]] + [_num(row[c]) for c in SUMMARY_COLUMNS[1:]])
    return buf.getvalue()


GROUP_COLUMNS = ["group", "level", "term", "mean", "sd", "q5", "q50", "q95"]


def groups_csv(rows: list[dict]) -> str:
    """groups.csv: one row per group effect (a level's deviation from the fixed effect, as
    lme4's ranef)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(GROUP_COLUMNS)
    for row in rows:
        w.writerow([row["group"], row["level"], row["term"]]
                   + [_num(row[c]) for c in GROUP_COLUMNS[3:]])
    return buf.getvalue()


def group_draws_csv(result) -> str:
    """group_draws.csv: one row per draw, one column per group effect ("factor[level]:term")."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(result.group_names)
    for d in result.group_draws.reshape(result.group_draws.shape[0], -1):
        w.writerow([_num(x) for x in d])
    return buf.getvalue()


def draws_csv(result) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*result.param_names, "log_p__", "log_q__"])
    for d, lp, lq in zip(result.draws, result.draws_log_p, result.draws_log_q, strict=True):
        w.writerow([_num(x) for x in d] + [_num(lp), _num(lq)])
    return buf.getvalue()


def elbo_csv(result) -> str:
    lines = ["step,elbo"]
    lines += [f"{i + 1},{_num(e)}" for i, e in enumerate(result.elbo_trace) if np.isfinite(e)]
    return "\n".join(lines) + "\n"


def _corr(cov: np.ndarray) -> np.ndarray:
    sd = np.sqrt(np.diag(cov))
    return cov / np.outer(sd, sd)


def fit_json(result, versions: dict) -> str:
    names = result.param_names
    theta_names = result.theta_names
    doc = {
        "config": result.config.to_dict(),
        "converged": result.converged,
        "stop_reason": result.reason,
        "steps": result.steps,
        "elbo": _finite_or_none(result.elbo),
        "elbo_se": _finite_or_none(result.elbo_se),
        # JSON has no infinity: an infinite k-hat (one ratio dominates) is null, and says so
        "khat": _finite_or_none(result.khat),
        "khat_infinite": result.khat is not None and not np.isfinite(result.khat),
        "khat_draws": result.config.output.psis_draws,
        "log_ratio_sd": _finite_or_none(result.log_ratio_sd),
        "psis_relative_ess": _finite_or_none(result.psis_ess),
        "summary_method": {"q": "exact summaries of the fitted q",
                           "psis": "Pareto-smoothed importance-weighted draws from q"}[
                               result.summary_method],
        "draws_log_density": "log_p__ = log p(y, theta), log_q__ = log q(theta), theta = "
                             "(intercept, coefficients, log sigma)",
        "n_rows": result.n_rows,
        "dropped_rows": result.extras.get("dropped_rows", 0),
        "categorical": result.extras.get("encodings", {}),
        "design": result.extras.get("design", {}),
        "parameters": names,
        "summary": _json_rows(result.summary_rows()),
        "summary_original_scale": (None if result.summary_original is None
                                   else _json_rows(result.summary_rows(result.summary_original))),
        "variational": result.variational,
        "affine_map": {"description": "theta = T u + c; theta = (intercept, coefficients, "
                       "log sigma), u = the standardised coordinates q is defined on", **result.affine},
        "posterior": {"names": names, "mean": result.summary.mean.tolist(),
                      "sd": result.summary.sd.tolist(), "cov": result.natural_cov.tolist(),
                      "corr": _corr(result.natural_cov).tolist()},
        "posterior_theta": {"names": theta_names, "mean": result.theta_mean.tolist(),
                            "cov": result.theta_cov.tolist()},
        "optimisation": {k: result.extras.get(k) for k in ("levels", "backoffs", "last_distance",
                                                           "data_passes", "minibatch", "quadratic_cv",
                                                           "curvature_passes", "passes", "laplace",
                                                           "restarts",
                                                           "data_source")},
        "compile_seconds": result.compile_seconds,
        "fit_seconds": result.fit_seconds,
        "diagnostics_seconds": result.diagnostics_seconds,
        "config_dir": result.config.base_dir,
        "threads": result.threads,
        "versions": versions,
    }
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_dir(out_dir: Path) -> None:
    """Fail before fitting, not after, if results cannot be written to ``out_dir``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output path '{out_dir}' exists and is not a folder: choose another --out")
    parent = out_dir
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write results under '{parent}' (permission denied or not a "
                         "folder): choose another --out")


def write_results(result, out_dir: Path, versions: dict) -> list[Path]:
    """Write summary.csv, draws.csv, elbo.csv and fit.json into ``out_dir`` atomically, and
    posterior.nc (ArviZ InferenceData) with ``output.arviz: true``."""
    files: dict[str, str | Callable[[Path], None]] = {
        "summary.csv": summary_csv(result),
        "draws.csv": draws_csv(result),
        "elbo.csv": elbo_csv(result),
        "fit.json": fit_json(result, versions),
    }
    if result.summary_original is not None:
        files["summary_original.csv"] = summary_csv(result, result.summary_original)
    if result.group_rows is not None:
        files["groups.csv"] = groups_csv(result.group_rows)
    if result.group_draws is not None:
        files["group_draws.csv"] = group_draws_csv(result)
    if result.config.output.arviz:
        from vireg.workflow.inference_data import inference_data, netcdf_writer, require_arviz
        from vireg.workflow.run import run_of_result

        require_arviz()
        run = run_of_result(result, versions, label=out_dir.name)
        files["posterior.nc"] = netcdf_writer(inference_data(run, result.config.output.log_likelihood))
    return write_atomically(out_dir, files)


def write_atomically(out_dir: Path, files: dict[str, str | Callable[[Path], None]]) -> list[Path]:
    """Write every file under a temporary name in ``out_dir``, then rename them all into place.
    A value is the file's text, or a function that writes the file at the path it is given
    (binary formats: netCDF)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (OSError, FileExistsError) as exc:
        raise InputError(f"cannot create output folder '{out_dir}': {exc.strerror or exc}; "
                         "choose another --out") from None
    if not out_dir.is_dir():
        raise InputError(f"output path '{out_dir}' exists and is not a folder: choose another --out")
    temps: dict[str, str] = {}
    try:
        for name, text in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir)
            temps[name] = tmp
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are for sharing
            if callable(text):
                os.close(fd)
                text(Path(tmp))
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                continue
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        for name, tmp in temps.items():
            os.replace(tmp, out_dir / name)
    except OSError as exc:
        raise InputError(f"cannot write results to '{out_dir}': {exc.strerror or exc}; "
                         "choose another --out") from None
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
    return [out_dir / n for n in files]


def gradvar_csv(study: dict) -> str:
    """Per-parameter variance of a single-draw gradient, one column per estimator."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = list(study["estimators"])
    w.writerow(["parameter", *names])
    for i, label in enumerate(study["labels"]):
        w.writerow([label] + [_num(study["estimators"][e]["variances"][i]) for e in names])
    return buf.getvalue()


def gradvar_json(study: dict, versions: dict) -> str:
    doc = {k: v for k, v in study.items() if k != "estimators"}
    doc["estimators"] = {e: {k: v for k, v in r.items() if k != "variances"}
                         for e, r in study["estimators"].items()}
    doc["versions"] = versions
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def output_dir(out: str | None, cfg, config_path: Path) -> Path | None:
    """Where a fit's files go: ``--out`` (None for "-": standard output), else output.dir
    (relative to the config file), else runs/<config name> under the current folder."""
    if out is not None and not out.strip():
        raise InputError("--out needs a folder name, or '-' for standard output")
    if out == "-":
        return None
    if out is not None:
        return Path(out)
    if cfg.output.dir is not None:
        return cfg.resolve_path(cfg.output.dir)
    return Path("runs") / Path(config_path).stem
