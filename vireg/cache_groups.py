"""Group terms in the out-of-core cache (``cache``): group columns become level ids as the
source is read, and every piece of rows is written sorted by the primary factor.

While the source is read, each factor's cells get provisional ids in order of first appearance
(the levels are not all known before the last row), written to g.raw beside the slope columns'
values (w.raw). Once the levels are merged (``group_rows.merged_levels``: the in-memory
reader's order) and the model has chosen its primary factor, the second pass maps the ids to the
levels' order and writes each piece of ``piece_rows`` rows sorted (stably) by the primary factor:
Z.bin, y.bin (the grouped kernel's two float64 response columns), g.bin (every factor's id)
and w.bin. Kernel passes read those same pieces (their size is part of the cache key), so each
group's rows in a piece are contiguous and its sums are formed in row order; the pieces are
added in file order (``group_rows.add_in_order``), whatever the thread count.
"""

from __future__ import annotations

import numpy as np

from vireg.errors import InputError
from vireg.group_rows import (
    add_in_order,
    check_slopes_vary,
    group_payload,
    level_key,
    merged_levels,
    piece_factors,
    piece_sums,
    primary_order,
)
from vireg.rows import kernel_response, standardized_gram


class GroupColumns:
    """The group columns of a cache being built: the factors, the slope columns their terms
    read, and each factor's provisional ids (level text -> id, in order of first appearance)."""

    def __init__(self, spec):
        from vireg.models.multilevel import INTERCEPT

        self.spec = spec
        self.factors = [f for f, _, _ in spec]
        self.slopes = sorted({t for _, terms, _ in spec for t in terms if t != INTERCEPT})
        self.keys: list[dict[str, int]] = [{} for _ in spec]

    def rows_with_levels(self, cells: list[np.ndarray], missing: str, where) -> np.ndarray:
        """The rows of a piece whose every group cell has a value; a missing one is an error
        unless data.missing is drop."""
        bad = np.zeros(len(cells[0]), dtype=bool)
        for f, c in zip(self.factors, cells, strict=True):
            miss = _missing(c)
            if miss.any() and missing != "drop":
                raise InputError(f"group column '{f}' misses a value at "
                                 f"{where(int(np.flatnonzero(miss)[0]))}: fill it in, or set "
                                 "data.missing: drop")
            bad |= miss
        return np.flatnonzero(~bad)

    def ids(self, cells: list[np.ndarray]) -> np.ndarray:
        """(rows, factors) provisional ids of a piece's cells."""
        out = np.empty((len(cells[0]), len(cells)), dtype=np.int64)
        for f, c in enumerate(cells):
            distinct, inverse = np.unique(c, return_inverse=True)
            seen = self.keys[f]
            local = np.array([seen.setdefault(level_key(v), len(seen))
                              for v in distinct.tolist()], dtype=np.int64)
            out[:, f] = local[inverse.ravel()]
        return out

    def levels(self) -> list[list[str]]:
        """Every factor's levels, in the in-memory reader's order."""
        return [merged_levels(list(k)) for k in self.keys]

    def remap(self, levels: list[list[str]]) -> list[np.ndarray]:
        """Per factor, the level index of each provisional id."""
        from vireg.group_rows import as_numbers

        out = []
        for keys, names in zip(self.keys, levels, strict=True):
            numeric = as_numbers(names) is not None
            index = {name: i for i, name in enumerate(names)}
            out.append(np.array([index[level_key(k, numeric)] for k in keys], dtype=np.int64))
        return out


def arrow_cells(column) -> np.ndarray:
    """A group column of a record batch: float64 (NaN when missing) for numbers, else the
    stripped text ("" when missing)."""
    import pyarrow as pa

    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
    return np.array(["" if c is None else str(c).strip() for c in column.to_pylist()],
                    dtype=object)


def _missing(cells: np.ndarray) -> np.ndarray:
    from vireg.data import MISSING_TOKENS

    if cells.dtype != object:
        return np.isnan(cells)
    return np.array([c.lower() in MISSING_TOKENS for c in cells], dtype=bool)


def write_sorted_pieces(files: dict, n_rows: int, n_cov: int, y_cols: int, piece_rows: int,
                        scaling: tuple, likelihood, intercept: bool, dtype, plan: dict,
                        remap: list[np.ndarray]):
    """The second pass of a cache with group terms: read the raw files of ``files`` (open
    handles X.raw, y.raw, g.raw, w.raw) piece by piece, standardise with ``scaling`` (x centre,
    x scale, y centre, y scale), sort each piece by the primary factor and write Z.bin, y.bin,
    g.bin and w.bin; returns the Gram matrix. A slope constant within every group is the
    in-memory reader's error."""
    x_centre, x_scale, y_centre, y_scale = scaling
    n_factors, n_slopes = len(remap), len(plan["slopes"])
    gram, ranges = None, []
    for start in range(0, n_rows, piece_rows):
        m = min(piece_rows, n_rows - start)
        X = np.fromfile(files["X.raw"], np.float64, m * n_cov).reshape(m, n_cov)
        yx = np.fromfile(files["y.raw"], np.float64, m * y_cols).reshape(m, y_cols)
        g = np.fromfile(files["g.raw"], np.int64, m * n_factors).reshape(m, n_factors)
        w = np.fromfile(files["w.raw"], np.float64, m * n_slopes).reshape(m, n_slopes)
        gids = [remap[f][g[:, f]] for f in range(n_factors)]
        factors, piece_ranges = piece_factors(gids, w, plan)
        ranges.append(piece_ranges)
        order = primary_order(factors, plan["primary"])
        Z = (X - x_centre) / x_scale
        yz = (yx[:, 0] - y_centre) / y_scale
        part = standardized_gram(Z, yz, intercept)
        gram = part if gram is None else (gram[0] + part[0], gram[1] + part[1], gram[2] + part[2])
        Yk = kernel_response(likelihood, yz, yx[:, 1] if y_cols == 2 else None).reshape(m, -1)
        Yk = np.column_stack([Yk, np.zeros(m)]) if Yk.shape[1] == 1 else Yk
        np.ascontiguousarray(Z[order], dtype=dtype).tofile(files["Z.bin"])
        np.ascontiguousarray(Yk[order], dtype=np.float64).tofile(files["y.bin"])
        np.ascontiguousarray(np.column_stack(gids)[order]).tofile(files["g.bin"])
        np.ascontiguousarray(w[order]).tofile(files["w.bin"])
    check_slopes_vary(plan["factors"], ranges)
    return gram


class CacheGroupedRows:
    """Row source of a model with group terms over the cache files: the grouped kernel on
    each sorted piece (``write_sorted_pieces``), or on a minibatch block's row ranges."""

    def __init__(self, rows, plan: dict, piece_rows: int):
        """``rows``: the ``cache.CacheRows`` whose files and buffers this reads (its y.bin
        holds two float64 columns)."""
        self.rows = rows
        self.plan = plan
        self.n_rows = rows.n_rows
        self.n_factors = len(plan["factors"])
        self.n_slopes = len(plan["slopes"])
        self.code = rows.likelihood.CODE
        self.pieces = [(s, min(s + piece_rows, self.n_rows))
                       for s in range(0, self.n_rows, piece_rows)]
        folder = rows.folder
        self._g = open(folder / "g.bin", "rb", buffering=0)  # noqa: SIM115 - closed by close()
        self._w = open(folder / "w.bin", "rb", buffering=0)  # noqa: SIM115

    def _read(self, start: int, stop: int):
        """(Z, Yk, the piece's GroupTerms) of rows [start, stop) of one sorted piece."""
        from vireg.cache import read_array

        z, y = self.rows._read(start, stop)
        m = stop - start
        g = read_array(self._g, np.int64, (m, self.n_factors), start)
        w = read_array(self._w, np.float64, (m, self.n_slopes), start)
        self.rows.bytes_read += g.nbytes + w.nbytes
        factors, _ = piece_factors([g[:, f] for f in range(self.n_factors)], w, self.plan,
                                   with_ranges=False)
        return z, y, factors

    def grouped_pass(self, U: np.ndarray, Bg: np.ndarray, Bx: np.ndarray, with_grad: bool,
                     rows: list[tuple[int, int]] | None = None):
        """The grouped kernel over the row ranges ``rows`` (default: every piece), each within
        one sorted piece: (G, ll, the primary factor's per-group sums, the other factors'
        per-effect sums or None), added in the order given."""
        out = []
        for start, stop in rows or self.pieces:
            z, y, factors = self._read(start, stop)
            payload = group_payload(factors, self.plan["primary"], stop - start, z.shape[1])
            out.append(piece_sums(z, y, payload, U, Bg, Bx, self.code, self.rows.intercept,
                                  with_grad))
        return add_in_order(out)

    def grouped_blocks(self, batch_size: int) -> list[list[tuple[int, int]]]:
        """Minibatch blocks: row ranges of whole primary groups within a piece, about
        ``batch_size`` rows each (a piece's group split across pieces is in two blocks)."""
        from vireg.cache import read_array
        from vireg.models.multilevel import _group_chunks

        primary = self.plan["primary"]
        n_groups = self.plan["factors"][primary].n_groups
        blocks = []
        for start, stop in self.pieces:
            g = read_array(self._g, np.int64, (stop - start, self.n_factors), start)
            bounds = _group_chunks(np.ascontiguousarray(g[:, primary]), n_groups, batch_size)
            blocks += [[(start + int(lo), start + int(hi))]
                       for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        return blocks

    def describe(self) -> dict:
        return self.rows.describe()

    def close(self) -> None:
        self.rows.close()
        self._g.close()
        self._w.close()

