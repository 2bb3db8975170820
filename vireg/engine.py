"""The optimisation loop as a generator of events, and the rules that decide it has converged.

Every fit starts from the Laplace approximation (``laplace.find_mode``): a full-rank q in the
whitened frame u = u* + W z with W^T H* W = I (``FullRank``'s frame), so that q starts as
N(u*, H*^-1); a mean-field q at the mode with sds 1/sqrt(diag H*), its means moved in the
coordinates x_m = W^-1 m. In these coordinates x the ELBO's curvature near the optimum is known
(the family's ``frame_curvature``: 1 for the means and the off-diagonal factor, 2 for the log
scales), so each step is a scaled Newton step x <- x + rate * grad / curvature (``ScaledSGD``),
with rate ``inference.learning_rate`` for the means and at most draws / parameters for the
scales (whose gradient noise grows with the distance of q's covariance from the posterior's,
summed over P^2 / 2 entries), and no coordinate moving more than MAX_MOVE in a step.

Stopping (after Dhaka et al. 2020 and Welandawe et al. 2022): the per-step ELBO is a noisy Monte
Carlo estimate, so a relative-change test on it fires too early or never. The steps run in windows
of ``window`` steps; each window keeps its mean ELBO, the Monte Carlo standard errors (batch means
over 10 sub-batches, which allow for autocorrelation) and the average of the iterates. After the
first window the rate is cut by SETTLE (the first window brings q to its optimum; shorter steps
then average with less jitter). Two tests end a fit as converged:

1. The gradient test: near the optimum a window average lies about g / curvature from it, g the
   window's mean gradient. When no coordinate drifts (|g| / se below a Bonferroni bound over all
   coordinates) and (|g| + 2 se) / curvature is below ``tolerance`` everywhere, q is at its
   family's optimum to within its Monte Carlo error.
2. The level test: a window whose mean ELBO is not significantly above the previous one's, with
   no coordinate drifting, ends a level; its estimate is the average of the two windows (Polyak-
   Ruppert). When successive levels' estimates agree within ``tolerance`` (the family's
   ``distance``, in posterior sds) the fit has converged; otherwise the rate halves and a new
   level starts. Where the gradient noise is large (small or skewed posteriors) this is the test
   that ends the fit.

A ``RunawayGuard`` watches every window: a window whose averaged mean is RUNAWAY_SD Laplace sds
from the mode, or whose ELBO is far below the start's, has left the region where the answer can
be; the fit goes back to its last good state with a quarter of the rate, and after MAX_RESTARTS
such returns it stops as not converged, saying so (never "converged").

With the quadratic control variate (``uses_quadratic_cv``; docs/derivations.md) every draw's
gradient of log p gets C (u_s - m) added, C the log joint's curvature at q's mean, and the family
subtracts the exact expectation of what that adds (``quadratic_cv_mean``): the same mean, far
less noise near q. C is recomputed at a window's end once q's mean has moved QCV_REFRESH_SD
posterior sds from where C was computed.

A step whose ELBO or gradient is not finite is undone: the parameters go back to the last good
window and the rate shrinks tenfold; each clean window after that doubles it back towards the
level's. Too many failures in a row stop the fit with a ``FitError`` (no results are written).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from vireg.errors import FitError
from vireg.optim import ScaledSGD

LR_DECAY = 0.5
# After this many halvings (a 1e-12-fold smaller step) the iterates no longer move, so agreeing
# averages would prove nothing: stop and say the fit did not converge.
MAX_DECAYS = 40
NAN_BACKOFF = 0.1
MAX_CONSECUTIVE_BACKOFFS = 8
N_BATCHES = 10
QCV_AUTO_ROWS_PER_PARAM = 100
QCV_REFRESH_SD = 0.25
# inference.samples: auto (draws_per_step). DEFAULT_SAMPLES: what a model is built for before the
# count is settled (the kernels' serial-or-parallel choice).
DEFAULT_SAMPLES = 8
QCV_SAMPLES = 2
MIN_SAMPLES = 2
MAX_SAMPLES = 512
STEP_WORK = 1 << 20
# The largest change of one coordinate in one step (posterior sds, or log sd): a draw far in a tail
# cannot throw q out of the region the frame describes.
MAX_MOVE = 0.5
# The rate after the first window (a fraction of the first's; see the module docstring).
SETTLE = 0.4
# The runaway guard: a mean this many Laplace sds from the mode, or a window's ELBO this far below
# the start's (RUNAWAY_NATS + the number of parameters), is a fit that has run away.
RUNAWAY_SD = 10.0
RUNAWAY_NATS = 10.0
RESTART_LR = 0.25
MAX_RESTARTS = 3
# Draws for the ELBO of the start (one pass over the rows without the gradient sums), and the
# narrowing of a start far too wide (RunawayGuard).
START_ELBO_DRAWS = 32
START_SHRINK = 0.5
MAX_START_SHRINKS = 10
# The weight of the past in the progress display's moving average of the ELBO.
ELBO_SMOOTHING = 0.95
QUIET = {"over": "ignore", "invalid": "ignore", "divide": "ignore", "under": "ignore"}


@dataclass(frozen=True)
class Progress:
    """One optimisation step; ``elbo_smooth`` is an exponential moving average for display."""

    step: int
    elbo: float
    elbo_smooth: float
    max_steps: int


@dataclass(frozen=True)
class Outcome:
    """How the optimisation ended: the final variational parameters and why it stopped."""

    phi: np.ndarray
    steps: int
    converged: bool
    reason: str
    elbo_trace: np.ndarray  # (steps,) ELBO of each step, NaN where a step was undone
    last_distance: float | None
    levels: int
    backoffs: int
    curvature_passes: int = 0  # how often the quadratic control variate's C was computed
    restarts: int = 0  # returns to the last good state after the fit ran away
    guard_passes: int = 0  # passes over the rows for the start's ELBO


def _batch_means(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over axis 0 and its batch-means standard error (allows for autocorrelation)."""
    batches = np.array([b.mean(axis=0) for b in np.array_split(values, N_BATCHES)])
    return values.mean(axis=0), batches.std(axis=0, ddof=1) / np.sqrt(N_BATCHES)


def drift_threshold(n_coordinates: int, alpha: float = 0.01) -> float:
    """|mean gradient| / se above which some coordinate is still moving: a two-sided Bonferroni
    bound at level alpha over all coordinates, on Student's t with N_BATCHES - 1 degrees of
    freedom (the batch-means se's). The quantile is computed, not approximated: the
    Cornish-Fisher widening of the normal's, t ~ z + (z^3 + z) / (4 nu), falls short in the far
    tail a Bonferroni bound reaches (10.5 against 17.6 over the 350,000 coordinates of a
    structured q over 10,000 groups), where it flagged windows as drifting by chance and kept
    levels from ending."""
    return student_t_isf(alpha / (2.0 * n_coordinates), N_BATCHES - 1)


def student_t_isf(p: float, nu: int) -> float:
    """t with P(T > t) = p for Student's t with nu degrees of freedom (0 < p < 1/2): bisection
    on the tail, the integral of the density over x = t e^s, s >= 0 (whose integrand falls
    like e^(-nu s)), by the trapezoid rule."""
    log_c = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
    s = np.linspace(0.0, 80.0 / nu, 8001)

    def tail(t: float) -> float:
        x = t * np.exp(s)
        f = np.exp(log_c - 0.5 * (nu + 1) * np.log1p(x * x / nu)) * x
        return float(np.sum(0.5 * (f[1:] + f[:-1]) * np.diff(s)))

    lo, hi = 0.0, 1.0
    while tail(hi) > p:
        lo, hi = hi, 2.0 * hi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if tail(mid) > p else (lo, mid)
    return 0.5 * (lo + hi)


class RunawayGuard:
    """Sets where a fit starts and then tells a fit that has left the region where the answer
    can be: a window's averaged mean RUNAWAY_SD marginal Laplace sds from the mode, or its mean
    ELBO RUNAWAY_NATS + P nats below the ELBO of the start (a q that maximises the ELBO cannot
    be worse than where it started).

    The start is the Laplace approximation, narrowed where it is far too wide to be a start:
    for a Gaussian posterior E_q[log p] = log p(mode) - P/2, and a start whose draws fall more
    than RUNAWAY_NATS + P below that (a log joint far from quadratic within a Laplace sd: nearly
    separated classes under weak priors) has its scales halved, up to MAX_START_SHRINKS times,
    each a pass over the rows without the gradient sums."""

    def __init__(self, model, family, phi0: np.ndarray, laplace, rng: np.random.Generator):
        self.family, self.mode, self.sd = family, laplace.mode, laplace.sd
        self.slack = RUNAWAY_NATS + model.n_params
        P = model.n_params
        self.phi0, self.passes = phi0.copy(), 0
        while True:
            eps = rng.standard_normal((START_ELBO_DRAWS, P))
            with np.errstate(**QUIET):
                logp = model.log_joint(family.sample(self.phi0, eps))
            self.passes += 1
            mean_logp = float(np.mean(logp)) if np.all(np.isfinite(logp)) else -np.inf
            if (mean_logp >= laplace.log_p - 0.5 * P - self.slack
                    or self.passes > MAX_START_SHRINKS):
                break
            self.phi0[P:2 * P] += np.log(START_SHRINK)  # log sds (mean-field), lambda (full-rank)
        self.elbo0 = mean_logp + family.entropy(self.phi0) + model.log_det_T

    def why(self, avg_phi: np.ndarray, window_elbo: float) -> str | None:
        """Why the window ran away, or None."""
        mean = self.family.mean(avg_phi)
        far = float(np.max(np.abs(mean - self.mode) / self.sd))
        if not np.isfinite(far) or far > RUNAWAY_SD:
            return f"q's mean moved {far:.3g} Laplace sds from the posterior mode"
        if np.isfinite(self.elbo0) and window_elbo < self.elbo0 - self.slack:
            return (f"the ELBO fell to {window_elbo:.6g}, {self.elbo0 - window_elbo:.3g} below "
                    "where the fit started")
        return None


@dataclass(frozen=True)
class Window:
    """The summary of one window of steps: mean ELBO and its standard error, the mean gradient in
    the optimiser's coordinates and its standard error, the average of the iterates phi."""

    elbo: float
    elbo_se: float
    grad: np.ndarray
    grad_se: np.ndarray
    avg: np.ndarray


@dataclass(frozen=True)
class Verdict:
    """What the stopping rule made of a window: ``kind`` is "converged" (``estimate`` is the
    answer), "level" (a stationary level ended: the rate halves), "exhausted" (the rate has
    halved MAX_DECAYS times), "first" (the first window of the fit) or "continue"."""

    kind: str
    estimate: np.ndarray | None = None
    reason: str = ""


class StoppingRule:
    """The two convergence tests of the module docstring, applied window by window; its state is
    the previous window and the previous level's estimate."""

    def __init__(self, family, window: int, tolerance: float, window_growth: int = 1):
        self.family, self.W, self.tolerance, self.growth = family, window, tolerance, window_growth
        self.curvature = family.frame_curvature()
        self.z_drift = drift_threshold(family.size)
        self.prev: Window | None = None
        self.level_estimate: np.ndarray | None = None
        self.last_distance: float | None = None
        self.levels = self.decays = 0
        self.forget_window()

    def forget_window(self) -> None:
        """Start the window afresh (after an undone step or a restart)."""
        self.k = 0
        self.elbos = np.empty(self.W)
        self.grads = np.empty((self.W, self.family.size))
        self.phi_sum = np.zeros(self.family.size)

    def add(self, elbo: float, grad_x: np.ndarray, phi: np.ndarray) -> Window | None:
        """Record a step; at a window's end return its summary (and start the next window)."""
        self.elbos[self.k], self.grads[self.k] = elbo, grad_x
        self.phi_sum += phi
        self.k += 1
        if self.k < self.W:
            return None
        mean, se = _batch_means(self.elbos)
        g_mean, g_se = _batch_means(self.grads)
        window = Window(mean, se, g_mean, g_se, self.phi_sum / self.W)
        self.k, self.phi_sum = 0, np.zeros(self.family.size)
        return window

    def drifting(self, w: Window) -> bool:
        return bool(np.any(np.abs(w.grad) > self.z_drift * np.maximum(w.grad_se, 1e-300)))

    def gradient_test(self, w: Window) -> Verdict | None:
        """Test 1: the window's average within ``tolerance`` sds of the optimum."""
        if self.drifting(w) or self.prev is None:
            return None
        bound = float(np.max((np.abs(w.grad) + 2.0 * w.grad_se) / self.curvature))
        if bound >= self.tolerance:
            return None
        self.last_distance = bound
        return Verdict("converged", w.avg, (
            f"converged: the mean ELBO gradient over the last {self.W} steps is zero within its "
            f"Monte Carlo error and places q within {bound:.3g} posterior sd of its family's "
            f"optimum (tolerance {self.tolerance:g})"))

    def level_test(self, w: Window) -> Verdict:
        """Test 2: a stationary level's estimate against the previous level's."""
        prev, self.prev = self.prev, w
        if prev is None:
            return Verdict("first" if self.level_estimate is None else "continue")
        if w.elbo - prev.elbo > 2.0 * np.hypot(w.elbo_se, prev.elbo_se) or self.drifting(w):
            return Verdict("continue")
        estimate = 0.5 * (w.avg + prev.avg)
        self.levels += 1
        if self.level_estimate is not None:
            self.last_distance = self.family.distance(estimate, self.level_estimate)
            if self.last_distance < self.tolerance:
                return Verdict("converged", estimate, (
                    f"converged: iterate averages at successive step sizes agree to "
                    f"{self.last_distance:.3g} posterior sd (tolerance {self.tolerance:g})"))
        self.decays += 1
        if self.decays > MAX_DECAYS:
            return Verdict("exhausted")
        if self.growth > 1:
            self.W *= self.growth
            self.forget_window()
        self.level_estimate, self.prev = estimate, None
        return Verdict("level", estimate)

    def best_estimate(self, phi: np.ndarray) -> np.ndarray:
        """The answer of a fit that did not converge: the last window's average, else the last
        level's estimate, else the current iterate."""
        if self.prev is not None:
            return self.prev.avg
        return self.level_estimate if self.level_estimate is not None else phi

    def why_not(self, reason: str, max_steps: int, step: int) -> str:
        """Why a fit that ended without a "converged" verdict did not converge."""
        if self.last_distance is None:
            by = "no stationary phase was reached"
        else:
            by = (f"the last change between averaged iterates was {self.last_distance:.3g} "
                  f"posterior sd (tolerance {self.tolerance:g})")
        if reason == "exhausted":
            return (f"did not converge: the step size shrank 2^{MAX_DECAYS}-fold by step {step}; "
                    f"{by}; a tolerance this small cannot be met, raise inference.tolerance")
        return (f"did not converge: reached max_steps={max_steps}; {by}; raise "
                "inference.max_steps")


class Optimiser:
    """The state of a fit and its step: scaled Newton steps on the ELBO in whitened coordinates
    x, from the Laplace start, with the quadratic control variate when the fit uses it."""

    def __init__(self, model, family, icfg, rng: np.random.Generator, laplace,
                 log_joint_grad=None):
        self.model, self.family, self.icfg, self.rng = model, family, icfg, rng
        self.log_joint_grad = log_joint_grad or model.log_joint_grad
        self.to_x, self.to_phi, self.grad_x = whitened_coordinates(family, laplace)
        self.guard = RunawayGuard(model, family, initial_phi(family, laplace), laplace, rng)
        self.phi = self.guard.phi0
        self.x = self.to_x(self.phi)
        self.snapshot = self.x.copy()  # the state at the last clean window's end
        self.good_phi = self.phi.copy()  # where a fit that ran away goes back to
        # Quadratic control variate: C, the log joint's curvature at q's mean m_C, recomputed at
        # a window's end once the mean has moved QCV_REFRESH_SD posterior sds from m_C (a fixed
        # C within a window keeps each step's estimate unbiased; near the optimum C stays put,
        # which spares a pass over the rows per window).
        self.C = self.m_C = None
        self.passes_before = model.curvature_passes  # the fit's own passes: the count minus this
        if uses_quadratic_cv(model, icfg):
            self.m_C = family.mean(self.phi)
            self.C = _curvature(model, self.m_C)
        rates = step_rates(family, icfg.samples, icfg.learning_rate) / family.frame_curvature()
        self.sgd = ScaledSGD(family.size, rates, MAX_MOVE)
        self.nominal_lr = self.sgd.lr.copy()  # the level's rate; sgd.lr is below after a backoff
        self.backoffs = self.failures = self.restarts = 0

    def step(self) -> tuple[float, np.ndarray] | None:
        """One step: (ELBO of the draws, gradient in x), or None if it was not finite and was
        undone (back to the snapshot, a tenth of the rate)."""
        eps = self.rng.standard_normal((self.icfg.samples, self.model.n_params))
        elbo, grad = self._elbo_grad(eps)
        if not (np.isfinite(elbo) and np.all(np.isfinite(grad))):
            self._undo()
            return None
        grad = self.grad_x(grad)
        with np.errstate(**QUIET):
            self.x = self.sgd.step(self.x, grad)
            self.phi = self.to_phi(self.x)
        return elbo + self.model.log_det_T, grad

    def _elbo_grad(self, eps: np.ndarray) -> tuple[float, np.ndarray | None]:
        family, phi, C = self.family, self.phi, self.C
        with np.errstate(**QUIET):
            try:
                U = family.sample(phi, eps)
                logp, g = self.log_joint_grad(U)
                if C is not None:  # g_s + C (u_s - m) has the same mean, far less noise near q
                    g = g + (U - family.mean(phi)) @ C
                elbo, grad = family.elbo_grad(phi, eps, logp, g, self.icfg.estimator)
                if C is not None:
                    grad = grad - family.quadratic_cv_mean(phi, C)
                return elbo, grad
            except np.linalg.LinAlgError:  # a scale of q underflowed to 0: a non-finite step
                return float("nan"), None

    def _undo(self) -> None:
        self.backoffs += 1
        self.failures += 1
        if self.failures > MAX_CONSECUTIVE_BACKOFFS:
            raise FitError(
                f"the ELBO became non-finite even after shrinking the step size "
                f"{self.failures - 1} times: the posterior may be improper (e.g. a flat prior with "
                "separated classes or too few rows); use proper priors such as "
                "'normal(0, 10)' or a smaller inference.learning_rate")
        self.x = self.snapshot.copy()
        self.phi = self.to_phi(self.x)
        self.sgd.lr *= NAN_BACKOFF

    def restart(self) -> bool:
        """Back to the last good state with a quarter of the rate; False after MAX_RESTARTS."""
        self.restarts += 1
        if self.restarts > MAX_RESTARTS:
            return False
        self.x = self.to_x(self.good_phi)
        self.phi = self.to_phi(self.x)
        self.snapshot = self.x.copy()
        self.nominal_lr *= RESTART_LR
        self.sgd.lr = self.nominal_lr.copy()
        return True

    def clean_window(self, avg: np.ndarray) -> None:
        """At the end of a window that did not run away: refresh the control variate's C if q's
        mean has moved, keep the state as the snapshot, let the rate recover from backoffs."""
        if self.C is not None:
            sd = np.sqrt(np.diag(self.family.mean_cov(avg)[1]))
            if np.max(np.abs(self.family.mean(avg) - self.m_C) / sd) > QCV_REFRESH_SD:
                self.m_C = self.family.mean(avg)
                self.C = _curvature(self.model, self.m_C)
        self.failures = 0
        self.snapshot = self.x.copy()
        self.sgd.lr = np.minimum(self.sgd.lr * 2.0, self.nominal_lr)

    def scale_rate(self, factor: float) -> None:
        """A new level (LR_DECAY) or the settling after the first window (SETTLE)."""
        self.nominal_lr *= factor
        self.sgd.lr = np.minimum(self.sgd.lr, self.nominal_lr)

    @property
    def curvature_passes(self) -> int:
        return self.model.curvature_passes - self.passes_before


def optimise(model, family, icfg, rng: np.random.Generator, laplace,
             log_joint_grad=None, window_growth: int = 1) -> Iterator[Progress | Outcome]:
    """Maximise the ELBO from the Laplace approximation ``laplace`` (``laplace.find_mode``);
    yields a ``Progress`` per step and finally one ``Outcome``.

    ``log_joint_grad`` estimates (log p, grad) for draws U; by default the exact full-data sums
    (``model.log_joint_grad``), or unbiased minibatch estimates (``minibatch.MinibatchLogJoint``).
    ``window_growth`` multiplies the window length at every new level: with 2, each level's step
    size times its length stays constant, so the steps sum to infinity while their squares do
    not (the Robbins-Monro conditions, a_t ~ 1/t), which estimates with noise far above the
    posterior sd need (plain minibatch VI); the default 1 keeps windows fixed.

    Floating-point warnings are silenced inside a step (``QUIET``): every step's ELBO and
    gradient are checked for finiteness explicitly, and a non-finite step is undone.
    """
    opt = Optimiser(model, family, icfg, rng, laplace, log_joint_grad)
    rule = StoppingRule(family, icfg.window, icfg.tolerance, window_growth)
    trace = np.full(icfg.max_steps, np.nan)
    smooth, verdict, runaway = np.nan, Verdict("continue"), None
    step = 0
    for step in range(1, icfg.max_steps + 1):
        taken = opt.step()
        if taken is None:
            rule.forget_window()
            rule.prev = None
            continue
        elbo, grad = taken
        trace[step - 1] = elbo
        smooth = elbo if np.isnan(smooth) else ELBO_SMOOTHING * smooth + (1 - ELBO_SMOOTHING) * elbo
        yield Progress(step, elbo, smooth, icfg.max_steps)
        window = rule.add(elbo, grad, opt.phi)
        if window is None:
            continue
        runaway = opt.guard.why(window.avg, window.elbo)
        if runaway is not None:
            if not opt.restart():
                break
            rule.prev, runaway = None, None
            continue
        verdict = rule.gradient_test(window)
        if verdict is not None:
            break
        opt.clean_window(window.avg)
        verdict = rule.level_test(window)
        if verdict.kind in ("converged", "exhausted"):
            break
        if verdict.kind == "level":
            opt.scale_rate(LR_DECAY)
            opt.good_phi = verdict.estimate.copy()
        elif verdict.kind == "first":
            # The first window brought q to its optimum; the next average with shorter steps,
            # whose jitter (and the bias it brings where the ELBO is not quadratic) is smaller.
            opt.scale_rate(SETTLE)
    yield _outcome(opt, rule, verdict, runaway, step, trace, icfg)


def _outcome(opt: Optimiser, rule: StoppingRule, verdict: Verdict, runaway: str | None,
             step: int, trace: np.ndarray, icfg) -> Outcome:
    converged = runaway is None and verdict.kind == "converged"
    if runaway is not None:
        phi = opt.good_phi
        reason = (f"did not converge: the fit ran away ({runaway}) {MAX_RESTARTS + 1} times, "
                  f"even with the step size cut to {RESTART_LR ** MAX_RESTARTS:g} of the level's; "
                  "the results are from the last good state; look for an improper or nearly "
                  "improper posterior, or lower inference.learning_rate")
    elif converged:
        phi, reason = verdict.estimate, verdict.reason
    else:
        phi = rule.best_estimate(opt.phi)
        reason = rule.why_not(verdict.kind, icfg.max_steps, step)
    return Outcome(phi=phi, steps=step, converged=converged, reason=reason,
                   elbo_trace=trace[:step].copy(), last_distance=rule.last_distance,
                   levels=rule.levels, backoffs=opt.backoffs,
                   curvature_passes=opt.curvature_passes, restarts=opt.restarts,
                   guard_passes=opt.guard.passes)


def step_rates(family, samples: int, rate: float) -> np.ndarray:
    """The rate of each coordinate's scaled Newton steps: ``rate`` (inference.learning_rate) for
    the means, and for the scales (log s, or lambda and B) at most samples / P (the structured
    family: samples / its ``scale_dims()``, per scale parameter). The gradient
    of the scale factor carries noise in proportion to how far q's covariance is from the
    posterior's, summed over its P^2 / 2 entries, so larger steps feed on their own jitter: measured on a
    100,000 x 50 logistic fit with 2 draws per step and rate 0.5 for every coordinate, the
    covariance blew up within the first window and the fit never settled."""
    rates = np.full(family.size, rate)
    dims = family.scale_dims() if hasattr(family, "scale_dims") else family.P
    rates[family.P:] = np.minimum(rate, samples / dims)
    return rates


def draws_per_step(model, icfg) -> int:
    """Monte Carlo draws per step: as configured, or for "auto" QCV_SAMPLES when the fit uses the
    quadratic control variate (which leaves little noise for more draws to average out), else
    ``whitened_samples`` of the rows a step reads. With the control variate, 1 draw per step
    raised some mean-field errors over the 38 reference posteriors (kidiq-kidscore_momiq, 434
    rows: 0.016 -> 0.028 sd), so it takes 2."""
    if icfg.samples != "auto":
        return icfg.samples
    if uses_quadratic_cv(model, icfg):
        return QCV_SAMPLES
    rows = model.n_rows if icfg.batch_size is None else min(icfg.batch_size, model.n_rows)
    return whitened_samples(rows, model.n_params)


def whitened_samples(rows: int, n_params: int) -> int:
    """Draws per step without the quadratic control variate: the largest power of two from
    MIN_SAMPLES to MAX_SAMPLES for which a step's kernel work, rows x parameters x draws, stays
    under STEP_WORK. Scaled Newton steps settle as fast as the gradient noise lets them, and on
    small data more draws cost almost nothing: the NIST StRD problems (11-82 rows) took 100-400
    steps with 128 draws and 100 with 512, all means within 0.004 posterior sd. On big data the
    posterior is close to Gaussian and the Laplace start close to q's optimum, so few draws do:
    a 100,000 x 50 full-rank logistic fit with 2 draws was within 0.002 posterior sd and 0.2% in
    sd of a tight reference, like one with 8, at half the time per step."""
    budget = STEP_WORK // max(rows * n_params, 1)
    samples = MIN_SAMPLES
    while samples * 2 <= min(budget, MAX_SAMPLES):
        samples *= 2
    return samples


def uses_quadratic_cv(model, icfg) -> bool:
    """Whether a fit uses the quadratic control variate: as configured, or for "auto" with the
    reparam estimator (mean-field's default) when there are at least QCV_AUTO_ROWS_PER_PARAM rows
    per parameter and, with minibatches, its curvature passes cost less than the steps they
    serve. Measured over the 38 reference posteriors: with mean-field, the fits it changed most
    for the worse had few rows per parameter (mesquite: 46 rows, 8 parameters), where the
    posterior is least Gaussian and the curvature at the mean says least about the curvature at
    a draw; with full-rank, stl (its default) already cancels the same noise (reparam with the
    control variate measured the same steps and errors), and adding it to stl put the noise back
    (2,000 steps instead of 600)."""
    if getattr(model, "groups", None) is not None:  # its C would be dense over every group
        return False
    if icfg.quadratic_cv != "auto":
        return bool(icfg.quadratic_cv)
    if icfg.estimator != "reparam" or model.n_rows < QCV_AUTO_ROWS_PER_PARAM * model.n_params:
        return False
    # With minibatches a curvature pass (all N rows, D^2 work each) can cost more than
    # the window of steps it serves (window x batch rows, D (S + 1) work each): then it is off.
    # Measured: 10,000,000 x 50 with batch 100,000 took 1,400 steps and 32 s with it against
    # 2,400 steps and 21 s without; 100,000 x 50 with batch 10,000, 1.0 s against 1.9 s.
    minibatch = icfg.batch_size is not None and icfg.batch_size < model.n_rows
    if minibatch and model.likelihood.NAME != "gaussian":  # (gaussian: from the Gram matrix)
        samples = QCV_SAMPLES if icfg.samples == "auto" else icfg.samples
        return (model.n_rows * model.n_cov
                <= icfg.window * icfg.batch_size * (samples + 1))
    return True


def _curvature(model, m: np.ndarray) -> np.ndarray:
    """The control variate's C at the mean m; zeros (no control variate for that window) if it is
    not finite, e.g. at a log sigma far out while a fit recovers from a divergent step."""
    with np.errstate(**QUIET):
        C = model.curvature_at(m)
    return C if np.all(np.isfinite(C)) else np.zeros_like(C)


def initial_phi(family, laplace) -> np.ndarray:
    """Where a fit starts, from the Laplace approximation: a whitened full-rank q at z = 0, L = I
    (exactly the Laplace approximation), a mean-field q at the mode with sds 1/sqrt(diag H*)
    (the mean-field optimum for a Gaussian with that curvature)."""
    if family.whitened:
        return np.zeros(family.size)
    return family.init(laplace.meanfield_sd, mean=laplace.mode)


def whitened_coordinates(family, laplace):
    """Maps phi -> x (the optimiser's coordinates), x -> phi, and grad_phi -> grad_x: the means
    m = R x_m with R = I for a q in a whitened frame (isotropic already), and for a mean-field
    q W from the Laplace approximation (W^T H* W = I); the scale parameters as they are."""
    if family.whitened:  # q's frame is isotropic already: x is phi
        return np.copy, np.copy, np.copy
    sl = family.mean_slice
    R = laplace.frame[0]
    if hasattr(R, "apply"):  # a structured factor (models with group terms): never dense
        return _factor_coordinates(sl, R)
    R_inv = np.linalg.inv(R)

    def to_x(phi):
        x = phi.copy()
        x[sl] = R_inv @ phi[sl]
        return x

    def to_phi(x):
        phi = x.copy()
        phi[sl] = R @ x[sl]
        return phi

    def grad_x(grad):
        g = grad.copy()
        g[sl] = R.T @ grad[sl]
        return g

    return to_x, to_phi, grad_x


def _factor_coordinates(sl: slice, R):
    """``whitened_coordinates``' maps for a structured factor R (its apply, solve, apply_T)."""

    def to_x(phi):
        x = phi.copy()
        x[sl] = R.solve(phi[None, sl])[0]
        return x

    def to_phi(x):
        phi = x.copy()
        phi[sl] = R.apply(x[None, sl])[0]
        return phi

    def grad_x(grad):
        g = grad.copy()
        g[sl] = R.apply_T(grad[None, sl])[0]
        return g

    return to_x, to_phi, grad_x
