"""A finished run as the workflow commands see it: its ``fit.json`` and the draws from q in
``draws.csv``, and the model and data rebuilt from the resolved config the run recorded.

Draws are on the natural scale (intercept, coefficients, then the positive parameters such as
sigma as themselves), so they do not depend on the internal standardisation: a model rebuilt from
the same data maps them to its own coordinates u with ``Model.from_natural``. The rebuilt model
always holds its rows in memory (``Model.pointwise_loglik`` reads them there): a run fitted out of
core or on Dask workers is rebuilt from the same data file, read into memory.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vireg.errors import InputError

# The workflow commands need at least this many draws from q (output.draws) in a run.
MIN_DRAWS = 100
# Rows per call of the pointwise log-likelihood kernel: an (S x rows) block of float64 values
# at most this many bytes, so that a pass over millions of rows never holds S x N numbers.
BLOCK_BYTES = 64 * 2**20
# log p(y, theta) recomputed from the rebuilt model must match draws.csv's log_p__ within this
# relative tolerance (per row and draw: float32 data round the kernel's inputs to ~1e-7).
LOG_P_RTOL = {"float64": 1e-8, "float32": 1e-5}
# Draws whose log p is recomputed to check that the data have not changed since the fit.
CHECK_DRAWS = 4


@dataclass(frozen=True)
class Run:
    """A finished fit: ``doc`` is its fit.json; ``draws`` (S x P, natural scale, columns
    ``names``) are draws from q with ``log_p`` = log p(y, theta) and ``log_q`` = log q(theta),
    theta with positive parameters on the log scale (so log_p - log_q are the importance ratios
    of the posterior against q)."""

    label: str
    doc: dict
    names: list[str]
    draws: np.ndarray
    log_p: np.ndarray
    log_q: np.ndarray

    @property
    def config(self):
        from vireg.config import config_from_dict

        return config_from_dict(self.doc["config"], base_dir=self.doc.get("config_dir", "."))

    @property
    def grouped(self) -> bool:
        """Whether the model has group terms."""
        return bool(self.doc["design"].get("groups"))

    @property
    def family(self) -> str:
        """The likelihood (model.family): gaussian, bernoulli, ..."""
        return self.doc["design"]["family"]

    @property
    def response(self) -> str:
        return self.doc["design"]["response"]

    @property
    def covariates(self) -> list[str]:
        return list(self.doc["design"]["columns"])

    @property
    def intercept(self) -> bool:
        return bool(self.doc["design"]["intercept"])

    @property
    def positive_names(self) -> list[str]:
        """The parameters after the coefficients (sigma, ...), in draws.csv's order."""
        return self.names[int(self.intercept) + len(self.covariates):]

    def column(self, name: str) -> np.ndarray:
        return self.draws[:, self.names.index(name)]

    def coefficients(self) -> np.ndarray:
        """(S, D) coefficient draws."""
        off = int(self.intercept)
        return self.draws[:, off:off + len(self.covariates)]

    def intercepts(self) -> np.ndarray:
        """(S,) intercept draws (zeros without an intercept)."""
        return self.draws[:, 0] if self.intercept else np.zeros(self.draws.shape[0])


def load_run(run_dir: Path | str) -> Run:
    """Read a run folder's fit.json and draws.csv; an ``InputError`` says what is missing."""
    run_dir = Path(run_dir)
    doc_path, draws_path = run_dir / "fit.json", run_dir / "draws.csv"
    if not doc_path.is_file():
        raise InputError(f"'{run_dir}' is not a vireg run folder: fit.json is missing")
    try:
        doc = json.loads(doc_path.read_text())
        doc["config"], doc["design"]["columns"], doc["design"]["family"]  # noqa: B018
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot read '{doc_path}' as a vireg result ({exc}): refit with this "
                         "version of vireg") from None
    if not draws_path.is_file():
        raise InputError(f"'{run_dir}' has no draws.csv: refit with output.draws of at least "
                         f"{MIN_DRAWS}")
    try:
        with draws_path.open(newline="") as fh:
            header = next(csv.reader(fh), [])
            body = fh.read()
        values = (np.loadtxt(io.StringIO(body), delimiter=",", ndmin=2) if body.strip()
                  else np.empty((0, len(header))))
    except ValueError as exc:
        raise InputError(f"cannot read '{draws_path}' as vireg draws: {exc}") from None
    if header[-2:] != ["log_p__", "log_q__"] or values.shape[1:] != (len(header),):
        raise InputError(f"'{draws_path}' lacks the log_p__ and log_q__ columns: refit with this "
                         "version of vireg")
    if values.shape[0] < MIN_DRAWS:
        raise InputError(f"'{run_dir}' holds {values.shape[0]} draws: the workflow commands need "
                         f"at least {MIN_DRAWS}; refit with output.draws: 1000")
    return Run(run_dir.resolve().name or str(run_dir), doc, header[:-2], values[:, :-2].copy(),
               values[:, -2].copy(), values[:, -1].copy())


def run_of_result(result, versions: dict, label: str = "fit") -> Run:
    """The ``Run`` a ``FitResult`` will be once written (for writing posterior.nc with it)."""
    from vireg.export import fit_json

    return Run(label, json.loads(fit_json(result, versions)), list(result.param_names),
               np.asarray(result.draws, dtype=float), np.asarray(result.draws_log_p, dtype=float),
               np.asarray(result.draws_log_q, dtype=float))


def in_memory_config(cfg):
    """The run's config with its rows read into memory (no disk cache, no Dask workers)."""
    if cfg.data.path == "-":
        raise InputError("the run read its data from standard input, which cannot be read again: "
                         "refit from a data file")
    return replace(cfg, runtime=replace(cfg.runtime, out_of_core=False, backend="local"))


@dataclass
class Rebuilt:
    """The run's model rebuilt in memory, and its design as fitted (raw covariates ``X`` after
    formula, encoding and data.standardize, and the response ``y``)."""

    model: object
    X: np.ndarray
    y: np.ndarray
    design: object


@contextmanager
def rebuild(run: Run, check: bool = True) -> Iterator[Rebuilt]:
    """Rebuild the run's model from its recorded config, with its rows in memory. With
    ``check``, make sure the data are those of the fit: the same rows and parameters, and the
    log joint of a few draws as draws.csv recorded it."""
    from vireg.assemble import model_of, read_design

    cfg = in_memory_config(run.config)
    try:
        design, intercept, source = read_design(cfg)
        cfg, model = model_of(cfg, design, intercept, source)
    except MemoryError:
        raise InputError(f"the data of run '{run.label}' do not fit in memory, which this "
                         "command needs: use a machine with more memory") from None
    try:
        if model.param_names != run.names or model.n_rows != run.doc.get("n_rows"):
            raise InputError(f"the data of run '{run.label}' have changed since the fit ("
                             f"{model.n_rows} rows now, {run.doc.get('n_rows')} then): refit")
        if run.grouped:  # the coordinates the fit's q is over
            from vireg.models.multilevel import records_of

            model.restore_coordinates(records_of(run.doc["design"]["groups"]))
        if check:
            check_log_p(run, model)
        yield Rebuilt(model, design.X, design.y, design)
    finally:
        model.rows.close()


def to_u(model, run: Run, draws: np.ndarray | None = None) -> np.ndarray:
    """The run's natural-scale draws in the model's coordinates u; for a model with group
    terms, whose draws.csv holds the globals only, the fit's own draws from q redrawn from its
    fit.json and seed (``posterior.redrawn``)."""
    if run.grouped:
        from vireg.posterior import redrawn

        return redrawn(run.doc, run.draws.shape[0] if draws is None else draws.shape[0])
    return model.from_natural(np.ascontiguousarray(run.draws if draws is None else draws))


def check_log_p(run: Run, model) -> None:
    """Recompute log p(y, theta) for the first CHECK_DRAWS draws; refuse if it differs from
    draws.csv's log_p__ (the data file was changed or replaced since the fit)."""
    k = min(CHECK_DRAWS, run.draws.shape[0])
    log_p = model.log_joint(to_u(model, run, run.draws[:k]))
    rtol = LOG_P_RTOL.get(model.dtype, 1e-5)
    tol = rtol * (np.abs(run.log_p[:k]) + model.n_rows)
    if not np.all(np.abs(log_p - run.log_p[:k]) <= tol):
        raise InputError(f"the data of run '{run.label}' differ from those it was fitted to "
                         "(log p of its draws does not match draws.csv): refit")


def block_rows(n_draws: int, n_rows: int) -> int:
    """Rows per kernel call so that an (n_draws x rows) float64 block stays under BLOCK_BYTES."""
    return max(1, min(n_rows, BLOCK_BYTES // (8 * max(n_draws, 1))))


def pointwise_loglik(model, U: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """log p(y_i | theta_s), (S, n), for every row (or the rows ``rows``), from the model's
    parallel kernel."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        return model.pointwise_loglik(np.ascontiguousarray(U), rows)


@contextmanager
def threads_of(run: Run):
    """Run the kernels with the fit's thread setting (all cores by default)."""
    from vireg.assemble import thread_count
    from vireg.threads import compute_threads

    available = thread_count(None)
    requested = run.config.runtime.threads
    with compute_threads(available if requested is None else min(requested, available)):
        yield
