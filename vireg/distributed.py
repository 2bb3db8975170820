"""The Dask backend (``runtime.backend: dask``): the rows live on Dask workers, partition by partition.

The workers read their partitions themselves (``dask.dataframe.read_parquet`` / ``read_csv``),
convert them to float64 arrays with the same checks as the local reader and keep them in memory
(one future per partition). Set-up then needs only small reductions gathered to the client:

1. the column moments of each partition (``rows.ColumnMoments``), merged in partition order;
2. once the model has chosen its standardisation, each worker standardises its partitions in the
   kernel's dtype, keeps them, and returns its Gram matrix, summed in partition order.

Each optimisation step sends only the draws U (S x P numbers) to the workers; each runs the same
Numba kernel on its partitions and returns (G, ll) per partition; the client sums them in
partition order (never in arrival order) and takes the step. The sums differ from the local
backend's only in how rows are grouped, so results agree to rounding, and they do not depend on
which worker held which partition. Minibatch steps read a block of consecutive partitions.
"""

from __future__ import annotations

import logging

import numpy as np

from vireg.cache import check_source_columns, checked_piece
from vireg.data import Design
from vireg.errors import InputError
from vireg.group_rows import (
    add_in_order,
    cell_ids,
    check_group_columns,
    check_slopes_vary,
    group_payload,
    group_plan,
    group_terms,
    level_key,
    merged_levels,
    piece_factors,
    piece_sums,
    primary_order,
    rows_taken,
)
from vireg.kernels.codes import GAUSSIAN, LOGIT
from vireg.rows import ColumnMoments, standardized_gram

NEEDS_DASK = ("runtime.backend: dask needs Dask: pip install 'vireg[dask]' (or use "
              "runtime.backend: local)")
LOCAL_WORKERS = 2


def _client(scheduler: str):
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError(NEEDS_DASK) from None
    try:
        if scheduler == "local":
            # Bad data raise on a worker and come back as one line; silence the workers' own
            # log of the failed task.
            cluster = LocalCluster(n_workers=LOCAL_WORKERS, threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address=None,
                                   silence_logs=logging.CRITICAL)
            return Client(cluster), cluster
        return Client(scheduler, timeout="10s"), None
    except (OSError, TimeoutError) as exc:
        raise InputError(f"cannot reach the Dask scheduler at '{scheduler}': {exc}; check "
                         "runtime.scheduler (an address such as tcp://host:8786, or local)") from None


# --- functions that run on the workers -------------------------------------------------------

def _likelihood(kind: tuple[str, str | None]):
    from vireg.models.model import likelihood_module

    return likelihood_module(*kind)


def _partition_arrays(df, names: list[str], missing: str, kind, has_row_data: bool, index: int,
                     groups: tuple | None = None):
    """(y, row data or None, X, dropped) of one partition as float64 arrays, checked (runs on a
    worker); ``kind``: (model.family, model.link). With group terms (``groups``: the factor
    columns and the slope columns), also each factor's cells (text, or numbers for a numeric
    column) and the slope columns' values (rows x slopes), for the same rows."""
    dropped = 0
    if groups:
        df, dropped = _drop_missing_groups(df, groups[0], missing, index)
    slopes = list(groups[1]) if groups else []
    head, tail = (names[:-1], names[-1:]) if has_row_data else (names, [])
    numeric = head + slopes + tail
    cols = []
    for name in numeric:
        try:
            cols.append(np.asarray(df[name].to_numpy(dtype=np.float64, na_value=np.nan)))
        except (ValueError, TypeError):
            raise InputError(f"column '{name}' has a non-numeric value (partition {index}): the "
                             "Dask backend takes numeric columns only") from None
    y, x, X, more, kept = checked_piece(cols, numeric, missing, _likelihood(kind), has_row_data,
                                        lambda i: f"row {i + 1} of partition {index}", True)
    if not groups:
        return y, x, X, dropped + more
    n_cov = len(head) - 1
    cells = [_cells(df[f])[kept] for f in groups[0]]
    return (y, x, np.ascontiguousarray(X[:, :n_cov]), dropped + more, cells,
            np.ascontiguousarray(X[:, n_cov:]))


def _drop_missing_groups(df, factors, missing: str, index: int):
    """(df without the rows that miss a group value, how many), or the error naming the first."""
    from vireg.data import MISSING_TOKENS

    bad = np.zeros(len(df), dtype=bool)
    for f in factors:
        col = df[f]
        miss = (col.isna().to_numpy()
                | col.astype(str).str.strip().str.lower().isin(MISSING_TOKENS).to_numpy())
        if miss.any() and missing != "drop":
            raise InputError(f"group column '{f}' misses a value in row "
                             f"{int(np.flatnonzero(miss)[0]) + 1} of partition {index}: fill it "
                             "in, or set data.missing: drop")
        bad |= miss
    return (df[~bad], int(bad.sum())) if bad.any() else (df, 0)


def _cells(col) -> np.ndarray:
    """A group column's cells: float64 for a numeric column, else stripped text."""
    if col.dtype.kind in "iuf":
        return np.asarray(col.to_numpy(dtype=np.float64))
    return np.array([str(c).strip() for c in col.to_numpy()], dtype=object)


def _levels(part):
    """Per factor the distinct ``level_key`` texts of one partition's cells."""
    return [{level_key(c) for c in np.unique(cells).tolist()} for cells in part[4]]


def _moments(part, kind):
    y, x, X, dropped = part[:4]
    lik = _likelihood(kind)
    counts = lik.CODE not in (GAUSSIAN, LOGIT)
    return (ColumnMoments.of_chunk(X, y, lik.NAME == "bernoulli", x, lik if counts else None)
            if len(y) else None), dropped


def _standardize(part, x_centre, x_scale, y_centre, y_scale, intercept, dtype, kind,
                 plan=None):
    """(Z, kernel response, Gram[, group payload, slope ranges]) of a partition (runs on a
    worker); with group terms (``plan``: ``DaskSource.group_plan``) the rows are sorted by the
    primary factor and the payload holds what the grouped kernel reads (``_group_payload``)."""
    from vireg.rows import kernel_response

    y, x, X = part[:3]
    Z = (X - x_centre) / x_scale
    yz = (y - y_centre) / y_scale
    gram = standardized_gram(Z, yz, intercept)
    Yk = kernel_response(_likelihood(kind), yz, x)
    if plan is None:
        return np.ascontiguousarray(Z, dtype=dtype), np.ascontiguousarray(Yk, dtype=dtype), gram
    gids = [cell_ids(cells, plan, f) for f, cells in enumerate(part[4])]
    factors, ranges = piece_factors(gids, part[5], plan)
    primary = plan["primary"]
    order = primary_order(factors, primary)
    factors = [rows_taken(f, order) for f in factors]
    Yk = Yk.reshape(len(yz), -1)
    Yk = np.column_stack([Yk, np.zeros(len(yz))]) if Yk.shape[1] == 1 else Yk
    payload = group_payload(factors, primary, len(yz), Z.shape[1])
    return (np.ascontiguousarray(Z[order], dtype=dtype),
            np.ascontiguousarray(Yk[order], dtype=np.float64), gram, payload, ranges)


def _strip_gram(part):
    return (part[0], part[1], *part[3:4])


def _gram_of(part):
    return part[2]


def _ranges_of(part):
    return part[4] if len(part) > 4 else None


def _rows_of(part):
    return len(part[1])


def _partial_sums(parts, U, kind, intercept: bool, draws: int, with_grad: bool):
    """The data kernel on each of a worker's partitions (runs on the worker, with its threads):
    one task per worker and step, since a task costs milliseconds of scheduling."""
    import numba

    from vireg.kernels.flags import chunk_rows_for, use_parallel

    try:
        from distributed import get_worker

        numba.set_num_threads(min(max(1, get_worker().state.nthreads),
                                  numba.config.NUMBA_NUM_THREADS))
    except (ImportError, ValueError, AttributeError):
        pass
    out = []
    for Z, y in parts:
        n, d = Z.shape
        kernel = _likelihood(kind).loglik_grad_kernel(use_parallel(n, d, draws))
        out.append(kernel(Z, y, U, intercept, chunk_rows_for(n, d), with_grad))
    return out


def _grouped_sums(parts, U, Bg, Bx, kind, intercept: bool, with_grad: bool):
    """The grouped kernel on each of a worker's partitions (runs on the worker): per partition
    (base sums G, ll, the primary factor's per-group sums, the other factors' per-effect sums
    or None)."""
    code = _likelihood(kind).CODE
    return [piece_sums(Z, Yk, payload, U, Bg, Bx, code, intercept, with_grad)
            for Z, Yk, payload in parts]


def _partial_curvature(parts, u, kind, intercept: bool):
    """``rows.curvature_sums`` of each of a worker's partitions (runs on the worker)."""
    from vireg.rows import curvature_sums

    return [curvature_sums(Z, y, u, intercept, _likelihood(kind)) for Z, y in parts]


# --- client side -----------------------------------------------------------------------------

class DaskSource:
    """The data of a config on Dask workers; ``Model(design, ..., source=this)`` fits it."""

    def __init__(self, path, response: str, covariates: list[str] | None, missing: str,
                 family: str, scheduler: str, partitions: int | None = None,
                 link: str | None = None, row_data: str | None = None,
                 groups: list[tuple[str, list[str], bool]] | None = None):
        """``groups``: the group terms, (factor column, terms, correlated) per factor (terms
        "(Intercept)" or a numeric column)."""
        try:
            import dask.dataframe as dd
        except ImportError:
            raise InputError(NEEDS_DASK) from None
        if str(path) == "-" or not path.is_file():
            raise InputError(f"data file '{path}' not found: check data.path (relative to the "
                             "config file)")
        from vireg.cache import default_covariates
        from vireg.models.multilevel import INTERCEPT

        factors = [f for f, _, _ in groups or []]
        slopes = sorted({t for _, terms, _ in groups or [] for t in terms if t != INTERCEPT})
        covariates = (default_covariates(path, response, covariates) if covariates is not None
                      else [c for c in default_covariates(path, response, None)
                            if c != row_data and c not in factors])
        # The response, the covariates, then the trials or exposure (split off when read)
        self.names = [response, *covariates] + ([row_data] if row_data else [])
        self.kind = (family, link)
        self.group_spec = groups or None
        self.group_columns = (factors, slopes) if groups else None
        check_source_columns(path, self.names)
        if groups:
            check_group_columns(path, groups)
        try:
            if path.suffix.lower() in (".parquet", ".pq"):
                ddf = dd.read_parquet(str(path), columns=list(dict.fromkeys(
                    self.names + factors + slopes)))
            else:
                ddf = dd.read_csv(str(path), usecols=list(dict.fromkeys(
                    self.names + factors + slopes)), blocksize="64MB",
                    dtype={f: "object" for f in factors})
        except (ValueError, KeyError) as exc:
            raise InputError(f"cannot read '{path}' with Dask: {str(exc).splitlines()[0]}; check "
                             "data.response and data.covariates") from None
        except ImportError as exc:
            raise InputError(f"{NEEDS_DASK} ({exc})") from None
        missing_cols = [n for n in self.names if n not in ddf.columns]
        if missing_cols:
            raise InputError(f"'{missing_cols[0]}' is not a column of '{path}': columns are "
                             f"{', '.join(ddf.columns)}")
        if partitions is not None:
            ddf = ddf.repartition(npartitions=partitions)
        self.client, self.cluster = _client(scheduler)
        try:
            from dask import delayed

            parts = ddf.to_delayed()
            self.raw = self.client.compute(
                [delayed(_partition_arrays)(p, self.names, missing, self.kind,
                                            row_data is not None, k, self.group_columns)
                 for k, p in enumerate(parts)])
            stats = self.client.gather(self.client.map(_moments, self.raw, kind=self.kind,
                                                       pure=False))
            levels = (self.client.gather(self.client.map(_levels, self.raw, pure=False))
                      if groups else None)
        except InputError:
            self.close()
            raise
        moments, dropped = None, 0
        for m, d in stats:  # in partition order
            dropped += d
            if m is not None:
                moments = m if moments is None else moments.merge(m)
        if moments is None:
            self.close()
            raise InputError(f"data file '{path}' has no rows to fit")
        self.moments, self.dropped = moments, dropped
        self.design = Design.names_only(response, covariates, dropped)
        self.primary = 0  # the model's primary factor (``MultilevelModel``) before standardize
        if groups:
            from dataclasses import replace

            keys = [set().union(*(part[f] for part in levels)) for f in range(len(groups))]
            self.design = replace(self.design, groups=group_terms(
                groups, [merged_levels(k) for k in keys]))

    def group_plan(self) -> dict:
        """What the workers need to turn a partition's cells into group ids and term values."""
        return group_plan(self.design.groups, self.primary, self.group_columns[1])

    def standardize(self, x_centre, x_scale, y_centre, y_scale, intercept, dtype, draws_per_step,
                    likelihood):
        np_dtype = np.float64 if dtype == "float64" else np.float32
        # Round-robin placement: partition k is standardised on (and stays with) worker k mod W,
        # so every worker gets an equal share of each step's work.
        workers = sorted(self.client.scheduler_info()["workers"])
        plan = self.group_plan() if self.group_spec else None
        with_gram = [self.client.submit(_standardize, part, x_centre, x_scale, y_centre, y_scale,
                                        intercept, np_dtype, self.kind, plan,
                                        workers=[workers[k % len(workers)]], pure=False)
                     for k, part in enumerate(self.raw)]
        grams = self.client.gather(self.client.map(_gram_of, with_gram, pure=False))
        if plan is not None:
            check_slopes_vary(self.design.groups, self.client.gather(
                self.client.map(_ranges_of, with_gram, pure=False)))
        parts = [self.client.submit(_strip_gram, f, workers=[workers[k % len(workers)]], pure=False)
                 for k, f in enumerate(with_gram)]  # kept on the workers
        sizes = self.client.gather(self.client.map(_rows_of, parts, pure=False))
        del with_gram
        self.raw = None  # the raw float64 partitions are released on the workers
        gram = grams[0]
        for g in grams[1:]:  # in partition order
            gram = (gram[0] + g[0], gram[1] + g[1], gram[2] + g[2])
        rows = DaskRows(self, parts, np.asarray(sizes), intercept, draws_per_step)
        return rows, gram

    def close(self) -> None:
        if getattr(self, "client", None) is not None:
            self.client.close()
            self.client = None
        if getattr(self, "cluster", None) is not None:
            self.cluster.close()
            self.cluster = None


class DaskRows:
    """Row source over partitions held on Dask workers."""

    def __init__(self, source: DaskSource, parts, sizes: np.ndarray, intercept: bool,
                 draws_per_step: int):
        self.source = source
        self.client = source.client
        self.parts = parts
        self.sizes = sizes
        self.n_rows = int(sizes.sum())
        self.intercept = intercept
        self.draws = draws_per_step
        self.parallel = False
        self.groups = [list(range(len(parts)))]
        # Which worker holds each partition: a step sends each worker one task for all of its
        # partitions (if a worker is lost, Dask moves the data and the task may run elsewhere).
        who = self.client.who_has(parts)
        self.holder = [sorted(who[f.key])[0] if who.get(f.key) else "" for f in parts]

    @property
    def n_blocks(self) -> int:
        return len(self.groups)

    def set_blocks(self, batch_size: int, draws_per_step: int) -> None:
        """Blocks of consecutive partitions, each about ``batch_size`` rows (whole partitions)."""
        per_block = max(1, round(batch_size / max(1.0, self.sizes.mean())))
        n = len(self.parts)
        self.groups = [list(range(k, min(n, k + per_block))) for k in range(0, n, per_block)]
        self.draws = draws_per_step

    def _per_partition(self, task, indices: list[int], *args) -> dict[int, object]:
        """``task(partitions, *args)`` once per worker on the partitions it holds among
        ``indices`` (one task per worker: a task costs milliseconds of scheduling); the results
        by partition index."""
        by_worker: dict[str, list[int]] = {}
        for i in indices:
            by_worker.setdefault(self.holder[i], []).append(i)
        futures = {worker: self.client.submit(
            task, [self.parts[i] for i in idx], *args, workers=[worker],
            allow_other_workers=True, pure=False) for worker, idx in by_worker.items()}
        results = {}
        for worker, out in zip(futures, self.client.gather(list(futures.values())), strict=True):
            results.update(zip(by_worker[worker], out, strict=True))
        return results

    def _sums(self, U: np.ndarray, indices: list[int], with_grad: bool = True
              ) -> tuple[np.ndarray, np.ndarray]:
        results = self._per_partition(_partial_sums, indices, U, self.source.kind,
                                      self.intercept, self.draws, with_grad)
        G = np.zeros((U.shape[0], U.shape[1]))
        ll = np.zeros(U.shape[0])
        for i in indices:  # partition order, whichever worker answered first
            G += results[i][0]
            ll += results[i][1]
        return G, ll

    def loglik_grad(self, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._sums(U, list(range(len(self.parts))))

    def grouped_pass(self, U: np.ndarray, Bg: np.ndarray, Bx: np.ndarray, with_grad: bool,
                     rows: list[int] | None = None):
        """The grouped kernel over the partitions ``rows`` (default all): (G, ll, the primary
        factor's per-group sums, the other factors' per-effect sums or None), each summed in
        partition order."""
        indices = list(range(len(self.parts))) if rows is None else rows
        results = self._per_partition(_grouped_sums, indices, U, Bg, Bx, self.source.kind,
                                      self.intercept, with_grad)
        # partition order, whichever worker answered first
        return add_in_order([results[i] for i in indices])

    def grouped_blocks(self, batch_size: int) -> list[list[int]]:
        """Minibatch blocks of consecutive partitions, about ``batch_size`` rows each."""
        per_block = max(1, round(batch_size / max(1.0, self.sizes.mean())))
        n = len(self.parts)
        return [list(range(k, min(n, k + per_block))) for k in range(0, n, per_block)]

    def curvature(self, u: np.ndarray) -> np.ndarray:
        """``rows.curvature_sums`` over all partitions, summed in partition order."""
        from vireg.rows import add_sums, curvature_or_zeros

        results = self._per_partition(_partial_curvature, list(range(len(self.parts))), u,
                                      self.source.kind, self.intercept)
        total = None
        for i in range(len(self.parts)):
            total = add_sums(total, results[i])
        return curvature_or_zeros(total, len(u))

    def loglik(self, U: np.ndarray) -> np.ndarray:
        return self._sums(U, list(range(len(self.parts))), with_grad=False)[1]

    def block_loglik_grad(self, U: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
        return self._sums(U, self.groups[b])

    def warm_up(self, n_kernel_cols: int) -> None:
        """Compile (or load from Numba's cache) the kernel on every worker: one pass."""
        self.loglik_grad(np.zeros((1, n_kernel_cols)))

    def describe(self) -> dict:
        return {"backend": "dask", "partitions": len(self.parts),
                "workers": len(self.client.scheduler_info().get("workers", {}))}

    def close(self) -> None:
        self.parts = []
        self.source.close()
