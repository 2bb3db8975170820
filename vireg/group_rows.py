"""Group terms over rows that live outside this process: read in pieces from the disk cache
(``cache``) or held in partitions on Dask workers (``distributed``).

Both sources hold their rows in pieces, and each piece sorted (stably) by the primary factor
(``models.multilevel``), so the grouped kernel forms each group's sums of a piece in row order;
the pieces' sums are added in piece order, and the result does not depend on the thread count.
Levels are merged over the pieces as the in-memory reader orders them: numbers in numeric order
(written ``1``, not ``1.0``) when every cell of the column is a number, else text, sorted.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from vireg.errors import InputError


def level_key(cell, numeric: bool = False) -> str:
    """A cell as the text of its level (``models.multilevel.level_text`` for a number, or for
    any cell of a factor whose levels are numbers)."""
    from vireg.models.multilevel import level_text

    if isinstance(cell, float) or numeric:
        return level_text(float(cell))
    return str(cell)


def as_numbers(cells) -> list[float] | None:
    """The cells as numbers when every one is one (a CSV column read as text), else None: a
    numeric group column's levels are numbers in numeric order, as the local reader has them."""
    try:
        return [float(c) for c in cells]
    except ValueError:
        return None


def merged_levels(keys) -> list[str]:
    """A factor's levels from the distinct ``level_key`` texts of its cells in every piece."""
    from vireg.models.multilevel import level_text

    values = as_numbers(keys)
    return [level_text(v) for v in sorted(set(values))] if values else sorted(set(keys))


def check_group_columns(path, spec) -> None:
    """The in-memory reader's errors for a group term whose factor or slope is not a column of
    the file (header only)."""
    from vireg.cache import source_columns
    from vireg.models.multilevel import INTERCEPT

    header = source_columns(path)
    for factor, terms, _ in spec:
        if factor not in header:
            raise InputError(f"group column '{factor}' is not a column of '{path}': columns are "
                             f"{', '.join(header)}")
        for t in terms:
            if t != INTERCEPT and t not in header:
                raise InputError(f"the group term on '{t}' (varying by '{factor}') names a "
                                 f"column that '{path}' does not have: columns are "
                                 f"{', '.join(header)}")


def group_terms(spec, levels: list[list[str]]):
    """GroupTerms (levels, no rows) of each factor of ``spec`` ((factor, terms, correlated) per
    factor) from its levels; a factor with one level is the error the in-memory reader gives."""
    from vireg.models.multilevel import GroupTerms

    out = []
    for (factor, terms, correlated), names in zip(spec, levels, strict=True):
        if len(names) < 2:
            raise InputError(f"group column '{factor}' has {len(names)} level(s): a group term "
                             "needs at least two groups; drop the term or use another column")
        out.append(GroupTerms(factor, terms, correlated, names, np.zeros(0, dtype=np.int64),
                              np.zeros((0, len(terms)))))
    return tuple(out)


def group_plan(factors, primary: int, slopes: list[str]) -> dict:
    """What a piece's reader needs to turn its cells into group ids and term values."""
    return {"factors": factors, "primary": primary, "slopes": slopes,
            "index": [{level: i for i, level in enumerate(f.levels)} for f in factors]}


def piece_factors(gids: list[np.ndarray], slopes: np.ndarray, plan: dict,
                  with_ranges: bool = True):
    """A piece's GroupTerms (gid and W of its rows, from each factor's group ids and the slope
    columns' values, rows x slopes) and, per factor, each group's (min, max) of every term's
    values (for ``check_slopes_vary``; None without ``with_ranges``)."""
    from vireg.models.multilevel import INTERCEPT

    factors, ranges = [], []
    for f, gid in zip(plan["factors"], gids, strict=True):
        cols = [np.ones(len(gid)) if t == INTERCEPT else slopes[:, plan["slopes"].index(t)]
                for t in f.terms]
        W = np.ascontiguousarray(np.column_stack(cols)) if cols else np.empty((len(gid), 0))
        factors.append(replace(f, gid=np.ascontiguousarray(gid, dtype=np.int64), W=W))
        if not with_ranges:
            continue
        lo = np.full((f.n_groups, f.K), np.inf)
        hi = np.full((f.n_groups, f.K), -np.inf)
        np.minimum.at(lo, gid, W)
        np.maximum.at(hi, gid, W)
        ranges.append((lo, hi))
    return factors, ranges if with_ranges else None


def cell_ids(cells, plan: dict, f: int) -> np.ndarray:
    """Factor f's group id of each cell (text, or numbers for a numeric column)."""
    numeric = as_numbers(plan["factors"][f].levels) is not None
    index = plan["index"][f]
    return np.array([index[level_key(c, numeric)] for c in cells], dtype=np.int64)


def check_slopes_vary(factors, ranges) -> None:
    """The error of ``multilevel.group_terms`` for a slope constant within every group, from
    the pieces' per-group ranges (``piece_factors``)."""
    from vireg.models.multilevel import INTERCEPT

    for f, factor in enumerate(factors):
        lo = np.min([r[f][0] for r in ranges], axis=0)
        hi = np.max([r[f][1] for r in ranges], axis=0)
        for k, t in enumerate(factor.terms):
            if t != INTERCEPT and np.all(hi[:, k] - lo[:, k] == 0):
                raise InputError(f"the slope on '{t}' varies by '{factor.factor}', but '{t}' is "
                                 f"constant within every '{factor.factor}' group, so it cannot: "
                                 "drop it from the group term (keep it as a covariate)")


def primary_order(factors, primary: int) -> np.ndarray:
    """The stable order of a piece's rows by the primary factor's group."""
    return np.argsort(factors[primary].gid, kind="stable")


def rows_taken(f, order):
    """A GroupTerms' rows in ``order``."""
    return replace(f, gid=np.ascontiguousarray(f.gid[order]), W=np.ascontiguousarray(f.W[order]))


def group_payload(factors, primary: int, n_rows: int, n_cov: int):
    """What the grouped kernel reads of a piece sorted by the primary factor: its W and group
    ids, the chunks (whole groups) and the other factors' indices (``ExtraFactors``)."""
    from vireg.kernels.flags import chunk_rows_for
    from vireg.models.multilevel import ExtraFactors, _group_chunks

    main = factors[primary]
    starts = (_group_chunks(main.gid, main.n_groups, chunk_rows_for(n_rows, n_cov)) if n_rows
              else np.zeros(1, dtype=np.int64))
    return main.W, main.gid, starts, ExtraFactors(factors, primary)


def piece_sums(Z, Yk, payload, U, Bg, Bx, code: int, intercept: bool, with_grad: bool):
    """The grouped kernel on one sorted piece: (base sums G, ll, the primary factor's
    per-group sums, the other factors' per-effect sums or None)."""
    from vireg.kernels.glm import gather_effect_sums, grouped_loglik_grad

    W, gid, starts, extra = payload
    R = np.empty((len(Yk) if with_grad and extra.n_terms else 0, U.shape[0]))
    G, ll, Sg = grouped_loglik_grad(code, Z, Yk, W, gid, starts, U, Bg, intercept, with_grad,
                                    extra.index, extra.weight, Bx, R)
    Sx = gather_effect_sums(R, *extra.csr) if R.shape[0] else None
    return G, ll, Sg, Sx


def add_in_order(results) -> tuple:
    """The pieces' ``piece_sums`` added in the order given."""
    G, ll, Sg, Sx = 0.0, 0.0, 0.0, None
    for g, l_i, sg, sx in results:
        G, ll, Sg = G + g, ll + l_i, Sg + sg
        Sx = sx if Sx is None else (Sx if sx is None else Sx + sx)
    return G, ll, Sg, Sx
