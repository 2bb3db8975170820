"""Multilevel regression: group effects with a hierarchical prior, partially non-centred.

With grouping factors f = 1..F, factor f having K_f terms (its intercept and slopes on some
covariates),

    eta_i = alpha + x_i . beta + sum_f w_fi . b_f,g_f(i),   b_fg ~ N(0, diag(tau_f) R_f diag(tau_f))

w_fi the row's term values for factor f (1 for the intercept, the covariate as given for a
slope), tau_f the factor's group sds, R_f its correlation: the identity for uncorrelated terms,
else R = L_R L_R^T with L_R the Cholesky factor built from the unconstrained c (K(K-1)/2) by
canonical partial correlations (``lkj.corr_cholesky``; for two terms rho = tanh(c),
L_R = [[1, 0], [rho, s]], s = sqrt(1 - rho^2)). Factors may be crossed ((1 | a) + (1 | b)) or
nested ((1 | a/b), the factors a and a:b).

Parameterisation, per factor (the factor index dropped): b_gk = tau_k^lambda_gk y_gk and
y_g = M_g x_g, M_g = I + mu_g (L_R - I), the fitted coordinates being x_g. lambda = 1 (with
mu = 1) is the non-centred b = diag(tau) L_R x, x ~ N(0, I), which a Gaussian q fits where the
data say little about a group (the funnel of tau against b); lambda = 0 is the centred b = x,
which it fits where they pin the group down. Each group's lambda_gk (and mu_g, the mean of its
lambdas) is set once from the data's information about it at the start (``grouped_start``):
radon's varying slopes reached ELBO -1044.3 with the correlation non-centred this way, -1045.1
with mu = 0. The prior of y_g is N(0, Lam_g R Lam_g), Lam_g = diag(tau^(1 - lambda_g)), and
that of x_g adds log |det M_g| = sum_k log M_g,kk (M_g is lower-triangular). That holds for
the factors in the structured family's dense block; every other factor is then mapped by its
``conditioning`` instead, b_g = P_g^-1 r_g + L_g^-T x_g with P_g = Psi^-1 + H_g = L_g L_g^T
(``models.conditional``), which standardises each group's conditional posterior at every tau,
not only at the start's (radon's varying slopes: ELBO -1043.7).

The fitted coordinates u are the model's own (intercept and coefficients standardised, the
likelihood's positive parameters as logs: ``Model``), then per factor log tau (K) and c
(K(K-1)/2 for correlated terms), then per factor x (G x K, group by group). The data kernel
reads the rows sorted by one factor (the one with the most effects, whose sums are kept in
registers) and reaches the others' effects through per-row indices
(``kernels.glm.grouped_loglik_grad``); it returns, per draw and factor, the sums
S_g = sum over the group's rows of r_i w_i (r = dl/deta on the kernel's scale, eta / s_y for
the response's scale s_y). With dS_g = S_g / s_y = dl/db_g and g_y = tau^lambda dS_g + the
prior's d/dy:

    d/dx_g        = M_g^T g_y
    d/dlog tau_k  = sum_g lambda_gk b_gk dS_gk + the prior's (``_effects_prior``)
    d/dL_R        = sum_g mu_g g_y x_g^T + diag(sum_g mu_g / M_g,kk) + the prior's,
    d/dc          = that pulled back through L_R(c) (``lkj.corr_cholesky_vjp``) + LKJ's

Priors: tau_k ~ ``model.prior.group_sd`` (a positive-parameter prior, on log tau with its
Jacobian), R ~ LKJ(eta) with the Jacobian of c (``lkj.lkj_log_density``; for K = 2,
log p(c) = eta log(1 - rho^2) + (1 - 2 eta) log 2 - log B(eta, eta)). docs/derivations.md has
the derivations.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import numpy as np

from vireg.data import MISSING_TOKENS
from vireg.errors import InputError
from vireg.kernels.flags import chunk_rows_for
from vireg.models.conditional import ConditionalMap, coordinates
from vireg.models.lkj import corr_cholesky, corr_cholesky_vjp, corr_of, lkj_log_density
from vireg.models.model import Model
from vireg.models.priors import Prior

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
INTERCEPT = "(Intercept)"
# Correlated terms per factor: each adds a K x K block per group and K (K - 1) / 2 globals.
MAX_CORRELATED_TERMS = 6
# A factor other than the primary one with at most this many effects (groups x terms) is
# fitted in the structured family's dense block with the globals, smallest first, while the
# primary groups' coupling to that block (primary effects x its size) stays within
# JOINT_COUPLING_MAX entries: lme4's InstEval, (1 | s) + (1 | d) + (1 | dept), 2,972 students and
# 1,128 lecturers, ran away (k-hat 13) with the lecturers in blocks of their own and converged
# (k-hat 0.49) with them in the dense block, at 3.4 million coupling entries
JOINT_EFFECTS_MAX = 2000
JOINT_COUPLING_MAX = 4_000_000


@dataclass(frozen=True)
class GroupTerms:
    """One grouping factor's terms: its column, the term names ("(Intercept)" or a covariate),
    whether the terms correlate, the levels as written in the data (sorted), each row's level
    index, and the rows' term values W (N x K)."""

    factor: str
    terms: list[str]
    correlated: bool
    levels: list[str]
    gid: np.ndarray
    W: np.ndarray

    @property
    def K(self) -> int:
        return len(self.terms)

    @property
    def n_groups(self) -> int:
        return len(self.levels)

    @property
    def n_cor(self) -> int:
        """Correlation coordinates: K (K - 1) / 2 for correlated terms, else 0."""
        return self.K * (self.K - 1) // 2 if self.correlated else 0


def group_terms(factor: str, terms: list[str], correlated: bool, column, covariate
                ) -> GroupTerms:
    """GroupTerms of a factor from ``column(name)`` -> a grouping column's cells (text, or
    numbers when the file's column parsed as numbers; an interaction a:b joins its columns')
    and ``covariate(name)`` -> a column's values."""
    cells, levels = factor_cells(factor, column)
    if len(levels) < 2:
        raise InputError(f"group column '{factor}' has {len(levels)} level(s): a group term needs "
                         "at least two groups; drop the term or use another column")
    if correlated and len(terms) > MAX_CORRELATED_TERMS:
        raise InputError(f"correlated group terms ({' + '.join(terms)} | {factor}) are fitted for "
                         f"up to {MAX_CORRELATED_TERMS} terms: write them uncorrelated, (... || "
                         f"{factor}), or split them")
    index = {level: i for i, level in enumerate(levels)}
    gid = np.array([index[c] for c in cells], dtype=np.int64)
    columns = [np.ones(len(cells)) if t == INTERCEPT else np.asarray(covariate(t), float)
               for t in terms]
    W = np.ascontiguousarray(np.column_stack(columns)) if columns else np.empty((len(cells), 0))
    for t, col in zip(terms, columns, strict=True):
        if t != INTERCEPT and _constant_within_groups(col, gid, len(levels)):
            raise InputError(f"the slope on '{t}' varies by '{factor}', but '{t}' is constant "
                             f"within every '{factor}' group, so it cannot: drop '{t}' from the "
                             "group term (keep it as a covariate)")
    return GroupTerms(factor, terms, correlated, levels, gid, W)


def factor_cells(factor: str, column) -> tuple[list[str], list[str]]:
    """(each row's level, the levels) of a factor: ``level_cells`` of its column, or
    ``joined_cells`` of an interaction's columns (a:b)."""
    if ":" in factor:
        return joined_cells(factor, [(part, column(part)) for part in factor.split(":")])
    return level_cells(factor, column(factor))


def level_cells(factor: str, cells) -> tuple[list[str], list[str]]:
    """(each row's level as text, the levels in order): numbers as written (1, not 1.0) in
    numeric order, text sorted; a missing cell is an error naming its row."""
    if isinstance(cells, np.ndarray):
        bad = np.flatnonzero(~np.isfinite(cells))
        if bad.size:
            raise InputError(f"group column '{factor}' misses a value in data row {bad[0] + 1}: "
                             "fill it in, or set data.missing: drop")
        order = sorted(set(cells.tolist()))
        text = {v: level_text(v) for v in order}
        return [text[v] for v in cells.tolist()], [text[v] for v in order]
    cells = [str(c).strip() for c in cells]
    for i, c in enumerate(cells):
        if c.lower() in MISSING_TOKENS:
            raise InputError(f"group column '{factor}' misses a value in data row {i + 1}: fill "
                             "it in, or set data.missing: drop")
    return cells, sorted(set(cells))


def level_text(value: float) -> str:
    """A numeric group level as written: 1, not 1.0."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def joined_cells(factor: str, parts) -> tuple[list[str], list[str]]:
    """``level_cells`` of an interaction a:b (a nested factor): each row's level the parts'
    levels joined by ":", the levels ordered by the parts' own orders."""
    cells, ranks = [], []
    for name, column in parts:
        text, levels = level_cells(name, column)
        rank = {level: i for i, level in enumerate(levels)}
        cells.append(text)
        ranks.append([rank[t] for t in text])
    joined = [":".join(c) for c in zip(*cells, strict=True)]
    keys = dict(zip(joined, zip(*ranks, strict=True), strict=True))
    return joined, sorted(keys, key=keys.__getitem__)


def _constant_within_groups(col: np.ndarray, gid: np.ndarray, n_groups: int) -> bool:
    lo = np.full(n_groups, np.inf)
    hi = np.full(n_groups, -np.inf)
    np.minimum.at(lo, gid, col)
    np.maximum.at(hi, gid, col)
    return bool(np.all(hi - lo == 0))


_TERM_RE = re.compile(r"\(([^()|]*?)(\|\|?)\s*([^()|]*?)\s*\)")


def split_group_terms(formula: str) -> tuple[str, list[tuple[str, list[str], bool]]]:
    """(the formula without its group terms, [(factor, terms, correlated)]) of lme4 terms
    ``(1 | g)``, ``(1 + x | g)``, ``(0 + x | g)`` and ``(x || g)`` (terms uncorrelated; the
    intercept included unless removed, as lme4 does), ``(1 | a:b)`` (the interaction's levels)
    and ``(1 | a/b)`` (nested: the same terms for a and for a:b)."""
    found = []
    for m in _TERM_RE.finditer(formula):
        lhs, bars, factor = m.group(1), m.group(2), re.sub(r"\s+", "", m.group(3))
        if not re.fullmatch(r"[A-Za-z_.][\w.]*([:/][A-Za-z_.][\w.]*)*", factor) or (
                ":" in factor and "/" in factor):
            raise InputError(f"data.formula: group term '{m.group(0)}' must end with a grouping "
                             "column, e.g. (1 + x | county), a nesting (1 | state/county) or an "
                             "interaction (1 | state:county)")
        parts = [p.strip() for p in lhs.replace("-", "+-").split("+") if p.strip()]
        intercept = not any(p in ("0", "-1") for p in parts)
        names = [p for p in parts if p not in ("0", "-1", "1")]
        bad = [p for p in names if not re.fullmatch(r"[A-Za-z_.][\w.]*", p)]
        if bad:
            raise InputError(f"data.formula: group term '{m.group(0)}' takes column names and 1, "
                             f"not '{bad[0]}'")
        terms = ([INTERCEPT] if intercept else []) + names
        if not terms:
            raise InputError(f"data.formula: group term '{m.group(0)}' has no terms")
        found += [(f, terms, bars == "|") for f in nested_factors(factor)]
    fixed = _TERM_RE.sub("", formula)
    fixed = re.sub(r"\+\s*(?=\+|$)", "", re.sub(r"~\s*\+", "~ ", fixed)).strip()
    if fixed.endswith("~"):
        fixed += " 1"
    if "|" in fixed:
        raise InputError(f"data.formula '{formula}': a group term is written (terms | column), "
                         "in parentheses")
    return fixed, found


def nested_factors(factor: str) -> list[str]:
    """The factors of a nesting: a/b/c -> a, a:b, a:b:c (a factor without "/" itself)."""
    parts = factor.split("/")
    return [":".join(parts[:i + 1]) for i in range(len(parts))]


def lkj_prior(text: str, where: str) -> float:
    """eta of ``lkj(eta)``."""
    m = re.fullmatch(r"\s*lkj\(\s*([^)]+)\)\s*", str(text))
    try:
        eta = float(m.group(1)) if m else float("nan")
    except ValueError:
        eta = float("nan")
    if not eta > 0:
        raise InputError(f"{where}: '{text}' is not a correlation prior: write lkj(eta) with "
                         "eta > 0, e.g. lkj(1)")
    return eta


@dataclass(frozen=True)
class FactorLayout:
    """Where one factor's coordinates sit in u: log tau at ``tau_at`` (K), the correlation's c
    right after (n_cor), and x from ``x_at`` (G x K, group by group)."""

    terms: GroupTerms
    tau_at: int
    x_at: int

    @property
    def K(self) -> int:
        return self.terms.K

    @property
    def G(self) -> int:
        return self.terms.n_groups

    @property
    def n_cor(self) -> int:
        return self.terms.n_cor

    @property
    def n_x(self) -> int:
        return self.G * self.K

    def population(self, U: np.ndarray):
        """(log tau (S, K), c (S, n_cor) or None) of draws U (views; U may hold the globals
        only)."""
        t = self.tau_at
        c = U[:, t + self.K:t + self.K + self.n_cor] if self.n_cor else None
        return U[:, t:t + self.K], c

    def split(self, U: np.ndarray):
        """(log tau (S, K), c (S, n_cor) or None, x (S, G, K)) of draws U (views)."""
        return (*self.population(U),
                U[:, self.x_at:self.x_at + self.n_x].reshape(U.shape[0], self.G, self.K))


def _joint_factors(factors, primary: int, n_global: int) -> list[bool]:
    """Which factors join the structured family's dense block (``JOINT_EFFECTS_MAX``)."""
    joint = [False] * len(factors)
    main = factors[primary].n_groups * factors[primary].K
    size = n_global
    for i in sorted(range(len(factors)), key=lambda i: factors[i].n_groups * factors[i].K):
        effects = factors[i].n_groups * factors[i].K
        if (i != primary and effects <= JOINT_EFFECTS_MAX
                and main * (size + effects) <= JOINT_COUPLING_MAX):
            joint[i] = True
            size += effects
    return joint


def layouts_of(factors, n_base: int, x_order: list[int]) -> list[FactorLayout]:
    """The layouts of u (module doc): base, each factor's log tau and c, then the factors'
    x in ``x_order`` (the factors in the structured family's joint block first)."""
    n_global = n_base + sum(f.K + f.n_cor for f in factors)
    x_at, x = {}, n_global
    for i in x_order:
        x_at[i] = x
        x += factors[i].n_groups * factors[i].K
    out, t = [], n_base
    for i, f in enumerate(factors):
        out.append(FactorLayout(f, t, x_at[i]))
        t += f.K + f.n_cor
    return out


class MultilevelModel(Model):
    """A ``Model`` with group effects of one or more grouping factors (module doc). The rows
    are held sorted by the primary factor (the one with the most effects); ``log_joint_grad``
    covers every coordinate of u; ``centring`` (lambda, per factor G x K) and ``cor_centring``
    (mu, per factor G) are set once from the start (``grouped_start``): 1 (non-centred) until
    then."""

    def __init__(self, design, likelihood, intercept, priors, groups, group_sd: Prior,
                 group_cor_eta: float = 1.0, **kwargs):
        factors = list(groups) if isinstance(groups, (list, tuple)) else [groups]
        self.primary = int(np.argmax([f.n_groups * f.K for f in factors]))
        source = kwargs.get("source")
        if source is None:  # rows in memory: sorted by the primary factor here
            keys = [f.gid for i, f in enumerate(factors) if i != self.primary]
            order = np.lexsort(keys[::-1] + [factors[self.primary].gid])
            design = replace(design, y=design.y[order], X=np.ascontiguousarray(design.X[order]),
                             row_data=None if design.row_data is None
                             else design.row_data[order])
            factors = [replace(f, gid=np.ascontiguousarray(f.gid[order]),
                               W=np.ascontiguousarray(f.W[order])) for f in factors]
            self.row_order = order
        else:  # rows on Dask workers, each partition sorted there (``distributed``)
            source.primary = self.primary
            self.row_order = None
        self.groups = tuple(factors)
        self.group_sd = group_sd
        self.group_cor_eta = group_cor_eta
        self.centring = [np.ones((f.n_groups, f.K)) for f in factors]
        self.cor_centring = [np.ones(f.n_groups) for f in factors]
        # Per factor (H (G, K, K), r (G, K)) of the conditional map (``models.conditional``),
        # which replaces lambda and mu once the start has set it; None until then
        self.conditioning: list = [None] * len(factors)
        super().__init__(design, likelihood, intercept, priors, **kwargs)
        # Beside the primary factor, a factor with few effects joins the globals' dense block of
        # the structured family, so q keeps its effects' dependence on every other factor's
        # (crossed designs couple them through the rows they share)
        self.joint = _joint_factors(self.groups, self.primary, self.n_global)
        order = ([i for i, j in enumerate(self.joint) if j]
                 + [i for i, j in enumerate(self.joint) if not j])
        self.layouts = layouts_of(self.groups, self.n_base_params, order)
        self.extra = ExtraFactors(self.groups, self.primary)
        if self.in_memory:
            self.Yk = (self.Y if self.Y.ndim == 2
                       else np.ascontiguousarray(np.column_stack([self.Y, np.zeros(self.n_rows)])))
            main = self.groups[self.primary]
            self.chunk_starts = _group_chunks(main.gid, main.n_groups,
                                              chunk_rows_for(self.n_rows, self.n_cov))
            self.all_rows = RowBlock(self.chunk_starts, self.extra.csr)

    # --- layout of u ------------------------------------------------------------------------

    @property
    def n_global(self) -> int:
        """u's global coordinates: the base model's, then each factor's log tau and c."""
        return self.n_base_params + sum(f.K + f.n_cor for f in self.groups)

    @property
    def n_params(self) -> int:
        return self.n_global + sum(f.n_groups * f.K for f in self.groups)

    @property
    def n_joint(self) -> int:
        """The structured family's dense block: the globals and the joint factors' effects."""
        return self.n_global + sum(lay.n_x for lay, j in zip(self.layouts, self.joint,
                                                             strict=True) if j)

    def outside_layouts(self) -> list[FactorLayout]:
        """The layouts of the factors outside the joint block, in u's order."""
        outside = [lay for lay, j in zip(self.layouts, self.joint, strict=True) if not j]
        return sorted(outside, key=lambda lay: lay.x_at)

    @property
    def segments(self) -> list[tuple[int, int]]:
        """(groups, terms) of each factor outside the joint block, in u's order: the
        structured family's segments."""
        return [(lay.G, lay.K) for lay in self.outside_layouts()]

    @property
    def param_names(self) -> list[str]:
        """The reported quantities: the base model's, then per factor sd(factor:term) and
        cor(factor:term_i,term_j) for i < j."""
        names = super().param_names
        for f in self.groups:
            names += [f"sd({f.factor}:{t})" for t in f.terms]
            if f.n_cor:
                i, j = np.triu_indices(f.K, 1)
                names += [f"cor({f.factor}:{f.terms[a]},{f.terms[b]})" for a, b in zip(i, j, strict=True)]
        return names

    @property
    def theta_names(self) -> list[str]:
        """theta's global coordinates: the base model's, log of each group sd, and each
        correlation coordinate c: atanh of the correlation for two terms, of the canonical
        partial correlation (``lkj``) of terms (j, i), i > j, for more."""
        names = super().theta_names[:self.n_base_params]
        for f in self.groups:
            names += [f"log_sd({f.factor}:{t})" for t in f.terms]
            if f.n_cor:
                kind = "cor" if f.K == 2 else "cpc"
                i, j = np.tril_indices(f.K, -1)
                names += [f"atanh_{kind}({f.factor}:{f.terms[b]},{f.terms[a]})"
                          for a, b in zip(i, j, strict=True)]
        return names

    def affine_map(self) -> tuple[np.ndarray, np.ndarray]:
        """theta = T u + c over the global coordinates only (the group coordinates are not
        reported through theta, and a P x P map would not fit in memory at 10,000 groups): the
        base model's T and c, the identity for log tau and the correlations."""
        T0, c0 = super().affine_map()
        n = self.n_global
        T = np.eye(n)
        T[:T0.shape[0], :T0.shape[1]] = T0
        c = np.zeros(n)
        c[:c0.size] = c0
        return T, c

    def to_theta(self, U: np.ndarray) -> np.ndarray:
        """theta = T u + c of each draw's global coordinates."""
        return U[:, :self.n_global] @ self.T.T + self.c

    def group_effects(self, U: np.ndarray, batch: int = 128) -> list[np.ndarray]:
        """b per factor (S, G, K) on the natural scale, deviations from the fixed effects,
        ``batch`` draws at a time (the conditional map's temporaries are S x G x K x K)."""
        parts = [[factor_effects(U[i:i + batch], lay, lam, mu, cond) for lay, lam, mu, cond
                  in zip(self.layouts, self.centring, self.cor_centring, self.conditioning,
                         strict=True)]
                 for i in range(0, max(U.shape[0], 1), batch)]
        return [np.concatenate(f) if len(f) > 1 else f[0] for f in zip(*parts, strict=True)]

    def group_names(self) -> list[str]:
        """"factor[level]:term" of every group effect, factor by factor and group by group
        (group_draws.csv)."""
        return [f"{f.factor}[{level}]:{term}" for f in self.groups for level in f.levels
                for term in f.terms]

    def groups_record(self) -> dict:
        """What ``vireg predict`` and the workflow need of the group terms (fit.json's
        design.groups)."""
        factors = [{"factor": lay.terms.factor, "terms": lay.terms.terms,
                    "correlated": bool(lay.n_cor), "levels": lay.terms.levels,
                    "tau_at": lay.tau_at, "x_at": lay.x_at, "centring": lam.tolist(),
                    "cor_centring": mu.tolist(),
                    "conditioning": None if cond is None else {"H": cond[0].tolist(),
                                                               "r": cond[1].tolist()}}
                   for lay, lam, mu, cond in zip(self.layouts, self.centring,
                                                 self.cor_centring, self.conditioning,
                                                 strict=True)]
        return {"factors": factors, "n_global": self.n_global, "n_base": self.n_base_params,
                "n_joint": self.n_joint, "segments": self.segments}

    def set_conditioning(self, conditioning: list, U: np.ndarray) -> np.ndarray:
        """Map every factor's effects by ``conditioning`` (per factor (H, r), or None to keep
        its centring) and return the points U in the new coordinates, with the same effects."""
        U = np.array(U, dtype=np.float64, ndmin=2)
        effects = self.group_effects(U)
        self.conditioning = [None if c is None else (np.asarray(c[0], dtype=np.float64),
                                                     np.asarray(c[1], dtype=np.float64))
                             for c in conditioning]
        for lay, b, cond in zip(self.layouts, effects, self.conditioning, strict=True):
            if cond is not None:
                log_tau, c, x = lay.split(U)
                L = None if c is None else corr_cholesky(c, lay.K)
                x[...] = coordinates(b, log_tau, L, *cond)
        return U

    def restore_coordinates(self, records: list[dict]) -> None:
        """The coordinates of a fit from its fit.json records (``records_of``)."""
        self.centring = [np.asarray(r["centring"], dtype=np.float64) for r in records]
        self.cor_centring = [np.asarray(r["cor_centring"], dtype=np.float64) for r in records]
        self.conditioning = [_conditioning_of(r) for r in records]

    def set_centring(self, lam: list, mu: list, U: np.ndarray) -> np.ndarray:
        """Change lambda to ``lam`` (per factor G x K) and mu to ``mu`` (per factor G) and
        return the points U in the new coordinates, with the same group effects b."""
        U = np.array(U, dtype=np.float64, ndmin=2)
        effects = self.group_effects(U)
        self.centring = [np.array(a, dtype=np.float64) for a in lam]
        self.cor_centring = [np.array(a, dtype=np.float64) for a in mu]
        for lay, b, new_lam, new_mu in zip(self.layouts, effects, self.centring,
                                           self.cor_centring, strict=True):
            log_tau, c, x = lay.split(U)
            y = b * np.exp(-log_tau[:, None, :] * new_lam[None])
            x[...] = y if c is None else unmixed(corr_cholesky(c, lay.K), y, new_mu)
        return U

    # --- the log joint ----------------------------------------------------------------------

    def _kernel_pass(self, U: np.ndarray, effects: list[np.ndarray], with_grad: bool,
                     rows=None):
        """One pass of the grouped kernel over all rows, or over the block ``rows`` (a
        ``RowBlock``, or with the rows on Dask workers a list of partitions): (base gradient,
        log lik, per factor dl/db (S, G, K))."""
        from vireg.kernels.glm import grouped_loglik_grad

        S = U.shape[0]
        Bg = np.ascontiguousarray(np.transpose(effects[self.primary], (1, 2, 0)) / self.y_scale)
        Bx = self.extra.effects_rows(effects, self.y_scale)
        draws = np.ascontiguousarray(self.kernel_draws(U[:, :self.n_base_params]))
        if self.in_memory:
            main, rows = self.groups[self.primary], rows or self.all_rows
            R = np.empty((self.n_rows if with_grad and self.extra.n_terms else 0, S))
            Gk, ll, Sg = grouped_loglik_grad(
                self.likelihood.CODE, self.Z, self.Yk, main.W, main.gid, rows.chunk_starts,
                draws, Bg, self.intercept, with_grad, self.extra.index, self.extra.weight, Bx, R)
            flat = self.extra.gather(R, rows.csr) if with_grad else None
        else:
            Gk, ll, Sg, flat = self.rows.grouped_pass(draws, Bg, Bx, with_grad, rows)
        dS = self.extra.split(flat, S)
        dS[self.primary] = np.transpose(Sg, (2, 0, 1))
        return Gk, ll, [None if d is None else d / self.y_scale for d in dS]

    def row_blocks(self, batch_size: int) -> list:
        """The rows cut into blocks of whole groups of the primary factor (about
        ``batch_size`` rows each; a larger group is a block of its own), for minibatch steps;
        on Dask workers, runs of consecutive partitions."""
        if not self.in_memory:
            return self.rows.grouped_blocks(batch_size)
        main = self.groups[self.primary]
        bounds = _group_chunks(main.gid, main.n_groups, batch_size)
        target = chunk_rows_for(self.n_rows, self.n_cov)
        blocks = []
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            gid = main.gid[lo:hi] - main.gid[lo]
            starts = lo + _group_chunks(gid, int(gid[-1]) + 1, target)
            blocks.append(RowBlock(starts, self.extra.csr_of_rows(int(lo), int(hi))))
        return blocks

    def log_joint_grad(self, U: np.ndarray, kernel_pass=None) -> tuple[np.ndarray, np.ndarray]:
        """log p(y, u) and its gradient for each draw: the base model's terms with each row's
        linear predictor shifted by its groups' effects (one pass of the grouped kernel, or
        ``kernel_pass``'s estimate of it: ``minibatch.GroupedMinibatch``), each factor's
        effects' prior and the priors of tau and the correlations (module doc)."""
        nb = self.n_base_params
        base = U[:, :nb]
        mixed_parts, effects = self._effects_of(U)
        Gk, ll, dS = (kernel_pass or self._kernel_pass)(U, effects, True)
        T0, c0 = self.T[:nb, :nb], self.c[:nb]
        lp_prior, g_theta = self.log_prior_grad(base @ T0.T + c0)
        ll_r, G_r = self.response_terms(base)
        G = np.zeros_like(U)
        G[:, :nb] = self.data_grad(Gk) + G_r + g_theta @ T0
        lp = ll + ll_r + self.loglik_const + lp_prior
        for lay, lam, mu, (y, L), b, d in zip(self.layouts, self.centring, self.cor_centring,
                                              mixed_parts, effects, dS, strict=True):
            if isinstance(y, ConditionalMap):
                lp = lp + self._conditional_terms(lay, U, y, L, d, G)
            else:
                lp = lp + self._factor_terms(lay, lam, mu, U, y, L, b, d, G)
        return lp, G

    def _effects_of(self, U: np.ndarray) -> tuple[list, list]:
        """Per factor, (y = M x, L_R or None) and the effects b = tau^lambda y of draws U; or
        for a factor mapped by its conditioning, (its ``ConditionalMap``, L_R or None) and
        the map's b."""
        parts, effects = [], []
        for lay, lam, mu, cond in zip(self.layouts, self.centring, self.cor_centring,
                                      self.conditioning, strict=True):
            if cond is None:
                y, L = self._mixed(lay, mu, U)
                parts.append((y, L))
                effects.append(np.exp(lay.split(U)[0][:, None, :] * lam[None]) * y)
            else:
                log_tau, c, x = lay.split(U)
                L = None if c is None else corr_cholesky(c, lay.K)
                cmap = ConditionalMap(log_tau, L, x, *cond)
                parts.append((cmap, L))
                effects.append(cmap.b)
        return parts, effects

    def _conditional_terms(self, lay, U, cmap, L, dS, G) -> np.ndarray:
        """``_factor_terms`` for a factor mapped by its conditioning (``models.conditional``)."""
        log_tau, c, _ = lay.split(U)
        t, K = lay.tau_at, lay.K
        g_x, Psi_bar = cmap.gradients(dS)
        g_tau, g_L = cmap.population_gradients(Psi_bar, log_tau, L)
        G[:, t:t + K] = g_tau + self.group_sd.grad(log_tau)
        G[:, lay.x_at:lay.x_at + lay.n_x] = g_x.reshape(U.shape[0], -1)
        lp = cmap.log_density() + self.group_sd.logpdf(log_tau).sum(axis=1)
        if c is not None:
            lp_c, g_c = lkj_log_density(c, K, self.group_cor_eta)
            G[:, t + K:t + K + lay.n_cor] = corr_cholesky_vjp(c, K, g_L) + g_c
            lp = lp + lp_c
        return lp

    def _mixed(self, lay: FactorLayout, mu: np.ndarray, U: np.ndarray):
        """(y = M x (S, G, K), L_R (S, K, K) or None) of a factor."""
        _, c, x = lay.split(U)
        if c is None:
            return x, None
        L = corr_cholesky(c, lay.K)
        return mixed(L, x, mu), L

    def _factor_terms(self, lay, lam, mu, U, y, L, b, dS, G) -> np.ndarray:
        """A factor's log prior terms (its effects', tau's, the correlation's); writes the
        gradient of everything in its coordinates into G (dS = dl/db of the kernel pass)."""
        log_tau, c, x = lay.split(U)
        t, K = lay.tau_at, lay.K
        lp_y, gy_prior, gt_prior, gL_prior = _effects_prior(log_tau, L, y, lam)
        g_y = dS * np.exp(log_tau[:, None, :] * lam[None]) + gy_prior  # d log p / dy
        lp = lp_y + self.group_sd.logpdf(log_tau).sum(axis=1)
        G[:, t:t + K] = (np.sum(dS * b * lam[None], axis=1) + gt_prior
                         + self.group_sd.grad(log_tau))
        if c is None:
            G[:, lay.x_at:lay.x_at + lay.n_x] = g_y.reshape(U.shape[0], -1)
            return lp
        g_x = g_y + mu[None, :, None] * (np.matmul(g_y, L) - g_y)  # M^T g_y
        G[:, lay.x_at:lay.x_at + lay.n_x] = g_x.reshape(U.shape[0], -1)
        diag = 1.0 + mu[None, :, None] * (np.diagonal(L, 0, 1, 2)[:, None, :] - 1.0)
        gL = np.matmul(np.swapaxes(mu[None, :, None] * g_y, 1, 2), x) + gL_prior
        gL[:, np.arange(K), np.arange(K)] += np.sum(mu[None, :, None] / diag, axis=1)  # log |M|
        lp_c, g_c = lkj_log_density(c, K, self.group_cor_eta)
        G[:, t + K:t + K + lay.n_cor] = corr_cholesky_vjp(c, K, gL) + g_c
        return lp + lp_c + np.log(diag).sum(axis=(1, 2))

    def log_joint_values(self, U: np.ndarray) -> np.ndarray:
        """log p(y, u) of each draw without the gradient (the kernel's pass without its
        gradient sums): the terms of ``log_joint_grad``."""
        nb = self.n_base_params
        base = U[:, :nb]
        mixed_parts, effects = self._effects_of(U)
        _, ll, _ = self._kernel_pass(U, effects, False)
        lp_prior, _ = self.log_prior_grad(base @ self.T[:nb, :nb].T + self.c[:nb])
        lp = ll + self.response_terms(base)[0] + self.loglik_const + lp_prior
        for lay, lam, mu, (y, L) in zip(self.layouts, self.centring, self.cor_centring,
                                        mixed_parts, strict=True):
            log_tau, c, _ = lay.split(U)
            if isinstance(y, ConditionalMap):
                lp = lp + y.log_density() + self.group_sd.logpdf(log_tau).sum(axis=1)
                if c is not None:
                    lp = lp + lkj_log_density(c, lay.K, self.group_cor_eta)[0]
                continue
            lp = (lp + _effects_prior(log_tau, L, y, lam)[0]
                  + self.group_sd.logpdf(log_tau).sum(axis=1))
            if c is not None:
                diag = 1.0 + mu[None, :, None] * (np.diagonal(L, 0, 1, 2)[:, None, :] - 1.0)
                lp = (lp + lkj_log_density(c, lay.K, self.group_cor_eta)[0]
                      + np.log(diag).sum(axis=(1, 2)))
        return lp

    def log_joint_batches(self, U: np.ndarray, batch: int | None = None):
        """(first draw, log p of a batch of draws), 64 draws per pass over the rows."""
        batch = batch or 64
        for start in range(0, U.shape[0], batch):
            with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
                values = self.log_joint_values(U[start:start + batch])
            yield start, values

    def warm_up(self) -> None:
        self.log_joint_grad(np.zeros((1, self.n_params)))

    def natural(self, U: np.ndarray) -> np.ndarray:
        """The reported quantities for each draw: the base model's natural parameters, then
        per factor tau and the correlations (``param_names``)."""
        theta = self.to_theta(U)
        k = self.n_location
        out = theta[:, :self.n_global].copy()
        out[:, k:self.n_base_params] = np.exp(out[:, k:self.n_base_params])
        for lay in self.layouts:
            log_tau, c = lay.population(theta)
            out[:, lay.tau_at:lay.tau_at + lay.K] = np.exp(log_tau)
            if c is not None:
                at = lay.tau_at + lay.K
                out[:, at:at + lay.n_cor] = corr_of(corr_cholesky(c, lay.K))
        return out

    def pointwise_loglik(self, U: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """log p(y_i | theta_s, b_s) (S x n) for the rows ``rows`` in the data's own order
        (default all): the base model's kernel pass with each row's group effects
        sum_f w_fi . b_f,g(i) added to its linear predictor."""
        from vireg.kernels.glm import pointwise_loglik

        U = np.atleast_2d(U)
        position = np.empty(self.n_rows, dtype=np.int64)
        position[self.row_order] = np.arange(self.n_rows)  # data row -> sorted row
        idx = position[np.arange(self.n_rows) if rows is None else np.asarray(rows)]
        shift = sum(np.sum(f.W[idx][None] * b[:, f.gid[idx], :], axis=2)
                    for f, b in zip(self.groups, self.group_effects(U), strict=True))
        Uk = np.ascontiguousarray(self.kernel_draws(U[:, :self.n_base_params]), dtype=np.float64)
        L = pointwise_loglik(self.likelihood.CODE, self.Z, self.Yk, Uk, self.intercept,
                             np.ascontiguousarray(idx),
                             np.ascontiguousarray(shift / self.y_scale))
        return L - np.log(self.y_scale) if self.likelihood.HAS_SCALE else L


@dataclass(frozen=True)
class RowBlock:
    """Rows the grouped kernel passes over: its chunks' row offsets (whole groups of the primary
    factor) and the other factors' gather entries over those rows (``ExtraFactors.csr``)."""

    chunk_starts: np.ndarray
    csr: tuple


class ExtraFactors:
    """The factors other than the primary one, as the kernel reads them: per row and term e,
    ``index[i, e]`` the effect's row in the stacked effects (factor by factor, group by group,
    term by term) and ``weight[i, e]`` the row's term value; and, to gather each effect's sum of
    r_i w_i from the kernel's per-row r, the entries (row, weight) of each effect in row order
    (``csr``: pointers, rows, weights), so every sum is formed in one order at any thread
    count."""

    def __init__(self, factors, primary: int):
        others = [f for i, f in enumerate(factors) if i != primary]
        self.slots = [i for i in range(len(factors)) if i != primary]
        self.shapes = [(f.n_groups, f.K) for f in others]
        n = len(factors[0].gid)
        offsets = np.cumsum([0] + [G * K for G, K in self.shapes])
        self.n_effects = int(offsets[-1])
        cols_i, cols_w = [], []
        for f, off in zip(others, offsets, strict=False):
            for k in range(f.K):
                cols_i.append(off + f.gid * f.K + k)
                cols_w.append(f.W[:, k])
        self.n_terms = len(cols_i)
        self.index = (np.ascontiguousarray(np.column_stack(cols_i), dtype=np.int64)
                      if cols_i else np.empty((n, 0), dtype=np.int64))
        self.weight = (np.ascontiguousarray(np.column_stack(cols_w)) if cols_w
                       else np.empty((n, 0)))
        flat = self.index.ravel()
        order = np.argsort(flat, kind="stable")  # row-major, so rows ascend within an effect
        self.csr = (np.searchsorted(flat[order], np.arange(self.n_effects + 1)).astype(np.int64),
                    (order // max(self.n_terms, 1)).astype(np.int64),
                    np.ascontiguousarray(self.weight.ravel()[order]))

    def csr_of_rows(self, lo: int, hi: int) -> tuple:
        """``csr`` restricted to the rows lo .. hi - 1 (a minibatch block's)."""
        ptr, rows, weights = self.csr
        keep = (rows >= lo) & (rows < hi)
        effect = np.repeat(np.arange(self.n_effects), np.diff(ptr))
        counts = np.bincount(effect[keep], minlength=self.n_effects)
        return (np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                np.ascontiguousarray(rows[keep]), np.ascontiguousarray(weights[keep]))

    def effects_rows(self, effects: list[np.ndarray], y_scale: float) -> np.ndarray:
        """The stacked effects (n_effects, S) on the kernel's scale."""
        S = effects[0].shape[0]
        if not self.n_effects:
            return np.empty((0, S))
        parts = [effects[i].reshape(S, -1).T for i in self.slots]
        return np.ascontiguousarray(np.vstack(parts) / y_scale)

    def gather(self, R: np.ndarray, csr: tuple) -> np.ndarray | None:
        """Every effect's sum of r_i w_i (n_effects, S) from the kernel's per-row r (N, S), over
        the rows of ``csr`` (``csr``, or a block's); None without other factors."""
        from vireg.kernels.glm import gather_effect_sums

        return gather_effect_sums(R, *csr) if self.n_effects else None

    def split(self, flat: np.ndarray | None, S: int) -> list:
        """Per factor (None at the primary's slot, and without sums) the sums S_g (S, G, K)
        of ``gather``'s stacked ones."""
        out: list = [None] * (len(self.slots) + 1)
        if flat is None:
            return out
        at = 0
        for slot, (G, K) in zip(self.slots, self.shapes, strict=True):
            out[slot] = flat[at:at + G * K].T.reshape(S, G, K)
            at += G * K
        return out


def _effects_prior(log_tau, L, y, lam):
    """log p(y | tau, R) of a factor, summed over its groups, and its gradients in y, log tau
    and L_R (with y held; None without a correlation): y_g ~ N(0, Lam_g R Lam_g),
    Lam_g = diag(tau^(1 - lambda_g)); with v = Lam^-1 y and e = L_R^-1 v,

        log p = -sum_k (1 - lambda_gk) log tau_k - log det L_R - |e|^2 / 2 - K/2 log 2 pi
        d/dy_g = -Lam_g^-1 L_R^-T e_g
        d/dlog tau_k = sum_g (1 - lambda_gk) (v_gk (L_R^-T e_g)_k - 1)
        d/dL_R = sum_g (L_R^-T e_g) e_g^T - G diag(1 / L_R,kk)    (lower triangle)
    """
    one_minus = 1.0 - lam  # (G, K)
    scale = np.exp(log_tau[:, None, :] * one_minus[None])  # Lam_g's diagonal
    v = y / scale
    G_groups = y.shape[1]
    if L is None:
        e, LTe, log_det, g_L = v, v, 0.0, None
    else:
        L_inv = np.linalg.inv(L)
        e = np.matmul(v, np.swapaxes(L_inv, 1, 2))
        LTe = np.matmul(e, L_inv)
        diag = np.diagonal(L, 0, 1, 2)
        log_det = G_groups * np.log(diag).sum(axis=1)
        g_L = np.tril(np.matmul(np.swapaxes(LTe, 1, 2), e))
        g_L[:, np.arange(L.shape[1]), np.arange(L.shape[1])] -= G_groups / diag
    lp = (-log_tau @ one_minus.sum(axis=0) - log_det
          - 0.5 * np.sum(e * e, axis=(1, 2)) - y[0].size * HALF_LOG_2PI)
    g_y = -LTe / scale
    g_log_tau = np.sum(one_minus[None] * v * LTe, axis=1) - one_minus.sum(axis=0)
    return lp, g_y, g_log_tau, g_L


def mixed(L: np.ndarray | None, x: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """y = M x per draw and group, M_g = I + mu_g (L_R - I) (x itself without a correlation)."""
    if L is None:
        return x
    return x + mu[None, :, None] * (np.matmul(x, np.swapaxes(L, 1, 2)) - x)


def unmixed(L: np.ndarray, y: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """x = M^-1 y per draw and group (M_g lower-triangular: forward substitution)."""
    K = L.shape[1]
    M = mu[None, :, None, None] * (L[:, None] - np.eye(K)) + np.eye(K)  # (S, G, K, K)
    x = np.empty(y.shape)
    for k in range(K):
        r = y[:, :, k] - np.sum(M[:, :, k, :k] * x[:, :, :k], axis=2)
        x[:, :, k] = r / M[:, :, k, k]
    return x


def factor_effects(U: np.ndarray, lay: FactorLayout, lam: np.ndarray, mu: np.ndarray,
                   conditioning: tuple | None = None) -> np.ndarray:
    """b (S, G, K) of one factor for draws U: b_gk = tau_k^lambda_gk y_gk, y_g = M_g x_g; or
    with ``conditioning`` (H, r), the conditional map's (``models.conditional``)."""
    log_tau, c, x = lay.split(U)
    L = None if c is None else corr_cholesky(c, lay.K)
    if conditioning is not None:
        return ConditionalMap(log_tau, L, x, *conditioning).b
    return np.exp(log_tau[:, None, :] * lam[None]) * mixed(L, x, mu)


def population_cov(U: np.ndarray, lay: FactorLayout) -> np.ndarray:
    """Psi = diag(tau) R diag(tau) of each draw (S, K, K): the population a factor's new
    groups come from."""
    log_tau, c = lay.population(U)
    tau = np.exp(log_tau)
    if c is None:
        R = np.broadcast_to(np.eye(lay.K), (U.shape[0], lay.K, lay.K))
    else:
        L = corr_cholesky(c, lay.K)
        R = L @ np.swapaxes(L, 1, 2)
    return tau[:, :, None] * R * tau[:, None, :]


def records_of(record: dict) -> list[dict]:
    """fit.json's design.groups as one record per factor with its layout (tau_at, x_at,
    correlated, centring, cor_centring); a record of the single-factor form is read too."""
    if "factors" in record:
        return record["factors"]
    return [{"factor": record["factor"], "terms": record["terms"],
             "correlated": record["has_cor"], "levels": record["levels"],
             "tau_at": record["n_base"], "x_at": record["n_global"],
             "centring": record["centring"], "cor_centring": record["cor_centring"]}]


def layout_of_record(rec: dict) -> FactorLayout:
    """The FactorLayout of one factor's record (``records_of``)."""
    terms = GroupTerms(rec["factor"], rec["terms"], rec["correlated"], rec["levels"],
                       np.zeros(0, dtype=np.int64), np.zeros((0, len(rec["terms"]))))
    return FactorLayout(terms, rec["tau_at"], rec["x_at"])


def effects_of_record(U: np.ndarray, rec: dict) -> np.ndarray:
    """b (S, G, K) of one factor of a fit.json record for draws U of u."""
    return factor_effects(U, layout_of_record(rec), np.asarray(rec["centring"], float),
                          np.asarray(rec["cor_centring"], float), _conditioning_of(rec))


def _conditioning_of(rec: dict) -> tuple | None:
    """(H, r) of a factor's record, or None for one mapped by its centring."""
    cond = rec.get("conditioning")
    if not cond:
        return None
    return (np.asarray(cond["H"], dtype=np.float64), np.asarray(cond["r"], dtype=np.float64))


def group_table(model, effects: list[np.ndarray]) -> list[dict]:
    """groups.csv's rows from draws of each factor's group effects (draws, G, K): per level
    and term, the mean, sd and 5/50/95% quantiles of the deviation (lme4's ranef)."""
    rows = []
    for f, b in zip(model.groups, effects, strict=True):
        q = np.quantile(b, [0.05, 0.5, 0.95], axis=0)
        mean, sd = b.mean(axis=0), b.std(axis=0, ddof=1)
        rows += [{"group": f.factor, "level": level, "term": term, "mean": float(mean[j, k]),
                  "sd": float(sd[j, k]), "q5": float(q[0, j, k]), "q50": float(q[1, j, k]),
                  "q95": float(q[2, j, k])}
                 for j, level in enumerate(f.levels) for k, term in enumerate(f.terms)]
    return rows


def _group_chunks(gid: np.ndarray, n_groups: int, target_rows: int) -> np.ndarray:
    """Row offsets of chunks of whole groups (rows sorted by group), each about
    ``target_rows`` rows (a larger group is a chunk of its own)."""
    bounds = np.searchsorted(gid, np.arange(n_groups + 1))
    starts = [0]
    for b in bounds[1:]:
        if b - starts[-1] >= target_rows:
            starts.append(int(b))
    if starts[-1] != len(gid):
        starts.append(len(gid))
    return np.array(starts, dtype=np.int64)
