"""Reading tables and building the design: response vector and covariate matrix, checked.

The reader keeps every cell as text until a column is needed, so an error can name the column and
the first offending row. Only the response and the chosen covariates are converted to numbers.
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vireg.errors import InputError

MISSING_TOKENS = frozenset({"", "na", "nan", "-nan", "+nan", "null", "none", "n/a", "."})
# Values beyond this cannot be standardised without overflow (their squares exceed float64).
MAX_ABS_VALUE = 1e100


def _show(cell: str) -> str:
    """A cell as it can appear in a one-line message: quoted, newlines escaped, truncated."""
    text = cell.strip()
    text = text if len(text) <= 40 else text[:37] + "..."
    return repr(text)


@dataclass(frozen=True)
class Table:
    """Columns by name, in file order: float64 arrays when the whole file parsed as numbers,
    else text cells (converted, with precise messages, only for the columns a model uses).
    ``source`` names the file for messages."""

    columns: dict[str, list[str] | np.ndarray]
    n_rows: int
    source: str


@dataclass(frozen=True)
class Design:
    """Response and covariates as float64 arrays, with the names the user gave them."""

    y: np.ndarray
    X: np.ndarray  # (N, D), C-contiguous
    response: str
    covariates: list[str]  # design column names: numeric columns, then "col[level]" indicators
    dropped_rows: int = 0  # rows left out for missing values (data.missing: drop)
    sources: list[str] | None = None  # the data column each design column comes from
    encodings: dict | None = None  # categorical column -> {"levels": [...], "reference": ...}
    standardization: dict | None = None  # {"mean": [...], "sd": [...]} when data.standardize
    formula: dict | None = None  # data.formula: what vireg.formula.formula_columns needs (JSON)
    row_data: np.ndarray | None = None  # binomial trials or count exposure, as given
    row_data_name: str | None = None  # its column
    groups: object | None = None  # models.multilevel.GroupTerms of the group terms, if any

    @classmethod
    def names_only(cls, response: str, covariates: list[str], dropped_rows: int) -> Design:
        """A design whose rows live elsewhere (a disk cache, Dask workers): names, no values."""
        return cls(y=np.empty(0), X=np.empty((0, len(covariates))), response=response,
                   covariates=list(covariates), dropped_rows=dropped_rows,
                   sources=list(covariates), encodings={})


def read_table(path: Path) -> Table:
    """Read a CSV (or, with pyarrow installed, a Parquet) file into columns; ``-`` reads a CSV
    from standard input."""
    if str(path) == "-":
        return _read_stdin()
    if not path.exists():
        raise InputError(f"data file '{path}' not found: check data.path (relative to the config file)")
    if path.is_dir():
        raise InputError(f"data.path '{path}' is a directory: give the path of a CSV or Parquet file")
    if path.suffix.lower() in (".parquet", ".pq"):
        return _read_parquet(path)
    return _read_csv(path)


def _read_stdin() -> Table:
    import sys
    import tempfile

    text = sys.stdin.read()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stdin.csv"
        path.write_text(text, encoding="utf-8")
        table = _read_csv(path)
    return Table(columns=table.columns, n_rows=table.n_rows, source="standard input")


def _read_csv(path: Path) -> Table:
    """NumPy's C parser first (a 46 MB file in about a second); if any cell is not a number, the
    file is read again as text so that the message can name the column and row."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            header_line = fh.readline()
        header = [h.strip() for h in next(csv.reader([header_line], skipinitialspace=True), [])]
        if header and all(header) and len(set(header)) == len(header):
            table = _read_csv_arrow(path, header)
            if table is not None:
                return table
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "input contained no data": handled below
                values = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2,
                                    encoding="utf-8-sig", quotechar='"')
            if values.shape[0] > 0 and values.shape[1] == len(header):
                return Table(columns={name: values[:, j] for j, name in enumerate(header)},
                             n_rows=values.shape[0], source=str(path))
    except (ValueError, UnicodeDecodeError, OSError, csv.Error):
        pass
    return _read_csv_text(path)


def _read_csv_arrow(path: Path, header: list[str]) -> Table | None:
    """pyarrow's multi-threaded CSV reader, when installed (the parquet extra): numeric columns
    as float64 arrays (empty, NA, NaN and null cells as NaN, reported as missing), any other
    column as its text cells, so that every check and message is the same as with the text
    reader. None when pyarrow is absent or cannot read the file (the callers fall back)."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pcsv
    except ImportError:
        return None
    # 4 MB blocks instead of pyarrow's 1 MB: a quarter of the chunks per column to stitch
    # together (0.94 GB: 225 instead of 898), and the parse measured no slower.
    read_options = pcsv.ReadOptions(encoding="utf8", block_size=4 << 20)
    try:
        try:
            # Every column as float64 first: skipping pyarrow's type inference parses a 0.94 GB
            # CSV of numbers in 2.9-3.3 s instead of 3.8-5.3 s (alternated in one process). A
            # cell that is not a number (a text or true/false column) fails the conversion, and
            # the file is read again with inference.
            table = pcsv.read_csv(path, read_options=read_options,
                                  convert_options=pcsv.ConvertOptions(
                                      column_types={name: pa.float64() for name in header}))
        except pa.ArrowInvalid:
            table = pcsv.read_csv(path, read_options=read_options)
        if table.num_rows == 0 or table.column_names != header:
            return None
        text_cols = [n for n in header if not _is_arrow_number(table.schema.field(n).type)]
        if text_cols:  # read again as strings: cells exactly as written (true stays true)
            as_text = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
                include_columns=text_cols, column_types={n: pa.string() for n in text_cols},
                strings_can_be_null=False))
    except (pa.ArrowException, OSError, UnicodeDecodeError):
        return None
    columns: dict[str, list[str] | np.ndarray] = {}
    for name in header:
        if name in text_cols:
            columns[name] = as_text.column(name).to_pylist()
        else:
            columns[name] = _arrow_column(table.column(name))
    n_rows = table.num_rows
    del table  # its chunks were copied into one array per column
    release_reader_memory()
    return Table(columns=columns, n_rows=n_rows, source=str(path))


def release_reader_memory() -> None:
    """Hand pyarrow's freed buffers back to the operating system. Its allocator keeps them for
    reuse: after a 0.94 GB CSV was read and converted, the process held 2.0 GB, 1.0 GB after
    this."""
    import sys

    pa = sys.modules.get("pyarrow")  # never import pyarrow just for this
    if pa is not None:
        pa.default_memory_pool().release_unused()


def _is_arrow_number(t) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)


def _read_csv_text(path: Path) -> Table:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh, skipinitialspace=True))
    except UnicodeDecodeError:
        raise InputError(f"data file '{path}' is not a UTF-8 text CSV file") from None
    except (OSError, csv.Error) as exc:
        raise InputError(f"cannot read data file '{path}': {exc}") from None
    if not rows:
        raise InputError(f"data file '{path}' is empty: it needs a header row and data rows")
    header = [h.strip() for h in rows[0]]
    for j, name in enumerate(header):
        if not name:
            where = "the last" if j == len(header) - 1 else f"column {j + 1}"
            raise InputError(f"data file '{path}': {where} header field is empty (a trailing "
                             "comma?): name every column")
    body = [r for r in rows[1:] if r and any(c.strip() for c in r)]
    if not body:
        raise InputError(f"data file '{path}' has a header but no data rows")
    seen = set()
    for name in header:
        if name in seen:
            raise InputError(f"data file '{path}' has two columns named '{name}': rename one")
        seen.add(name)
    for i, row in enumerate(body):
        if len(row) != len(header):
            raise InputError(f"data file '{path}' row {i + 1} has {len(row)} fields but the header "
                             f"has {len(header)}: fix that row")
    columns = {name: [row[j] for row in body] for j, name in enumerate(header)}
    return Table(columns=columns, n_rows=len(body), source=str(path))


def _read_parquet(path: Path) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("reading Parquet needs pyarrow: pip install 'vireg[parquet]', or convert "
                         "the file to CSV") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises many types for unreadable files
        raise InputError(f"cannot read Parquet file '{path}': {exc}") from None
    columns = {name: _arrow_column(table.column(name)) for name in table.column_names}
    if table.num_rows == 0:
        raise InputError(f"data file '{path}' has no rows")
    return Table(columns=columns, n_rows=table.num_rows, source=str(path))


def _arrow_column(column) -> list[str] | np.ndarray:
    """A Parquet column as float64 (nulls as NaN) when it holds numbers, else as text cells."""
    import pyarrow as pa

    t = column.type
    if pa.types.is_float64(t):  # nulls become NaN; a cast first cost 2.2 s for 1M x 100
        return np.ascontiguousarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) \
            or pa.types.is_null(t):
        return np.ascontiguousarray(
            column.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    return ["" if v is None else str(v) for v in column.to_pylist()]


def numeric_column(table: Table, name: str) -> np.ndarray:
    """Convert a text column to float64, naming the first bad or missing cell if there is one."""
    cells = table.columns[name]
    if isinstance(cells, np.ndarray):
        return _check_numeric(cells, name)
    try:
        values = np.array(cells, dtype=np.float64)
    except ValueError:
        values = None
    if values is not None and np.isfinite(values).all():
        big = np.flatnonzero(np.abs(values) > MAX_ABS_VALUE)
        if big.size:
            i = int(big[0])
            raise InputError(f"column '{name}' has a value too large to work with ({_show(cells[i])} "
                             f"at data row {i + 1}; at most {MAX_ABS_VALUE:g}): rescale the column")
        return values
    n_missing = sum(1 for c in cells if c.strip().lower() in MISSING_TOKENS)
    if n_missing:
        first = next(i for i, c in enumerate(cells) if c.strip().lower() in MISSING_TOKENS)
        raise InputError(f"column '{name}' has {n_missing} missing value(s) (first at data row "
                         f"{first + 1}): remove or impute them, or set data.missing: drop")
    for i, c in enumerate(cells):
        try:
            v = float(c)
        except ValueError:
            raise InputError(f"column '{name}' has a non-numeric value {_show(c)} at data row "
                             f"{i + 1} among numbers: fix that cell (a column of text only is "
                             "used as categorical)") from None
        if not math.isfinite(v):
            raise InputError(f"column '{name}' has an infinite value {_show(c)} at data row "
                             f"{i + 1}: remove or fix that row")
    raise AssertionError("unreachable: a column failed to convert but no bad cell was found")


MAX_LEVELS = 100


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def categorical_levels(table: Table, name: str) -> list[str] | None:
    """The sorted levels of a column whose cells are all text (none parses as a number), such as
    strings or true/false; None for a column of numbers (or of numbers with some bad cells, which
    ``numeric_column`` reports)."""
    cells = table.columns[name]
    if isinstance(cells, np.ndarray):
        return None
    present = [c.strip() for c in cells if c.strip().lower() not in MISSING_TOKENS]
    if not present or any(_is_number(c) for c in present):
        return None
    levels = sorted(set(present))
    if len(levels) == 1:
        raise InputError(f"column '{name}' has the single value {_show(levels[0])}: a constant "
                         "says nothing about the response; leave it out of data.covariates")
    if len(levels) > MAX_LEVELS:
        raise InputError(f"column '{name}' has {len(levels)} distinct text values (at most "
                         f"{MAX_LEVELS} categories): if it is an identifier, leave it out of "
                         "data.covariates")
    return levels


def categorical_column(table: Table, name: str, levels: list[str]) -> np.ndarray:
    """0/1 indicator columns for every level but the first (the reference), (N, len - 1)."""
    cells = [c.strip() for c in table.columns[name]]
    missing = [i for i, c in enumerate(cells) if c.lower() in MISSING_TOKENS]
    if missing:
        raise InputError(f"column '{name}' has {len(missing)} missing value(s) (first at data row "
                         f"{missing[0] + 1}): remove or impute them, or set data.missing: drop")
    index = {level: k for k, level in enumerate(levels)}
    codes = np.array([index[c] for c in cells])
    return (codes[:, None] == np.arange(1, len(levels))[None, :]).astype(np.float64)


def _check_numeric(values: np.ndarray, name: str) -> np.ndarray:
    """The checks of ``numeric_column`` for a column that parsed as numbers."""
    bad = np.flatnonzero(~np.isfinite(values) | (np.abs(values) > MAX_ABS_VALUE))
    if bad.size == 0:
        return values
    i = int(bad[0])
    if np.isnan(values[i]):
        n_missing = int(np.isnan(values).sum())
        raise InputError(f"column '{name}' has {n_missing} missing value(s) (first at data row "
                         f"{i + 1}): remove or impute them, or set data.missing: drop")
    if np.isinf(values[i]):
        raise InputError(f"column '{name}' has an infinite value at data row {i + 1}: remove or "
                         "fix that row")
    raise InputError(f"column '{name}' has a value too large to work with ({values[i]:g} at data "
                     f"row {i + 1}; at most {MAX_ABS_VALUE:g}): rescale the column")


def _missing_mask(table: Table, name: str) -> np.ndarray:
    cells = table.columns[name]
    if isinstance(cells, np.ndarray):
        return np.isnan(cells)
    return np.array([c.strip().lower() in MISSING_TOKENS for c in cells], dtype=bool)


def drop_missing(table: Table, names: list[str]) -> tuple[Table, int]:
    """The table without the rows that miss a value in any of ``names``."""
    missing = np.zeros(table.n_rows, dtype=bool)
    for name in names:
        missing |= _missing_mask(table, name)
    n_drop = int(missing.sum())
    if n_drop == 0:
        return table, 0
    if n_drop == table.n_rows:
        raise InputError(f"every row of '{table.source}' misses a value in "
                         f"{', '.join(names)}: nothing is left to fit")
    keep = ~missing
    columns = {}
    for name in names:
        cells = table.columns[name]
        columns[name] = (cells[keep] if isinstance(cells, np.ndarray)
                         else [c for c, k in zip(cells, keep, strict=True) if k])
    return Table(columns=columns, n_rows=table.n_rows - n_drop, source=table.source), n_drop


def build_design(table: Table, response: str, covariates: list[str] | None,
                 missing: str = "error", row_data: tuple[str, str] | None = None) -> Design:
    """Select and convert the response and covariate columns (``missing: drop`` first leaves out
    the rows with a missing value in any of them); ``row_data``: (config key, column) of the
    binomial trials or the exposure, read beside them."""
    names = list(table.columns)

    def missing_column(col: str, key: str) -> InputError:
        import difflib
        close = difflib.get_close_matches(col, names, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return InputError(f"{key} '{col}' is not a column of '{table.source}': {hint}"
                          f"columns are {', '.join(names)}")

    if response not in table.columns:
        raise missing_column(response, "data.response")
    extra = [] if row_data is None else [row_data[1]]
    if row_data is not None and row_data[1] not in table.columns:
        raise missing_column(row_data[1], row_data[0])
    if covariates is None:
        covariates = [n for n in names if n != response and n not in extra]
    for c in covariates:
        if c not in table.columns:
            raise missing_column(c, "data.covariates entry")
        if c == response:
            raise InputError(f"data.covariates lists the response '{response}': remove it")
    dropped = 0
    if missing == "drop":
        table, dropped = drop_missing(table, [response, *extra, *covariates])
    y = numeric_column(table, response)
    x = numeric_column(table, extra[0]) if extra else None
    blocks, names, sources, encodings = [], [], [], {}
    for c in covariates:
        levels = categorical_levels(table, c)
        if levels is None:
            blocks.append(numeric_column(table, c)[:, None])
            names.append(c)
            sources.append(c)
        else:
            blocks.append(categorical_column(table, c, levels))
            names += [f"{c}[{level}]" for level in levels[1:]]
            sources += [c] * (len(levels) - 1)
            encodings[c] = {"levels": levels, "reference": levels[0]}
    X = _rows_from_blocks(blocks, table.n_rows)
    return Design(y=y, X=X, response=response, covariates=names, dropped_rows=dropped,
                  sources=sources, encodings=encodings, row_data=x,
                  row_data_name=extra[0] if extra else None)


def _rows_from_blocks(blocks: list[np.ndarray], n_rows: int) -> np.ndarray:
    """The N x D design (float64, C-contiguous) from its column blocks (each N x k)."""
    columns = [np.ascontiguousarray(b[:, k], dtype=np.float64)
               for b in blocks for k in range(b.shape[1])]
    X = np.empty((n_rows, len(columns)))
    if not columns or n_rows == 0:
        return X
    from vireg.kernels.columns import write_columns
    from vireg.kernels.flags import chunk_rows_for

    chunk = chunk_rows_for(n_rows, len(columns))
    for j0 in range(0, len(columns), 8):
        group = columns[j0:j0 + 8]
        padded = group + [group[0]] * (8 - len(group))
        write_columns(X, j0, len(group), *padded, chunk)
    return X


def standardize_design(design: Design) -> Design:
    """The design with every covariate z-scored (data.standardize: the model is then stated on
    that scale, priors included); the means and sds are kept to report and predict on both."""
    from dataclasses import replace

    mean = design.X.mean(axis=0)
    sd = design.X.std(axis=0)
    for j in np.flatnonzero(sd == 0):
        raise InputError(f"column '{design.covariates[j]}' is constant, so it cannot be "
                         "standardized: leave it out of data.covariates")
    X = np.ascontiguousarray((design.X - mean) / sd)
    return replace(design, X=X, standardization={"mean": mean.tolist(), "sd": sd.tolist()})
