"""Out-of-core data: the standardised rows in a binary cache on disk, streamed through a buffer.

``runtime.out_of_core: true`` never holds the table in memory. The first fit reads the source
(Parquet row groups or CSV blocks, through pyarrow's streaming readers) once, checking every cell
as the in-memory reader does, and writes the raw response and covariates to float64 files while
merging the column moments (``rows.ColumnMoments``). Once the model has chosen its
standardisation, a second pass rewrites them standardised, in the kernel's dtype, gathering the
Gram matrix on the way; a ``meta.json`` written last (atomically, so an interrupted build is never
mistaken for a finished one) records the moments and the Gram matrix. Later fits with the same
source file (same path, size and modification time), columns and model options find the cache
and skip both passes.

Each kernel pass then reads the files in pieces of at most ``runtime.memory_mb`` into one buffer
(asking the OS to read the next piece ahead while the kernel works), so the process's memory is
bounded by that setting, not by the data. Pieces are summed in file order, so results do not depend on the
thread count; a different ``memory_mb`` changes only the rounding of the sums.

With group terms (``data.groups``) the cache also holds every row's group ids and slope values,
and each piece is written sorted by the primary factor (``cache_groups``).
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vireg.data import MAX_ABS_VALUE, Design
from vireg.errors import InputError
from vireg.kernels.codes import GAUSSIAN, LOGIT, PROBIT
from vireg.kernels.flags import chunk_rows_for, use_parallel
from vireg.rows import (
    ColumnMoments,
    add_sums,
    block_bounds,
    curvature_or_zeros,
    curvature_sums,
    kernel_response,
    standardized_gram,
)

CACHE_VERSION = 2  # 2: y.bin holds the kernel's per-row data (``rows.kernel_response``)
DTYPES = {"float64": np.float64, "float32": np.float32}


def _reader_batches(path: Path, names: list[str], rows_per_batch: int, text: tuple = ()):
    """Record batches of the columns ``names`` from a Parquet or CSV file, in file order; the
    columns ``text`` (group columns) may hold text, the others are numbers."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("runtime.out_of_core reads files with pyarrow: pip install "
                         "'vireg[parquet]'") from None
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            # pre_buffer (pyarrow's default) caches column chunks ahead and, measured on a 4 GB
            # file, kept them: 1.7 GB held after 40 batches; without it memory stays flat.
            pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
        except Exception as exc:  # pyarrow raises many types for unreadable files
            raise InputError(f"cannot read Parquet file '{path}': {exc}") from None
        _check_columns(path, pf.schema_arrow.names, names)
        for name in (n for n in names if n not in text):
            t = pf.schema_arrow.field(name).type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
                raise _text_column(name)
        # One thread: parallel decoding would hold several row groups at once.
        try:
            yield from pf.iter_batches(batch_size=rows_per_batch, columns=names,
                                       use_threads=False)
        except pa.ArrowMemoryError:
            raise MemoryError from None  # reported as out of memory, like NumPy's
        return
    header = _csv_header(path)
    _check_columns(path, header, names)
    block = max(1 << 20, min(64 << 20, rows_per_batch * 16 * len(header)))
    try:
        reader = pcsv.open_csv(
            path, read_options=pcsv.ReadOptions(block_size=block),
            convert_options=pcsv.ConvertOptions(include_columns=names,
                                                column_types={n: pa.string() if n in text else pa.float64()
                                                          for n in names}))
        yield from reader
    except pa.ArrowInvalid as exc:
        import re

        text = str(exc).splitlines()[0]
        hit = re.search(r"column #(\d+)", text)
        if hit and int(hit.group(1)) < len(header) and "conversion error" in text:
            value = text.rsplit(":", 1)[-1].strip()
            raise InputError(f"column '{header[int(hit.group(1))]}' of '{path}' has a non-numeric "
                             f"value {value}: out-of-core fits take numeric columns only (fix the "
                             "cell, encode a text column as 0/1 columns, or fit in memory)") from None
        raise InputError(f"cannot read data file '{path}': {text}") from None


def check_source_columns(path: Path, names: list[str]) -> None:
    """Raise the one-line error of the in-memory reader if a name is not a column of the file
    (header only: the Parquet schema or the CSV's first line)."""
    _check_columns(path, source_columns(path), names)


def default_covariates(path: Path, response: str, covariates: list[str] | None) -> list[str]:
    """data.covariates as given, or (as in memory) every column of the file but the response."""
    if covariates is not None:
        return covariates
    return [c for c in source_columns(path) if c != response]


def source_columns(path: Path) -> list[str]:
    """The column names of a data file: the Parquet schema, or the CSV's first line."""
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq

            header = pq.read_schema(path).names
        except ImportError:
            raise InputError("reading Parquet needs pyarrow: pip install 'vireg[parquet]'") from None
        except Exception as exc:  # pyarrow raises many types for unreadable files
            raise InputError(f"cannot read Parquet file '{path}': {exc}") from None
        return header
    return _csv_header(path)


def _csv_header(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            # csv: a quoted header ("y","x"; R's write.csv) names the columns y and x
            return [h.strip() for h in next(csv.reader([fh.readline()]), [])]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read data file '{path}': {exc}") from None


def _text_column(name: str) -> InputError:
    return InputError(f"column '{name}' holds text: out-of-core fits take numeric columns only; "
                      "encode it as 0/1 columns, or fit in memory (runtime.out_of_core: false)")


def _check_columns(path: Path, header: list[str], names: list[str]) -> None:
    """names: the response, then the covariates; the in-memory reader's messages."""
    if names[0] in names[1:]:
        raise InputError(f"data.covariates lists the response '{names[0]}': remove it")
    for name in names:
        if header.count(name) > 1:  # as the in-memory reader says
            raise InputError(f"data file '{path}' has two columns named '{name}': rename one")
    for i, name in enumerate(names):
        if name not in header:
            close = difflib.get_close_matches(name, header, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            key = "data.response" if i == 0 else "data.covariates entry"
            raise InputError(f"{key} '{name}' is not a column of '{path}': {hint}columns are "
                             f"{', '.join(header)}")


def checked_piece(cols: list[np.ndarray], names: list[str], missing: str, likelihood,
                  has_row_data: bool, where, with_rows: bool = False):
    """(y, row data or None, X, dropped) of a streamed piece: ``checked_rows`` with the trials
    or exposure as the last column, then the likelihood's own row checks (counts, trials,
    exposure), each row named by ``where`` of its place in the piece; ``with_rows`` adds the
    indices of the rows kept."""
    y, X, dropped, kept = checked_rows(cols, names, missing, likelihood.NAME == "bernoulli",
                                       where, with_rows=True)
    x = None
    if has_row_data:
        x, X = np.ascontiguousarray(X[:, -1]), np.ascontiguousarray(X[:, :-1])
    if hasattr(likelihood, "check_rows"):
        likelihood.check_rows(y, x, names[0], names[-1] if has_row_data else None,
                              lambda i: where(int(kept[i])))
    return (y, x, X, dropped, kept) if with_rows else (y, x, X, dropped)


def checked_rows(cols: list[np.ndarray], names: list[str], missing: str, binary: bool,
                 where, with_rows: bool = False):
    """(y, X, dropped) from float64 columns (response first), checked as the in-memory reader
    checks them: missing values (an error, or with missing == "drop" the rows are left out),
    values that are not finite or above MAX_ABS_VALUE, a response other than 0/1 for bernoulli.
    ``where(i)`` says in words where row i of this piece is, for the messages."""
    y = cols[0]
    X = np.column_stack(cols[1:]) if len(cols) > 1 else np.empty((len(y), 0))
    bad = np.isnan(y) | np.isnan(X).any(axis=1)
    rows = np.arange(len(y))
    dropped = 0
    if bad.any():
        if missing != "drop":
            j = next(k for k, c in enumerate(cols) if np.isnan(c).any())
            i = int(np.flatnonzero(np.isnan(cols[j]))[0])
            raise InputError(f"column '{names[j]}' has missing values ({where(i)}): remove or "
                             "impute them, or set data.missing: drop")
        keep = ~bad
        y, X, rows, dropped = y[keep], X[keep], rows[keep], int(bad.sum())
    for j, c in enumerate([y, *X.T]):
        big = np.flatnonzero(~(np.abs(c) <= MAX_ABS_VALUE))
        if big.size:
            raise InputError(f"column '{names[j]}' has a non-finite or too large value "
                             f"({c[big[0]]:g}) at {where(rows[big[0]])}: fix or remove it")
    if binary:
        bad_y = np.flatnonzero((y != 0) & (y != 1))
        if bad_y.size:
            raise InputError(f"response '{names[0]}' must be 0 or 1 for family bernoulli, but "
                             f"{where(rows[bad_y[0]])} has {y[bad_y[0]]:g}: recode it as 0/1 or "
                             "use family gaussian")
    if with_rows:  # and the kept rows' places in the piece
        return np.ascontiguousarray(y), np.ascontiguousarray(X), dropped, rows
    return np.ascontiguousarray(y), np.ascontiguousarray(X), dropped


@dataclass(frozen=True)
class CacheKey:
    """What the cached rows depend on; any change gives a different cache folder."""

    source: str
    size: int
    mtime_ns: int
    response: str
    covariates: tuple[str, ...]
    missing: str
    family: str
    intercept: bool
    dtype: str
    row_data: str | None = None  # the trials or exposure column
    groups: str | None = None  # the group terms (JSON)
    piece_rows: int | None = None  # with group terms: the rows of each sorted piece

    def digest(self) -> str:
        fields = {k: v for k, v in self.__dict__.items()  # a cache without group terms keeps
                  if v is not None or k not in ("groups", "piece_rows")}  # its digest
        text = json.dumps({**fields, "covariates": list(self.covariates),
                           "version": CACHE_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


class CachedSource:
    """The data of a config as a disk cache; ``Model(design, ..., source=this)`` fits it."""

    def __init__(self, path: Path, response: str, covariates: list[str] | None, missing: str,
                 likelihood, intercept: bool, dtype: str, cache_dir: Path, memory_mb: int,
                 row_data: str | None = None, groups: list | None = None):
        """``groups``: the group terms, (factor column, terms, correlated) per factor (terms
        "(Intercept)" or a numeric column); their rows are cached sorted (``cache_groups``)."""
        if str(path) == "-":
            raise InputError("runtime.out_of_core needs a data file, not standard input")
        if not path.is_file():
            raise InputError(f"data file '{path}' not found: check data.path (relative to the "
                             "config file)")
        from vireg.cache_groups import GroupColumns

        self.groups = GroupColumns(groups) if groups else None
        factors = self.groups.factors if groups else []
        covariates = (default_covariates(path, response, covariates) if covariates is not None
                      else [c for c in default_covariates(path, response, None)
                            if c != row_data and c not in factors])
        # The response, the covariates, then the trials or exposure (split off when read)
        self.names = [response, *covariates] + ([row_data] if row_data else [])
        # Columns of y.bin: the response, or it and the kernel's row data (``kernel_response``)
        self.y_cols = 1 if likelihood.CODE in (GAUSSIAN, LOGIT) else 2
        self.dtype = dtype
        self.memory_mb = memory_mb
        stat = path.stat()
        family = likelihood.NAME + ("_probit" if likelihood.CODE == PROBIT else "")
        self.key = CacheKey(str(path.resolve()), stat.st_size, stat.st_mtime_ns, response,
                            tuple(covariates), missing, family, intercept, dtype, row_data,
                            json.dumps(groups) if groups else None,
                            self._piece_rows(len(covariates)) if groups else None)
        self.path = path
        self.likelihood = likelihood
        self.has_row_data = row_data is not None
        check_source_columns(path, [response, *covariates])
        if groups:
            from vireg.group_rows import check_group_columns

            check_group_columns(path, groups)
        self.binary = likelihood.NAME == "bernoulli"
        self.primary = 0  # the model's primary factor (``MultilevelModel``) before standardize
        self.folder = cache_dir / self.key.digest()
        self.reused = (self.folder / "meta.json").is_file()
        self.build_seconds = 0.0
        if self.reused:
            meta = json.loads((self.folder / "meta.json").read_text())
            self.moments = _moments_from_json(meta["moments"])
            self.dropped = meta["dropped_rows"]
            self._meta = meta
            self.levels = meta.get("levels")
        else:
            self._meta = None
            self.moments, self.dropped = self._first_pass(cache_dir)
        self.design = Design.names_only(response, covariates, self.dropped)
        if groups:
            from dataclasses import replace

            from vireg.group_rows import group_terms

            self.design = replace(self.design, groups=group_terms(groups, self.levels))

    def _buffer_rows(self, n_cols: int) -> int:
        # One buffer of rows of the cached dtype within memory_mb (the cache build holds a
        # float64 piece and its standardised copy: it uses half as many rows).
        per_row = (n_cols + self.y_cols) * np.dtype(DTYPES[self.dtype]).itemsize
        return max(1024, (self.memory_mb << 20) // per_row)

    def _piece_rows(self, n_cov: int) -> int:
        # With group terms the cache is written and read in the same pieces; a piece (and its
        # group ids, slopes, and the kernel's float64 response) within memory_mb while built.
        return max(1024, (self.memory_mb << 20) // (2 * 8 * (n_cov + 8)))

    def _first_pass(self, cache_dir: Path) -> tuple[ColumnMoments, int]:
        import time

        t0 = time.perf_counter()
        self.building = cache_dir / f"{self.key.digest()}.building-{os.getpid()}"
        shutil.rmtree(self.building, ignore_errors=True)
        try:
            self.building.mkdir(parents=True)
        except OSError as exc:
            raise InputError(f"cannot create the out-of-core cache in '{cache_dir}': {exc}; set "
                             "runtime.cache_dir to a writable folder") from None
        moments, dropped, first_row = None, 0, 0
        rows = self._buffer_rows(len(self.names) - 1) // 2  # float64 while building
        n_cov = len(self.names) - 1 - self.has_row_data
        raw = ["X.raw", "y.raw"] + (["g.raw", "w.raw"] if self.groups else [])
        text = tuple(self.groups.factors) if self.groups else ()
        columns = list(dict.fromkeys(self.names + (self.groups.factors + self.groups.slopes
                                                   if self.groups else [])))
        try:
            with contextlib.ExitStack() as stack:
                out = {name: stack.enter_context(open(self.building / name, "wb"))
                       for name in raw}
                for batch in _reader_batches(self.path, columns, rows, text):
                    y, x, X, d, group_rows = self._checked_batch(batch, first_row)
                    first_row += batch.num_rows
                    dropped += d
                    if len(y) == 0:
                        continue
                    counts = self.y_cols == 2
                    m = ColumnMoments.of_chunk(X, y, self.binary, x,
                                               self.likelihood if counts else None)
                    moments = m if moments is None else moments.merge(m)
                    X.reshape(len(y), n_cov).tofile(out["X.raw"])
                    (np.column_stack([y, x if x is not None else np.zeros(len(y))])
                     if counts else y).tofile(out["y.raw"])
                    if group_rows is not None:  # provisional ids, slope values
                        group_rows[0].tofile(out["g.raw"])
                        np.ascontiguousarray(group_rows[1]).tofile(out["w.raw"])
            if self.groups is not None and moments is not None:
                from vireg.group_rows import group_terms

                self.levels = self.groups.levels()
                group_terms(self.groups.spec, self.levels)  # one level: the reader's error
        except BaseException:
            shutil.rmtree(self.building, ignore_errors=True)
            raise
        if moments is None:
            shutil.rmtree(self.building, ignore_errors=True)
            raise InputError(f"data file '{self.path}' has no rows to fit"
                             + (" after dropping rows with missing values" if dropped else ""))
        self.build_seconds += time.perf_counter() - t0
        return moments, dropped

    def _checked_batch(self, batch, first_row: int):
        """(y, row data or None, X, dropped, group rows or None) of a record batch, checked as
        the in-memory reader checks it; group rows: (provisional ids, slope values) of the rows
        kept (``cache_groups.GroupColumns``)."""
        def where(i: int) -> str:
            return f"data row {first_row + i + 1}"

        def numbers(names: list[str]) -> list[np.ndarray]:
            return [np.asarray(batch.column(n).to_numpy(zero_copy_only=False), dtype=np.float64)
                    for n in names]

        missing = self.key.missing
        if self.groups is None:
            return (*checked_piece(numbers(self.names), self.names, missing, self.likelihood,
                                   self.has_row_data, where), None)
        from vireg.cache_groups import arrow_cells

        cells = [arrow_cells(batch.column(f)) for f in self.groups.factors]
        keep = self.groups.rows_with_levels(cells, missing, where)
        head, tail = ((self.names[:-1], self.names[-1:]) if self.has_row_data
                      else (self.names, []))
        names = head + self.groups.slopes + tail
        cols = [c[keep] for c in numbers(names)]
        y, x, X, d, kept = checked_piece(cols, names, missing, self.likelihood,
                                         self.has_row_data, lambda i: where(int(keep[i])), True)
        ids = self.groups.ids([c[keep][kept] for c in cells])
        n_cov = len(head) - 1
        return (y, x, np.ascontiguousarray(X[:, :n_cov]), d + len(cells[0]) - len(keep),
                (ids, X[:, n_cov:]))

    def standardize(self, x_centre, x_scale, y_centre, y_scale, intercept, dtype, draws_per_step,
                    likelihood):
        """Write the standardised rows (unless the cache has them) and open them for streaming;
        returns (rows, gram)."""
        import time

        D = len(self.names) - 1 - self.has_row_data
        N = self.moments.n_rows
        scaling = (x_centre, x_scale, y_centre, y_scale)
        if self._meta is None:
            t0 = time.perf_counter()
            try:
                with contextlib.ExitStack() as stack:
                    files = {name: stack.enter_context(open(self.building / name, mode))
                             for name, mode in self._second_pass_files()}
                    gram = (self._write_grouped(files, N, D, scaling, likelihood, intercept, dtype)
                            if self.groups else
                            self._write_rows(files, N, D, scaling, likelihood, intercept, dtype))
                for name, mode in self._second_pass_files():
                    if mode == "rb":
                        (self.building / name).unlink()
                self._meta = self._publish(gram, N, D)
            except BaseException:
                shutil.rmtree(self.building, ignore_errors=True)
                raise
            self.build_seconds += time.perf_counter() - t0
        g = self._meta["gram"]
        k = len(g[1])  # reshape: JSON turns a 0 x 0 matrix into an empty list
        gram = (np.array(g[0], dtype=np.float64).reshape(k, k), np.array(g[1], dtype=np.float64),
                float(g[2]))
        if self.groups:
            return self._grouped_rows(N, D, dtype, likelihood, intercept, draws_per_step), gram
        rows = CacheRows(self.folder, N, D, DTYPES[dtype], self._buffer_rows(D), likelihood,
                         intercept, draws_per_step, self.y_cols)
        rows.built = {"reused": self.reused, "build_seconds": round(self.build_seconds, 2)}
        return rows, gram

    def _second_pass_files(self) -> list[tuple[str, str]]:
        names = [("X.raw", "rb"), ("y.raw", "rb"), ("Z.bin", "wb"), ("y.bin", "wb")]
        if self.groups:
            names += [("g.raw", "rb"), ("w.raw", "rb"), ("g.bin", "wb"), ("w.bin", "wb")]
        return names

    def _write_rows(self, files, N, D, scaling, likelihood, intercept, dtype):
        """The standardised rows in file order; returns the Gram matrix."""
        x_centre, x_scale, y_centre, y_scale = scaling
        k = self.y_cols
        gram = None
        rows = self._buffer_rows(D) // 2
        for start in range(0, N, rows):
            m = min(rows, N - start)
            X = np.fromfile(files["X.raw"], np.float64, m * D).reshape(m, D)
            yx = np.fromfile(files["y.raw"], np.float64, m * k).reshape(m, k)
            Z = (X - x_centre) / x_scale
            yz = (yx[:, 0] - y_centre) / y_scale
            g = standardized_gram(Z, yz, intercept)
            gram = g if gram is None else (gram[0] + g[0], gram[1] + g[1], gram[2] + g[2])
            x = yx[:, 1] if self.has_row_data else None
            np.ascontiguousarray(Z, dtype=DTYPES[dtype]).tofile(files["Z.bin"])
            np.ascontiguousarray(kernel_response(likelihood, yz, x),
                                 dtype=DTYPES[dtype]).tofile(files["y.bin"])
        return gram

    def _write_grouped(self, files, N, D, scaling, likelihood, intercept, dtype):
        """The standardised rows in pieces sorted by the primary factor (``cache_groups``)."""
        from vireg.cache_groups import write_sorted_pieces

        plan = self._group_plan()
        return write_sorted_pieces(files, N, D, self.y_cols, self.key.piece_rows, scaling,
                                   likelihood, intercept, DTYPES[dtype], plan,
                                   self.groups.remap(self.levels))

    def _group_plan(self) -> dict:
        from vireg.group_rows import group_plan

        return group_plan(self.design.groups, self.primary, self.groups.slopes)

    def _publish(self, gram, N: int, D: int) -> dict:
        """Write meta.json last and move the finished cache into place; returns the meta."""
        meta = {"version": CACHE_VERSION, "key": {**self.key.__dict__,
                                                  "covariates": list(self.key.covariates)},
                "n_rows": N, "n_cov": D, "dropped_rows": self.dropped,
                "moments": _moments_to_json(self.moments),
                "gram": [gram[0].tolist(), gram[1].tolist(), gram[2]]}
        if self.groups:
            meta |= {"levels": self.levels, "primary": self.primary}
        tmp = self.building / "meta.json.tmp"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, self.building / "meta.json")
        if self.folder.exists():  # another process finished the same cache first
            shutil.rmtree(self.building, ignore_errors=True)
        else:
            os.replace(self.building, self.folder)
        return meta

    def _grouped_rows(self, N, D, dtype, likelihood, intercept, draws_per_step):
        from vireg.cache_groups import CacheGroupedRows

        if self._meta.get("primary", self.primary) != self.primary:
            raise InputError(f"the out-of-core cache '{self.folder}' was sorted for another "
                             "grouping factor: delete the cache folder and run again")
        piece = self.key.piece_rows
        rows = CacheRows(self.folder, N, D, DTYPES[dtype], piece, likelihood, intercept,
                         draws_per_step, 2, y_dtype=np.float64)
        rows.built = {"reused": self.reused, "build_seconds": round(self.build_seconds, 2)}
        return CacheGroupedRows(rows, self._group_plan(), piece)


def _moments_to_json(m: ColumnMoments) -> dict:
    out = {}
    for k, v in m.__dict__.items():
        out[k] = v.tolist() if isinstance(v, np.ndarray) else v
    return out


def _moments_from_json(d: dict) -> ColumnMoments:
    arrays = {"x_mean", "x_m2", "x_min", "x_max", "class_extremes", "histogram"}
    return ColumnMoments(**{k: (np.array(v, dtype=np.float64) if k in arrays and v is not None
                                else v) for k, v in d.items()})


class CacheRows:
    """Row source over the cache files, read in pieces of ``buffer_rows`` rows."""

    def __init__(self, folder: Path, n_rows: int, n_cov: int, dtype, buffer_rows: int,
                 likelihood, intercept: bool, draws_per_step: int, y_cols: int = 1,
                 y_dtype=None):
        """``y_dtype``: y.bin's dtype when not the rows' (the grouped kernel reads float64)."""
        self.n_rows, self.n_cov = n_rows, n_cov
        self.folder = folder
        self.dtype = np.dtype(dtype)
        self.intercept = intercept
        self.likelihood = likelihood
        self.buffer_rows = int(min(buffer_rows, n_rows))
        self.chunk_rows = chunk_rows_for(n_rows, n_cov)
        self.kernel = likelihood.loglik_grad_kernel(
            use_parallel(self.buffer_rows, n_cov, draws_per_step))
        self.parallel = use_parallel(self.buffer_rows, n_cov, draws_per_step)
        self._z = open(folder / "Z.bin", "rb", buffering=0)  # noqa: SIM115 - closed by close()
        self._y = open(folder / "y.bin", "rb", buffering=0)  # noqa: SIM115
        self._Zbuf = np.empty((self.buffer_rows, n_cov), self.dtype)
        self.y_cols = y_cols
        self._ybuf = np.empty((self.buffer_rows, y_cols) if y_cols > 1 else self.buffer_rows,
                              y_dtype or self.dtype)
        self.bounds = np.array([0, n_rows], dtype=np.int64)
        self.bytes_read = 0
        self.built: dict = {}  # whether the cache was reused, how long building it took

    @property
    def n_blocks(self) -> int:
        return len(self.bounds) - 1

    def set_blocks(self, batch_size: int, draws_per_step: int) -> None:
        """Blocks of rows; the draw count chooses nothing here (every piece read from the cache
        goes through the same kernel build)."""
        self.bounds = block_bounds(self.n_rows, batch_size)

    def _read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        m = stop - start
        z, y = self._Zbuf[:m], self._ybuf[:m]
        row = self.n_cov * self.dtype.itemsize
        if self.n_cov:  # (a model without covariates has an empty Z file)
            _read_exact(self._z, memoryview(z).cast("B"), start * row)
        y_row = self.y_cols * self._ybuf.dtype.itemsize
        _read_exact(self._y, memoryview(y).cast("B"), start * y_row)
        self.bytes_read += m * (row + y_row)
        return z, y

    def _range_sums(self, U: np.ndarray, lo: int, hi: int, with_grad: bool = True
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Kernel sums over rows [lo, hi), piece by piece in file order. Before the kernel works
        on a piece, the OS is asked to read the next one ahead (posix_fadvise WILLNEED), so disk
        reads overlap the computation without a second buffer or a Python thread."""
        G = np.zeros((U.shape[0], U.shape[1]))
        ll = np.zeros(U.shape[0])
        for start in range(lo, hi, self.buffer_rows):
            stop = min(start + self.buffer_rows, hi)
            z, y = self._read(start, stop)
            if stop < hi:
                self._read_ahead(stop, min(stop + self.buffer_rows, hi))
            Gc, llc = self.kernel(z, y, U, self.intercept, self.chunk_rows, with_grad)
            G += Gc
            ll += llc
        return G, ll

    def curvature(self, u: np.ndarray) -> np.ndarray:
        """``rows.curvature_sums`` over all rows, piece by piece in file order."""
        total = None
        for start in range(0, self.n_rows, self.buffer_rows):
            stop = min(start + self.buffer_rows, self.n_rows)
            z, y = self._read(start, stop)
            total = add_sums(total, curvature_sums(z, y, u, self.intercept, self.likelihood))
        return curvature_or_zeros(total, len(u))

    def _read_ahead(self, start: int, stop: int) -> None:
        if not hasattr(os, "posix_fadvise"):  # not on macOS or Windows: plain reads
            return
        row = self.n_cov * self.dtype.itemsize
        size = self.y_cols * self.dtype.itemsize
        os.posix_fadvise(self._z.fileno(), start * row, (stop - start) * row,
                         os.POSIX_FADV_WILLNEED)
        os.posix_fadvise(self._y.fileno(), start * size, (stop - start) * size,
                         os.POSIX_FADV_WILLNEED)

    def loglik_grad(self, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._range_sums(U, 0, self.n_rows)

    def loglik(self, U: np.ndarray) -> np.ndarray:
        return self._range_sums(U, 0, self.n_rows, with_grad=False)[1]

    def block_loglik_grad(self, U: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
        return self._range_sums(U, int(self.bounds[b]), int(self.bounds[b + 1]))

    def describe(self) -> dict:
        """For fit.json: where the rows were read from and how much."""
        return {"backend": "out_of_core", "cache": str(self.folder), **self.built,
                "buffer_rows": self.buffer_rows,
                "gigabytes_read": round(self.bytes_read / 1e9, 3)}

    def warm_up(self, n_kernel_cols: int) -> None:
        z, y = self._read(0, 1)
        self.kernel(z, y, np.zeros((1, n_kernel_cols)), self.intercept, self.chunk_rows, True)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._z.close()
            self._y.close()


def read_array(fh, dtype, shape: tuple[int, int], start_row: int) -> np.ndarray:
    """Rows [start_row, start_row + shape[0]) of a file of C-ordered rows of ``shape[1]``
    values of ``dtype``."""
    out = np.empty(shape, dtype)
    if out.size:
        _read_exact(fh, memoryview(out).cast("B"), start_row * shape[1] * out.itemsize)
    return out


def _read_exact(fh, view: memoryview, offset: int) -> None:
    fh.seek(offset)
    done = 0
    while done < len(view):
        n = fh.readinto(view[done:])
        if not n:
            raise OSError("the out-of-core cache file is shorter than its meta.json says: delete "
                          "the cache folder and run again")
        done += n
