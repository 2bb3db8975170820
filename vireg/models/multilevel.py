"""Multilevel regression: group effects with a hierarchical prior, partially non-centred.

For one grouping factor with K terms (its intercept and slopes on some covariates),

    eta_i = alpha + x_i . beta + w_i . b_g(i),     b_g ~ N(0, diag(tau) R diag(tau))

w_i the row's term values (1 for the intercept, the covariate as given for a slope), tau the
group sds, R the correlation (the identity for uncorrelated terms; for two correlated terms
rho = tanh(c), R = L_R L_R^T, L_R = [[1, 0], [rho, s]], s = sqrt(1 - rho^2)).

Parameterisation: b_gk = tau_k^lambda_gk y_gk and y_g = M_g x_g, M_g = I + mu_g (L_R - I), the
fitted coordinates being x_g. lambda = 1 (with mu = 1) is the non-centred b = diag(tau) L_R x,
x ~ N(0, I), which a Gaussian q fits where the data say little about a group (the funnel of tau
against b); lambda = 0 is the centred b = x, which it fits where they pin the group down. Each
group's lambda_gk (and mu_g, the mean of its lambdas) is set once from the data's information
about it at the start (``grouped_start``): radon's varying slopes reached ELBO -1044.3 with the
correlation non-centred this way, -1045.1 with mu = 0. The prior of y_g is
N(0, Lam_g R Lam_g), Lam_g = diag(tau^(1 - lambda_g)), and that of x_g adds log |det M_g| =
log M_g,11 (M_g is lower-triangular with M_g,00 = 1).

The fitted coordinates u are the model's own (intercept and coefficients standardised, the
likelihood's positive parameters as logs: ``Model``), then log tau (K), c (one for two
correlated terms), then x (G x K, group by group). The data kernel reads the rows sorted by
group (``kernels.glm.grouped_loglik_grad``) and returns, per draw, the sums
S_g = sum over the group's rows of r_i w_i (r = dl/deta on the kernel's scale, eta / s_y for
the response's scale s_y). With dS_g = S_g / s_y = dl/db_g and g_y = tau^lambda dS_g + the
prior's d/dy:

    d/dx_g        = M_g^T g_y
    d/dlog tau_k  = sum_g lambda_gk b_gk dS_gk + the prior's (``_effects_prior``)
    d/dc          = sum_g g_y . (dM_g/dc) x_g + d/dc log det M_g + the prior's + LKJ's

Priors: tau_k ~ ``model.prior.group_sd`` (a positive-parameter prior, on log tau with its
Jacobian), rho ~ LKJ(eta) for K = 2: p(rho) = 2^(1 - 2 eta) (1 - rho^2)^(eta - 1) / B(eta, eta),
on c with the Jacobian 1 - rho^2: log p(c) = eta log(1 - rho^2) + (1 - 2 eta) log 2
- log B(eta, eta), d/dc = -2 eta rho. docs/derivations.md has the derivations.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import numpy as np

from vireg.data import MISSING_TOKENS
from vireg.errors import InputError
from vireg.kernels.flags import chunk_rows_for
from vireg.models.model import Model
from vireg.models.priors import Prior

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
INTERCEPT = "(Intercept)"


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
        return int(self.correlated and self.K == 2)


def group_terms(factor: str, terms: list[str], correlated: bool, cells, covariate) -> GroupTerms:
    """GroupTerms from the factor's cells (text, or numbers when the file's column parsed as
    numbers) and ``covariate(name)`` -> a column's values."""
    cells, levels = level_cells(factor, cells)
    if len(levels) < 2:
        raise InputError(f"group column '{factor}' has {len(levels)} level(s): a group term needs "
                         "at least two groups; drop the term or use another column")
    if correlated and len(terms) > 2:
        raise InputError(f"correlated group terms ({' + '.join(terms)} | {factor}) are fitted for "
                         "up to two terms: write them uncorrelated, (... || "
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


def level_cells(factor: str, cells) -> tuple[list[str], list[str]]:
    """(each row's level as text, the levels in order): numbers as written (1, not 1.0) in
    numeric order, text sorted; a missing cell is an error naming its row."""
    if isinstance(cells, np.ndarray):
        bad = np.flatnonzero(~np.isfinite(cells))
        if bad.size:
            raise InputError(f"group column '{factor}' misses a value in data row {bad[0] + 1}: "
                             "fill it in, or set data.missing: drop")
        order = sorted(set(cells.tolist()))
        text = {v: (str(int(v)) if float(v).is_integer() else repr(float(v))) for v in order}
        return [text[v] for v in cells.tolist()], [text[v] for v in order]
    cells = [str(c).strip() for c in cells]
    for i, c in enumerate(cells):
        if c.lower() in MISSING_TOKENS:
            raise InputError(f"group column '{factor}' misses a value in data row {i + 1}: fill "
                             "it in, or set data.missing: drop")
    return cells, sorted(set(cells))


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
    intercept included unless removed, as lme4 does)."""
    found = []
    for m in _TERM_RE.finditer(formula):
        lhs, bars, factor = m.group(1), m.group(2), m.group(3).strip()
        if not re.fullmatch(r"[A-Za-z_.][\w.]*", factor):
            raise InputError(f"data.formula: group term '{m.group(0)}' must end with one "
                             "grouping column, e.g. (1 + x | county)")
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
        found.append((factor, terms, bars == "|"))
    fixed = _TERM_RE.sub("", formula)
    fixed = re.sub(r"\+\s*(?=\+|$)", "", re.sub(r"~\s*\+", "~ ", fixed)).strip()
    if fixed.endswith("~"):
        fixed += " 1"
    if "|" in fixed:
        raise InputError(f"data.formula '{formula}': a group term is written (terms | column), "
                         "in parentheses")
    return fixed, found


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


class MultilevelModel(Model):
    """A ``Model`` with one grouping factor's effects (module doc). The rows are held sorted by
    group; ``log_joint_grad`` covers every coordinate of u, and ``centring`` (lambda, G x K) is
    set once from the start (``multilevel_start``): 1 (non-centred) until then."""

    def __init__(self, design, likelihood, intercept, priors, groups: GroupTerms,
                 group_sd: Prior, group_cor_eta: float = 1.0, **kwargs):
        order = np.argsort(groups.gid, kind="stable")
        design = replace(design, y=design.y[order], X=np.ascontiguousarray(design.X[order]),
                         row_data=None if design.row_data is None else design.row_data[order])
        self.groups = replace(groups, gid=np.ascontiguousarray(groups.gid[order]),
                              W=np.ascontiguousarray(groups.W[order]))
        self.row_order = order
        self.group_sd = group_sd
        self.group_cor_eta = group_cor_eta
        self.centring = np.ones((groups.n_groups, groups.K))
        self.cor_centring = np.ones(groups.n_groups)
        super().__init__(design, likelihood, intercept, priors, **kwargs)
        if not self.in_memory:
            raise InputError("group terms are fitted with the rows in memory: remove "
                             "runtime.out_of_core and the Dask backend")
        self.Yk = (self.Y if self.Y.ndim == 2
                   else np.ascontiguousarray(np.column_stack([self.Y, np.zeros(self.n_rows)])))
        self.chunk_starts = _group_chunks(self.groups.gid, self.groups.n_groups,
                                          chunk_rows_for(self.n_rows, self.n_cov))
        self.group_rows = np.bincount(self.groups.gid, minlength=self.groups.n_groups)

    # --- layout of u ------------------------------------------------------------------------

    @property
    def n_global(self) -> int:
        """u's global coordinates: the base model's, log tau (K) and the correlation (0 or 1)."""
        return self.n_base_params + self.groups.K + self.groups.n_cor

    @property
    def n_params(self) -> int:
        return self.n_global + self.groups.n_groups * self.groups.K

    @property
    def param_names(self) -> list[str]:
        """The reported quantities: the base model's, then sd(factor:term), cor(...)."""
        g = self.groups
        names = super().param_names + [f"sd({g.factor}:{t})" for t in g.terms]
        if g.n_cor:
            names.append(f"cor({g.factor}:{g.terms[0]},{g.terms[1]})")
        return names

    @property
    def theta_names(self) -> list[str]:
        """theta's global coordinates: the base model's, log of each group sd, atanh of the
        correlation."""
        names = self.param_names
        nb, K = self.n_base_params, self.groups.K
        base = super().theta_names[:nb]
        return (base + [f"log_{n}" for n in names[nb:nb + K]]
                + [f"atanh_{n}" for n in names[nb + K:]])

    def affine_map(self) -> tuple[np.ndarray, np.ndarray]:
        """theta = T u + c over the global coordinates only (the group coordinates are not
        reported through theta, and a P x P map would not fit in memory at 10,000 groups): the
        base model's T and c, the identity for log tau and the correlation."""
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

    def _split(self, U: np.ndarray):
        """(base part, log tau (S, K), c (S,) or None, w (S, G, K)) of draws U."""
        g, nb = self.groups, self.n_base_params
        log_tau = U[:, nb:nb + g.K]
        c = U[:, nb + g.K] if g.n_cor else None
        w = U[:, self.n_global:].reshape(U.shape[0], g.n_groups, g.K)
        return U[:, :nb], log_tau, c, w

    def _mixing(self, c: np.ndarray):
        return mixing(c, self.cor_centring)

    def _mixed(self, c: np.ndarray | None, x: np.ndarray) -> np.ndarray:
        return mixed(c, x, self.cor_centring)

    def group_effects(self, U: np.ndarray) -> np.ndarray:
        """b (S, G, K) on the natural scale, deviations from the fixed effects (module doc)."""
        return group_effects_of(U, self.n_base_params, self.centring, self.cor_centring,
                                bool(self.groups.n_cor))

    def group_names(self) -> list[str]:
        """"factor[level]:term" of every group effect, group by group (group_draws.csv)."""
        g = self.groups
        return [f"{g.factor}[{level}]:{term}" for level in g.levels for term in g.terms]

    def groups_record(self) -> dict:
        """What ``vireg predict`` needs of the group terms (fit.json's design.groups)."""
        g = self.groups
        return {"factor": g.factor, "terms": g.terms, "has_cor": bool(g.n_cor),
                "levels": g.levels, "n_global": self.n_global, "n_base": self.n_base_params,
                "centring": self.centring.tolist(), "cor_centring": self.cor_centring.tolist()}

    def set_centring(self, lam: np.ndarray, mu: np.ndarray, U: np.ndarray) -> np.ndarray:
        """Change lambda to ``lam`` (G x K) and mu to ``mu`` (G) and return the points U in the
        new coordinates, with the same group effects b."""
        U = np.array(U, dtype=np.float64, ndmin=2)
        b = self.group_effects(U)
        _, log_tau, c, x = self._split(U)
        self.centring = np.array(lam, dtype=np.float64)
        self.cor_centring = np.array(mu, dtype=np.float64)
        y = b * np.exp(-log_tau[:, None, :] * self.centring[None])
        x[...] = y
        if c is not None:
            m10, m11, _, _ = self._mixing(c)
            x[:, :, 1] = (y[:, :, 1] - m10 * y[:, :, 0]) / m11
        return U

    # --- the log joint ----------------------------------------------------------------------

    def log_joint_grad(self, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log p(y, u) and its gradient for each draw: the base model's terms with each row's
        linear predictor shifted by its group's effects (one pass of the grouped kernel), the
        group effects' prior and the priors of tau and the correlation (module doc)."""
        from vireg.kernels.glm import grouped_loglik_grad

        S, nb, K = U.shape[0], self.n_base_params, self.groups.K
        base, log_tau, c, x = self._split(U)
        y = self._mixed(c, x)
        tau_lam = np.exp(log_tau[:, None, :] * self.centring[None])  # db/dy
        b = tau_lam * y
        Bg = np.ascontiguousarray(np.transpose(b, (1, 2, 0)) / self.y_scale)  # (G, K, S)
        Gk, ll, Sg = grouped_loglik_grad(self.likelihood.CODE, self.Z, self.Yk, self.groups.W,
                                         self.groups.gid, self.chunk_starts,
                                         np.ascontiguousarray(self.kernel_draws(base)), Bg,
                                         self.intercept, True)
        T0, c0 = self.T[:nb, :nb], self.c[:nb]
        lp_prior, g_theta = self.log_prior_grad(base @ T0.T + c0)
        ll_r, G_r = self.response_terms(base)
        G = np.zeros_like(U)
        G[:, :nb] = self.data_grad(Gk) + G_r + g_theta @ T0
        dS = np.transpose(Sg, (2, 0, 1)) / self.y_scale  # (S, G, K): dl/db
        lp_y, gy_prior, gt_prior, gc_prior = self._effects_prior(log_tau, c, y)
        g_y = dS * tau_lam + gy_prior  # d log p / dy
        g_x = g_y
        if c is not None:  # g_x = M^T g_y
            m10, m11, dm10, dm11 = self._mixing(c)
            g_x = g_y.copy()
            g_x[:, :, 0] += m10 * g_y[:, :, 1]
            g_x[:, :, 1] = m11 * g_y[:, :, 1]
        G[:, self.n_global:] = g_x.reshape(S, -1)
        G[:, nb:nb + K] = (np.einsum("sgk,gk->sk", dS * b, self.centring) + gt_prior
                           + self.group_sd.grad(log_tau))
        lp = (ll + ll_r + self.loglik_const + lp_prior + lp_y
              + self.group_sd.logpdf(log_tau).sum(axis=1))
        if c is not None:  # with log |det M| = sum_g log M_g11
            rho = np.tanh(c)
            lp = lp + lkj_logpdf(rho, self.group_cor_eta) + np.log(m11).sum(axis=1)
            dy1 = dm10 * x[:, :, 0] + dm11 * x[:, :, 1]
            G[:, nb + K] = (gc_prior + np.sum(g_y[:, :, 1] * dy1, axis=1)
                            + np.sum(dm11 / m11, axis=1) - 2.0 * self.group_cor_eta * rho)
        return lp, G

    def _effects_prior(self, log_tau, c, y):
        """log p(y | tau, rho) summed over groups and its gradients in y, log tau and c (with y
        held): y_g ~ N(0, Lam_g R Lam_g), Lam_g = diag(tau^(1 - lambda_g)); with v = Lam^-1 y
        and e = L_R^-1 v (R = L_R L_R^T),

            log p = -sum_k (1 - lambda_gk) log tau_k - log det L_R - |e|^2 / 2 - K/2 log 2 pi
            d/dy_g = -Lam_g^-1 L_R^-T e_g
            d/dlog tau_k = sum_g (1 - lambda_gk) (v_gk (L_R^-T e_g)_k - 1)
            d/dc = sum_g (rho + s v_g1 e_g2 - rho e_g2^2)    (K = 2, rho = tanh c, s^2 = 1 - rho^2)
        """
        one_minus = 1.0 - self.centring[None]  # (1, G, K)
        scale = np.exp(log_tau[:, None, :] * one_minus)  # Lam_g's diagonal
        v = y / scale
        G_groups = y.shape[1]
        if c is None:
            e, LTe, log_det = v, v, 0.0
        else:
            rho = np.tanh(c)[:, None]
            s = np.sqrt(1.0 - rho * rho)
            e = np.stack([v[:, :, 0], (v[:, :, 1] - rho * v[:, :, 0]) / s], axis=2)
            LTe = np.stack([e[:, :, 0] - rho * e[:, :, 1] / s, e[:, :, 1] / s], axis=2)
            log_det = G_groups * np.log(s[:, 0])
        lp = (-log_tau @ one_minus[0].sum(axis=0) - log_det
              - 0.5 * np.einsum("sgk,sgk->s", e, e) - y[0].size * HALF_LOG_2PI)
        g_y = -LTe / scale
        g_log_tau = np.einsum("gk,sgk->sk", one_minus[0], v * LTe) - one_minus[0].sum(axis=0)
        g_c = None
        if c is not None:
            rho1 = rho[:, 0]
            g_c = (G_groups * rho1 + s[:, 0] * np.einsum("sg,sg->s", v[:, :, 0], e[:, :, 1])
                   - rho1 * np.einsum("sg,sg->s", e[:, :, 1], e[:, :, 1]))
        return lp, g_y, g_log_tau, g_c

    def log_joint_values(self, U: np.ndarray) -> np.ndarray:
        """log p(y, u) of each draw without the gradient (the kernel's pass without its
        gradient sums): the terms of ``log_joint_grad``."""
        from vireg.kernels.glm import grouped_loglik_grad

        nb = self.n_base_params
        base, log_tau, c, x = self._split(U)
        y = self._mixed(c, x)
        b = np.exp(log_tau[:, None, :] * self.centring[None]) * y
        Bg = np.ascontiguousarray(np.transpose(b, (1, 2, 0)) / self.y_scale)
        _, ll, _ = grouped_loglik_grad(self.likelihood.CODE, self.Z, self.Yk, self.groups.W,
                                       self.groups.gid, self.chunk_starts,
                                       np.ascontiguousarray(self.kernel_draws(base)), Bg,
                                       self.intercept, False)
        lp_prior, _ = self.log_prior_grad(base @ self.T[:nb, :nb].T + self.c[:nb])
        lp = (ll + self.response_terms(base)[0] + self.loglik_const + lp_prior
              + self._effects_prior(log_tau, c, y)[0] + self.group_sd.logpdf(log_tau).sum(axis=1))
        if c is not None:
            lp = (lp + lkj_logpdf(np.tanh(c), self.group_cor_eta)
                  + np.log(self._mixing(c)[1]).sum(axis=1))
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
        """The reported quantities for each draw: the base model's natural parameters, tau,
        and the correlation."""
        theta = self.to_theta(U)
        nb, k = self.n_base_params, self.n_location
        out = theta[:, :self.n_global].copy()
        out[:, k:nb + self.groups.K] = np.exp(out[:, k:nb + self.groups.K])
        if self.groups.n_cor:
            out[:, nb + self.groups.K] = np.tanh(out[:, nb + self.groups.K])
        return out

    def pointwise_loglik(self, U: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """log p(y_i | theta_s, b_s) (S x n) for the rows ``rows`` in the data's own order
        (default all): the base model's kernel pass with each row's group effects w_i . b_g(i)
        added to its linear predictor."""
        from vireg.kernels.glm import pointwise_loglik

        U = np.atleast_2d(U)
        position = np.empty(self.n_rows, dtype=np.int64)
        position[self.row_order] = np.arange(self.n_rows)  # data row -> sorted row
        idx = position[np.arange(self.n_rows) if rows is None else np.asarray(rows)]
        b = self.group_effects(U)  # (S, G, K)
        shift = np.einsum("rk,srk->sr", self.groups.W[idx], b[:, self.groups.gid[idx], :])
        Uk = np.ascontiguousarray(self.kernel_draws(U[:, :self.n_base_params]), dtype=np.float64)
        L = pointwise_loglik(self.likelihood.CODE, self.Z, self.Yk, Uk, self.intercept,
                             np.ascontiguousarray(idx),
                             np.ascontiguousarray(shift / self.y_scale))
        return L - np.log(self.y_scale) if self.likelihood.HAS_SCALE else L


def mixing(c: np.ndarray, mu: np.ndarray):
    """The second row of M_g in y_g = M_g x_g (two correlated terms) and its derivative in
    c, each (S, G): M_g = I + mu_g (L_R - I) = [[1, 0], [mu rho, 1 + mu (s - 1)]],
    rho = tanh c, s = sqrt(1 - rho^2), dM/dc = mu [[0, 0], [s^2, -rho s]] (ds/dc = -rho s)."""
    mu = mu[None, :]
    rho = np.tanh(c)[:, None]
    s = np.sqrt(1.0 - rho * rho)
    return mu * rho, 1.0 + mu * (s - 1.0), mu * s * s, -mu * rho * s


def mixed(c: np.ndarray | None, x: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """y = M x for every draw and group (x itself without a correlation)."""
    if c is None:
        return x
    m10, m11, _, _ = mixing(c, mu)
    y = x.copy()
    y[:, :, 1] = m10 * x[:, :, 0] + m11 * x[:, :, 1]
    return y


def group_effects_of(U: np.ndarray, n_base: int, centring: np.ndarray, cor_centring: np.ndarray,
                     correlated: bool) -> np.ndarray:
    """b (S, G, K) of draws U: b_gk = tau_k^lambda_gk y_gk, y_g = M_g x_g (module doc), from
    u's layout (base coordinates, log tau, the correlation if any, then x group by group)."""
    G, K = centring.shape
    log_tau = U[:, n_base:n_base + K]
    c = U[:, n_base + K] if correlated else None
    x = U[:, n_base + K + int(correlated):].reshape(U.shape[0], G, K)
    return np.exp(log_tau[:, None, :] * centring[None]) * mixed(c, x, cor_centring)


def population_cov(U: np.ndarray, n_base: int, K: int, correlated: bool) -> np.ndarray:
    """Psi = diag(tau) R diag(tau) of each draw (S, K, K): the population new groups come from."""
    tau = np.exp(U[:, n_base:n_base + K])
    R = np.broadcast_to(np.eye(K), (U.shape[0], K, K)).copy()
    if correlated:
        R[:, 0, 1] = R[:, 1, 0] = np.tanh(U[:, n_base + K])
    return tau[:, :, None] * R * tau[:, None, :]


def lkj_logpdf(rho: np.ndarray, eta: float) -> np.ndarray:
    """log p(c) for rho = tanh(c) ~ LKJ(eta) with K = 2: p(rho) = 2^(1 - 2 eta)
    (1 - rho^2)^(eta - 1) / B(eta, eta), with the Jacobian 1 - rho^2 of c."""
    return (eta * np.log1p(-rho * rho) + (1.0 - 2.0 * eta) * math.log(2.0)
            - (2.0 * math.lgamma(eta) - math.lgamma(2.0 * eta)))


def group_table(model, b: np.ndarray) -> list[dict]:
    """groups.csv's rows from draws of the group effects b (draws, G, K): per level and term,
    the mean, sd and 5/50/95% quantiles of the deviation (lme4's ranef)."""
    g = model.groups
    q = np.quantile(b, [0.05, 0.5, 0.95], axis=0)
    mean, sd = b.mean(axis=0), b.std(axis=0, ddof=1)
    return [{"group": g.factor, "level": level, "term": term, "mean": float(mean[j, k]),
             "sd": float(sd[j, k]), "q5": float(q[0, j, k]), "q50": float(q[1, j, k]),
             "q95": float(q[2, j, k])}
            for j, level in enumerate(g.levels) for k, term in enumerate(g.terms)]


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
