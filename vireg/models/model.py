"""The model as fitted: likelihood, priors, and the internal affine reparameterisation.

The user's parameters are theta = (alpha, beta_1..beta_D, tau = log sigma) on the scale of the
data as given. For conditioning, the optimiser works in u, the same model written on standardised
columns z_ij = (x_ij - c_j) / s_j and response (y - m_y) / s_y:

    theta = T u + c       (an exact affine map; see ``affine_map``)

so that posterior coordinates in u are of order one whatever the units of the data. The priors
stay on theta; the log joint in u is

    log p(y, u) = sum_i l_u(y_i, u) - N log s_y + log prior(T u + c)

and its gradient is G_data(u) + T^T grad_theta log prior(theta). The constant log |det T| is
carried into the reported ELBO so that it is the ELBO of the model as stated.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import numpy as np

from vireg.data import Design
from vireg.errors import InputError
from vireg.kernels.flags import chunk_rows_for
from vireg.models import (
    bernoulli,
    binomial,
    gaussian,
    negative_binomial,
    poisson,
    probit,
    student_t,
)
from vireg.models.priors import Prior, parse_prior
from vireg.rows import MemoryRows, ResponseSums, kernel_response, standardized_gram_f64

LIKELIHOODS: dict[str, ModuleType] = {
    "gaussian": gaussian, "bernoulli": bernoulli, "binomial": binomial, "poisson": poisson,
    "negative_binomial": negative_binomial, "student_t": student_t}
# Links other than a family's canonical one, as likelihoods of their own
LINKED: dict[tuple[str, str], ModuleType] = {("bernoulli", "probit"): probit}


def likelihood_module(family: str, link: str | None = None) -> ModuleType:
    """The likelihood of a family (model.family) and link (model.link; None: the default)."""
    return LINKED.get((family, link or ""), LIKELIHOODS[family])


# Draws per pass over in-memory rows for the ELBO and k-hat draws: the pass is bound by arithmetic,
# but each pass also pays a read of X; 1,000,000 x 100, logistic, per draw: 3.6 ms with 32 draws
# per pass, 3.1 ms with 64 (2,000 k-hat draws: 7.2 -> 6.2 s).
DRAWS_PER_PASS = 64
# With streamed rows a pass costs a read of the whole cache (or a round of Dask tasks): more draws.
STREAMED_DRAWS_PER_PASS = 256
# Orthogonalising the design: through the Cholesky factor of the Gram matrix while its eigenvalues
# (unit diagonal) are no further apart than this (condition number of the columns below 1e4, so Q
# is orthonormal to about 1e-8), else by Householder QR; the product Z R^-1 a piece of rows at a time.
GRAM_ORTHOGONALIZE_RTOL = 1e-8
ORTHOGONALIZE_ROWS = 65536
# A QR factor with a diagonal entry this small relative to the largest has dependent columns.
SINGULAR_R_RTOL = 1e-14


class Model:
    """A Bayesian regression ready to fit: standardised data, priors and the map back."""

    def __init__(self, design: Design, likelihood: str, intercept: bool, priors: list[Prior],
                 fixed_sigma: float | None = None, draws_per_step: int = 8,
                 dtype: str = "float64", source=None, orthogonalize: bool = False,
                 link: str | None = None, fixed_nu: float | None = None):
        """``design`` holds the data in memory, or with ``source`` (rows that live elsewhere: a
        disk cache or Dask workers) only the names, and ``source`` supplies the moments and the
        standardised rows. ``orthogonalize`` (rows in memory only) makes the kernel read the
        standardised columns orthogonalised (``_orthogonalize``). ``fixed_sigma`` and
        ``fixed_nu`` are known values of a gaussian's sigma and a Student-t's nu."""
        self.likelihood_name = likelihood  # model.family in the config
        self.link = link
        self.fixed_sigma = fixed_sigma
        self.fixed_nu = fixed_nu
        self.likelihood = likelihood_module(likelihood, link)
        # Positive parameters after the coefficients, fitted as logs; a known one is a fixed
        # trailing column of the kernel's draws (``kernel_draws``)
        fixed = {"sigma": fixed_sigma, "nu": fixed_nu}
        self.positive_names = positive_parameters(likelihood, link, fixed_sigma, fixed_nu)
        self._fixed_names = [n for n in self.likelihood.AUX if fixed.get(n) is not None]
        self.row_data_name = design.row_data_name
        self._dispersion_histogram = None
        self.intercept = intercept
        self.design = design
        self.dtype = dtype
        self._gram = None
        self._class_extremes = None
        self.curvature_passes = 0  # passes over the rows that likelihood_curvature has made
        # R with u_coef = R (standardised coefficients) when the columns are orthogonalised.
        self.design_map: np.ndarray | None = None
        if source is None:
            self._standardize_in_memory(design, draws_per_step)
            if orthogonalize and self.n_cov > 0 and self.n_rows > self.n_cov:
                self._orthogonalize()
        else:
            self._standardize_source(source, draws_per_step)
        self.T, self.c = self.affine_map()
        self.log_det_T = float(np.linalg.slogdet(self.T)[1])
        self.loglik_const += (-self.n_rows * np.log(self.y_scale) if self.likelihood.HAS_SCALE
                              else 0.0)
        # Known values, in the kernel's coordinates: t = log(sigma / s_y), log nu
        self.fixed_tail = np.array([np.log(fixed_sigma / self.y_scale) if n == "sigma"
                                    else np.log(fixed[n]) for n in self._fixed_names])
        self.priors = priors
        self._prior_groups = _group_priors(priors)

    def _standardize_in_memory(self, design: Design, draws_per_step: int) -> None:
        y, X = design.y, design.X
        self.n_rows, self.n_cov = X.shape
        x = design.row_data
        if hasattr(self.likelihood, "check_rows"):  # counts (and their trials or exposure)
            self.likelihood.check_rows(y, x, design.response, design.row_data_name,
                                       _row_words(design.dropped_rows))
        else:
            self.likelihood.check_response(y, design.response)
        self.loglik_const = float(np.sum(self.likelihood.row_constants(y, x)))
        self.response_sums = ResponseSums(float(np.sum(y)), None if x is None else
                                          float(np.sum(x)), len(y))
        if self.likelihood.NAME == "negative_binomial":
            self._dispersion_histogram = np.unique(y, return_counts=True)

        # Column moments in one parallel pass, then the standardised copy in another (no other
        # N x D temporaries).
        from vireg.kernels.columns import column_moments, standardize_into

        chunk = chunk_rows_for(self.n_rows, self.n_cov)
        X = np.ascontiguousarray(X, dtype=np.float64)
        mean, m2, lo, hi = column_moments(X, chunk)
        sd = np.sqrt(m2 / max(self.n_rows, 1))
        # For `vireg check` and humans: the columns as given, before standardisation.
        self.column_stats = [(design.response, *_stats(y))] + [
            (name, float(mean[j]), float(sd[j]), float(lo[j]), float(hi[j]))
            for j, name in enumerate(design.covariates)]
        self.x_centre, self.x_scale = column_scaling(mean, sd, self.intercept)
        self.y_centre, self.y_scale = self.likelihood.response_scaling(y, self.intercept)
        # The standardised rows, once, in the dtype the kernel reads: float32 halves the bytes
        # per pass and the memory (sums still accumulate in float64; the set-up algebra, the
        # Gram matrix, converts them back to float64 a chunk at a time).
        self.Z = np.empty((self.n_rows, self.n_cov), dtype=self.dtype)
        standardize_into(X, self.x_centre, self.x_scale, self.Z, chunk)
        self.y = np.ascontiguousarray((y - self.y_centre) / self.y_scale)
        self.Y = kernel_response(self.likelihood, self.y, x)
        # float32 halves the response's bytes; counts, trials and log exposures stay float64
        # (a count above 2^24 would round)
        yk = self.Y if self.dtype == "float64" or self.Y.ndim == 2 else self.Y.astype(np.float32)
        self.rows = MemoryRows(self.Z, yk, self.likelihood, self.intercept, draws_per_step)

    def _orthogonalize(self) -> None:
        """Replace the standardised columns Z by Q = Z R^-1 with Q^T Q = N I (``design_map`` = R,
        upper triangular), and the coefficients b by R b, so that Z b = Q (R b): the same model,
        whose curvature is no longer ill-conditioned by correlated columns (a polynomial's
        powers, repeated measurements). With an intercept Z is centred, and so is Q.

        R is the Cholesky factor of Z^T Z / N when that is well conditioned; otherwise it comes
        from a Householder QR of Z, whose Q is orthonormal to rounding whatever the condition
        number (the Gram matrix squares it, which float64 cannot hold past about 1e8)."""
        N = self.n_rows
        Z64 = np.asarray(self.Z, dtype=np.float64)
        gram = Z64.T @ Z64 / N
        d = np.sqrt(np.diag(gram))
        d = np.where(d > 0, d, 1.0)
        eig = np.linalg.eigvalsh(gram / np.outer(d, d))
        R = None
        if eig[0] > GRAM_ORTHOGONALIZE_RTOL * eig[-1]:
            try:
                R = np.linalg.cholesky(gram).T
            except np.linalg.LinAlgError:
                R = None
        if R is not None:
            R_inv = np.linalg.inv(R)
            for lo in range(0, N, ORTHOGONALIZE_ROWS):
                self.Z[lo:lo + ORTHOGONALIZE_ROWS] = Z64[lo:lo + ORTHOGONALIZE_ROWS] @ R_inv
        else:
            Q, R = np.linalg.qr(Z64)
            diag = np.abs(np.diag(R))
            if not diag.min() > SINGULAR_R_RTOL * diag.max():
                # Columns dependent to rounding (an all-zero column under a proper prior, say):
                # Q's column there is arbitrary, so Z = Q R would not hold; keep Z as it is.
                return
            sign = np.where(np.diag(R) < 0, -1.0, 1.0)
            R = sign[:, None] * R / np.sqrt(N)
            self.Z[...] = Q * (sign * np.sqrt(N))
        self.design_map = R  # self.rows reads self.Z, written in place

    def _standardize_source(self, source, draws_per_step: int) -> None:
        """The same standardisation from streamed moments; the source writes the standardised
        rows where it keeps them and returns the Gram matrix gathered on the way."""
        m = source.moments
        self.n_rows, self.n_cov = m.n_rows, len(m.x_mean)
        self.loglik_const = m.const_sum
        self.response_sums = m.response_sums
        if m.histogram is not None:
            self._dispersion_histogram = (m.histogram[0], m.histogram[1])
        if self.likelihood.HAS_SCALE and m.y_min == m.y_max:  # (0/1 is checked row by row)
            self.likelihood.check_response(np.array([m.y_min, m.y_max]), self.design.response)
        mean, sd = m.x_mean, m.x_sd
        self.column_stats = [(self.design.response, m.y_mean, m.y_sd, m.y_min, m.y_max)] + [
            (name, float(mean[j]), float(sd[j]), float(m.x_min[j]), float(m.x_max[j]))
            for j, name in enumerate(self.design.covariates)]
        self.x_centre, self.x_scale = column_scaling(mean, sd, self.intercept)
        self.y_centre, self.y_scale = self.likelihood.response_scaling_from_moments(
            m.y_mean, m.y_sd, self.intercept)
        self.Z = self.y = None
        self._class_extremes = m.class_extremes
        self.rows, self._gram = source.standardize(
            self.x_centre, self.x_scale, self.y_centre, self.y_scale, self.intercept, self.dtype,
            draws_per_step, self.likelihood)

    @property
    def in_memory(self) -> bool:
        """Whether the standardised float64 rows are in this process (not streamed)."""
        return self.Z is not None

    def class_extremes(self) -> np.ndarray:
        """Per column of the raw covariates: min and max over rows with y = 1, then over y = 0."""
        if self._class_extremes is None:
            from vireg.kernels.columns import class_extremes

            X = self.design.X
            self._class_extremes = class_extremes(np.ascontiguousarray(X), self.design.y,
                                                  chunk_rows_for(*X.shape))
        return self._class_extremes

    @property
    def has_scale(self) -> bool:
        """Whether sigma (gaussian, student_t) is a fitted parameter."""
        return "sigma" in self.positive_names

    @property
    def n_positive(self) -> int:
        """Fitted positive parameters (sigma, phi, nu), the last of theta, as their logs."""
        return len(self.positive_names)

    @property
    def n_params(self) -> int:
        return self.n_base_params

    @property
    def n_base_params(self) -> int:
        """The regression's own parameters: intercept, coefficients, positive ones."""
        return int(self.intercept) + self.n_cov + self.n_positive

    @property
    def param_names(self) -> list[str]:
        """Names on the natural scale: intercept, the covariates, then sigma, phi or nu."""
        names = (["intercept"] if self.intercept else []) + list(self.design.covariates)
        return names + self.positive_names

    @property
    def theta_names(self) -> list[str]:
        """Names of theta = T u + c: the location parameters, then log of the positive ones."""
        names, k = self.param_names, self.n_location
        return names[:k] + [f"log_{n}" for n in names[k:]]

    def affine_map(self) -> tuple[np.ndarray, np.ndarray]:
        """T and c with theta = T u + c.

        eta = alpha + x . beta = m_y + s_y (a + sum_j (x_j - c_j) / s_j b_j) gives
        beta_j = s_y b_j / s_j,  alpha = m_y + s_y a - sum_j c_j beta_j,  tau = t + log s_y.
        """
        P, off = self.n_base_params, int(self.intercept)
        T = np.zeros((P, P))
        c = np.zeros(P)
        slope = self.y_scale / self.x_scale
        for j in range(self.n_cov):
            T[off + j, off + j] = slope[j]
        if self.intercept:
            T[0, 0] = self.y_scale
            T[0, off:off + self.n_cov] = -self.x_centre * slope
            c[0] = self.y_centre
        for k, name in enumerate(self.positive_names):
            i = self.n_location + k
            T[i, i] = 1.0
            c[i] = np.log(self.y_scale) if name == "sigma" else 0.0
        if self.design_map is not None:  # b = R^-1 u_coef: T's coefficient columns times R^-1
            cols = slice(off, off + self.n_cov)
            T[:, cols] = np.linalg.solve(self.design_map.T, T[:, cols].T).T
        return T, c

    @property
    def n_location(self) -> int:
        """Number of location parameters (intercept and coefficients), which come first in u."""
        return int(self.intercept) + self.n_cov

    def gram(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(Z1^T Z1, Z1^T y, y^T y) of the standardised design with its intercept column: one pass
        over the data, shared by the propriety checks and the curvature (cached)."""
        if self._gram is None:
            self._gram = standardized_gram_f64(self.Z, self.y, self.intercept)
        return self._gram

    def residual_fraction(self) -> float:
        """Least-squares residual sum of squares over y^T y (from the Gram matrix)."""
        gram, zty, yty = self.gram()
        coef = np.linalg.lstsq(gram, zty, rcond=None)[0]
        return max(yty - float(coef @ zty), 0.0) / max(yty, 1e-300)

    def curvature_at(self, m: np.ndarray) -> np.ndarray:
        """C = -d2 log p(y, u) / du2 at u = m with the location priors' curvature taken at their
        modes (the quadratic control variate's matrix; any fixed C keeps its estimate unbiased):
        ``likelihood_curvature(m)`` plus T^T diag(prior curvature) T in the location block."""
        k = self.n_location
        C = self.likelihood_curvature(m)
        C[:k, :k] += self._prior_curvature()
        return C

    def hessian_at(self, m: np.ndarray) -> np.ndarray:
        """The exact -d2 log p(y, u) / du2 at u = m: ``likelihood_curvature(m)`` plus
        T^T diag(-d2 log prior / dtheta2 at theta = T m + c) T (every prior, sigma's included;
        the priors are independent, so their Hessian is diagonal in theta)."""
        theta = self.to_theta(m[None, :])[0]
        h = np.zeros(self.n_params)
        for prior, idx in self._prior_groups:
            h[idx] = -prior.hess(theta[idx])
        return self.likelihood_curvature(m) + self.T.T @ (h[:, None] * self.T)

    def likelihood_curvature(self, m: np.ndarray) -> np.ndarray:
        """-d2/du2 of the log likelihood at u = m (P x P):

            location block Z1^T diag(w) Z1

        with w_i the likelihood's curvature in eta at eta_i = z1_i . m, and the rows and columns
        of the positive parameters (each likelihood's ``curvature_terms``). Gaussian models take
        it from the sufficient statistics (no pass over the data): w = exp(-2 t), whose log
        sigma t adds the row and column -d2/dt2 = 2 w e^T e and -d2/db dt = 2 w Z1^T e
        (e = y - Z1 m). Other likelihoods make one pass over the rows, wherever the row source
        keeps them, in float64 a piece at a time.
        """
        k, P = self.n_location, self.n_params
        C = np.zeros((P, P))
        if self.likelihood is gaussian:
            # From the sufficient statistics, no pass over the data: with e = y - Z1 m_loc,
            # Z1^T e = Z1^T y - G m_loc and e^T e = y^T y - 2 m_loc^T Z1^T y + m_loc^T G m_loc.
            gram, zty, yty = self.gram()
            t = self.fixed_tail[0] if self.fixed_tail.size else m[P - 1]
            w = np.exp(-2.0 * t)
            C[:k, :k] = w * gram
            if self.has_scale:  # the log sigma row and column
                ml = m[:k]
                C[:k, P - 1] = C[P - 1, :k] = 2.0 * w * (zty - gram @ ml)
                C[P - 1, P - 1] = 2.0 * w * max(yty - 2.0 * ml @ zty + ml @ gram @ ml, 0.0)
            return C
        if (self.likelihood is bernoulli and not np.any(m[int(self.intercept):k])
                and self.design_map is not None):
            # Every eta is the intercept, so w is one number; orthogonalised columns have
            # Z1^T Z1 = N I (centred with an intercept): the curvature is w N I, no pass over the
            # rows (Newton's first step from the null model). The exact Gram matrix is left to
            # ``gram``, whose least-squares residuals detect exact fits.
            a = m[0] if self.intercept else 0.0
            p = 0.5 * (1.0 + np.tanh(0.5 * a))
            C[:k, :k] = p * (1.0 - p) * self.n_rows * np.eye(k)
            return C
        H = self.rows.curvature(self.kernel_draws(m[None, :])[0])
        self.curvature_passes += 1
        if self._dispersion_histogram is not None:  # the Gamma terms of phi (negative binomial)
            H[k, k] -= self._dispersion(m[None, k])[2, 0]
        return H[:P, :P]

    def _prior_curvature(self) -> np.ndarray:
        """T_loc^T diag(c) T_loc: the location priors' curvature at their modes (c_j), mapped to
        the standardised coordinates u."""
        k = self.n_location
        T_loc = self.T[:k, :k]
        c = np.array([p.curvature() for p in self.priors[:k]])
        return T_loc.T @ (c[:, None] * T_loc)

    def to_theta(self, U: np.ndarray) -> np.ndarray:
        """theta = T u + c for each row of U."""
        return U @ self.T.T + self.c

    def log_prior_grad(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sum of log prior densities over parameters, and its gradient, for each row of theta."""
        lp = np.zeros(theta.shape[0])
        grad = np.zeros_like(theta)
        for prior, idx in self._prior_groups:
            x = theta[:, idx]
            lp += prior.logpdf(x).sum(axis=1)
            grad[:, idx] = prior.grad(x)
        return lp, grad

    def log_joint(self, U: np.ndarray, batch: int | None = None) -> np.ndarray:
        """log p(y, theta(u)) for many draws (see ``log_joint_batches``)."""
        out = np.empty(U.shape[0])
        for start, values in self.log_joint_batches(U, batch):
            out[start:start + values.size] = values
        return out

    def log_joint_batches(self, U: np.ndarray, batch: int | None = None
                          ) -> Iterator[tuple[int, np.ndarray]]:
        """(first draw, log p(y, theta(u)) of a batch of draws), ``batch`` draws per pass over
        the data (more when the rows are streamed, where a pass costs a read of the whole cache),
        so that a caller can report progress. The data kernel runs without its gradient sums
        (half the arithmetic of a gradient pass)."""
        batch = batch or (DRAWS_PER_PASS if self.in_memory else STREAMED_DRAWS_PER_PASS)
        for start in range(0, U.shape[0], batch):
            Ub = U[start:start + batch]
            with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
                lp, _ = self.log_prior_grad(self.to_theta(Ub))
                values = (self.rows.loglik(self.kernel_draws(Ub)) + self.response_terms(Ub)[0]
                          + self.loglik_const + lp)
            yield start, values

    def warm_up(self) -> None:
        """Compile the data kernels (or load them from Numba's cache) on a one-row slice."""
        self.rows.warm_up(self.n_params + self.fixed_tail.size)

    def kernel_draws(self, U: np.ndarray) -> np.ndarray:
        """Draws in the kernel's layout: known values (sigma, nu) are fixed trailing columns."""
        if not self.fixed_tail.size:
            return U
        return np.hstack([U, np.broadcast_to(self.fixed_tail, (U.shape[0], self.fixed_tail.size))])

    def data_grad(self, G: np.ndarray) -> np.ndarray:
        """The kernel's gradient without the columns of known values."""
        return G if not self.fixed_tail.size else np.ascontiguousarray(G[:, :self.n_params])

    def _dispersion(self, log_phi: np.ndarray) -> np.ndarray:
        """``kernels.glm.dispersion_terms`` of the response's histogram at each log phi."""
        from vireg.kernels.glm import dispersion_terms

        values, counts = self._dispersion_histogram
        return dispersion_terms(values.astype(np.float64), counts.astype(np.float64),
                                np.ascontiguousarray(log_phi, dtype=np.float64))

    def response_terms(self, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The log joint's terms over all rows that the data kernel leaves out because they
        depend on the response alone (the negative binomial's sum of log Gamma(y + phi) -
        log Gamma(phi)), and their gradient in u; zeros for other likelihoods. Always over the
        full data, so a minibatch step gets them exactly."""
        ll = np.zeros(U.shape[0])
        G = np.zeros_like(U)
        if self._dispersion_histogram is not None:
            k = self.n_location
            terms = self._dispersion(U[:, k])
            ll += terms[0]
            G[:, k] = terms[1]
        return ll, G

    def add_prior(self, U: np.ndarray, ll: np.ndarray, G: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
        """log p(y, theta(u)) and its gradient in u from the data sums (ll, G) of the draws U:
        with the constants, the response's own terms (``response_terms``) and the priors."""
        lp, g_theta = self.log_prior_grad(self.to_theta(U))
        ll_r, G_r = self.response_terms(U)
        return ll + ll_r + self.loglik_const + lp, G + G_r + g_theta @ self.T

    def from_natural(self, values: np.ndarray) -> np.ndarray:
        """u of draws on the natural scale (S x P, ``param_names`` order; positive parameters
        as themselves): the inverse of ``posterior.to_natural``."""
        theta = np.array(values, dtype=np.float64)
        if self.n_positive:
            theta[:, self.n_location:] = np.log(theta[:, self.n_location:])
        return np.linalg.solve(self.T, (theta - self.c).T).T

    def pointwise_loglik(self, U: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """log p(y_i | theta(u_s)) for each draw s and observation i (S x n; ``rows``: the
        observations' indices, default all), with every constant, on the response as given:
        one parallel kernel pass (``kernels.glm.pointwise_loglik``). Rows in memory only."""
        from vireg.kernels.glm import pointwise_loglik

        if not self.in_memory:
            raise InputError("per-observation log-likelihoods need the rows in memory: fit "
                             "without runtime.out_of_core or the Dask backend")
        idx = (np.arange(self.n_rows, dtype=np.int64) if rows is None
               else np.ascontiguousarray(rows, dtype=np.int64))
        Y = self.Y if self.Y.ndim == 2 else np.column_stack([self.Y, np.zeros(self.n_rows)])
        Uk = np.ascontiguousarray(self.kernel_draws(np.atleast_2d(U)), dtype=np.float64)
        L = pointwise_loglik(self.likelihood.CODE, self.Z, Y, Uk, self.intercept, idx,
                             np.empty((0, 0)))
        shift = -np.log(self.y_scale) if self.likelihood.HAS_SCALE else 0.0
        return L + shift

    def log_joint_grad(self, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log p(y, theta(u)) and its gradient with respect to u, for each draw (row) of U.

        One call of the data kernel (one pass over the rows) for all draws.
        """
        G, ll = self.rows.loglik_grad(self.kernel_draws(U))
        return self.add_prior(U, ll, self.data_grad(G))


def _row_words(dropped: int):
    """How the row checks name row i: its data row, or with rows dropped for missing values
    its place among the rows kept."""
    if not dropped:
        return lambda i: f"data row {i + 1}"
    return lambda i: f"row {i + 1} of those kept after dropping {dropped} with missing values"


def column_scaling(mean: np.ndarray, sd: np.ndarray, intercept: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(centre, scale) of the covariates for the internal standardisation. Without an intercept
    the columns cannot be centred: they are scaled by their root mean square. A constant column
    cannot be standardised and is left unscaled (the propriety checks refuse it under a flat
    prior; under a proper one its prior identifies it)."""
    if intercept:
        centre, scale = mean, sd
    else:
        centre, scale = np.zeros_like(mean), np.sqrt(sd**2 + mean**2)
    return centre, np.where(scale > 0, scale, 1.0)


def _stats(v: np.ndarray) -> tuple[float, float, float, float]:
    """mean, sd, min and max of a column (NaN for an empty one)."""
    if v.size == 0:
        return (float("nan"),) * 4
    return float(v.mean()), float(v.std()), float(v.min()), float(v.max())


def _group_priors(priors: list[Prior]) -> list[tuple[Prior, np.ndarray]]:
    groups: dict[Prior, list[int]] = {}
    for i, p in enumerate(priors):
        if p.name != "flat":
            groups.setdefault(p, []).append(i)
    return [(p, np.array(idx)) for p, idx in groups.items()]


def positive_parameters(family: str, link: str | None = None, fixed_sigma: float | None = None,
                        fixed_nu: float | None = None) -> list[str]:
    """The fitted positive parameters of a likelihood (sigma, phi, nu), known values left out."""
    fixed = {"sigma": fixed_sigma, "nu": fixed_nu}
    return [n for n in likelihood_module(family, link).AUX if fixed.get(n) is None]


def resolve_priors(prior_cfg, family: str, intercept: bool, covariates: list[str],
                   positive: list[str], sources: list[str] | None = None) -> list[Prior]:
    """One parsed prior per parameter, in theta order (``positive``: ``positive_parameters``)."""
    priors: list[Prior] = []
    if intercept:
        priors.append(parse_prior(prior_cfg.intercept, "model.prior.intercept", "location"))
    default = parse_prior(prior_cfg.coefficients, "model.prior.coefficients", "location")
    sources = sources or covariates
    for name in prior_cfg.overrides:
        if name not in covariates and name not in sources:
            raise InputError(f"model.prior.overrides names '{name}', which is not a covariate: "
                             f"covariates are {', '.join(covariates) or '(none)'}")
    # An override names a design column ("color[red]") or a data column ("color": all its levels).
    for name, source in zip(covariates, sources, strict=True):
        key = name if name in prior_cfg.overrides else source
        if key in prior_cfg.overrides:
            priors.append(parse_prior(prior_cfg.overrides[key],
                                      f"model.prior.overrides.{key}", "location"))
        else:
            priors.append(default)
    defaults = getattr(LIKELIHOODS[family], "DEFAULT_PRIORS", {})
    for name in positive:
        text = getattr(prior_cfg, name) or defaults.get(name, "flat")
        priors.append(parse_prior(text, f"model.prior.{name}", "scale"))
    return priors
