"""Rich rendering of a fit on standard error: a progress bar while it runs, a table at the end."""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

SPARK = "▁▂▃▄▅▆▇█"
REFRESH_SECONDS = 0.1


def sparkline(values, width: int = 40) -> str:
    import numpy as np

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return ""
    # Skip the first tenth so the rise from the start does not flatten the rest of the trace.
    v = v[v.size // 10:] if v.size >= 20 else v
    chunks = np.array_split(v, min(width, v.size))
    means = np.array([c.mean() for c in chunks])
    lo, hi = means.min(), means.max()
    if hi <= lo:
        return SPARK[0] * len(means)
    idx = ((means - lo) / (hi - lo) * (len(SPARK) - 1)).round().astype(int)
    return "".join(SPARK[i] for i in idx)


class FitDisplay:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.console = Console(stderr=True)
        self._bar: Progress | None = None
        self._task = None
        self._draws_task = None
        self._status = None
        self._last = 0.0
        self._t0 = 0.0

    def preparing(self, event) -> None:
        """A spinner naming the phase before the first step (reading, compiling); on a terminal
        only (in a log it would say nothing)."""
        if not (self.enabled and self.console.is_terminal):
            return
        if self._status is None:
            self._status = self.console.status(event.phase)
            self._status.start()
        else:
            self._status.update(event.phase)

    def start(self, started) -> None:
        if not self.enabled:
            return
        if self._status is not None:
            self._status.stop()
            self._status = None
        if started.dropped_rows:
            self.console.print(f"left out {started.dropped_rows} row(s) with missing values "
                               "(data.missing: drop)")
        self.console.print(f"[dim]{started.n_rows} rows, {started.n_params} parameters, "
                           f"{started.threads} thread(s); kernels ready in "
                           f"{started.compile_seconds:.2f} s[/dim]")
        self._bar = Progress(
            TextColumn("step {task.completed:>6.0f}"),
            BarColumn(),
            TextColumn("ELBO {task.fields[elbo]}"),
            TextColumn("{task.fields[rate]} steps/s"),
            TextColumn("at most"),
            TimeRemainingColumn(),
            console=self.console, transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task("fit", total=started.max_steps, elbo="-", rate="-")
        self._t0 = time.perf_counter()

    def progress(self, event) -> None:
        if self._bar is None:
            return
        now = time.perf_counter()
        if now - self._last < REFRESH_SECONDS:
            return
        self._last = now
        rate = event.step / max(now - self._t0, 1e-9)
        self._bar.update(self._task, completed=event.step, elbo=f"{event.elbo_smooth:,.2f}",
                         rate=f"{rate:,.0f}")

    def diagnosing(self, event) -> None:
        """After the optimisation: a bar for the draws whose log joint is evaluated over all rows
        (the ELBO, k-hat and output draws), which take a while on big data; on a terminal only."""
        if not (self.enabled and self.console.is_terminal):
            return
        if self._task is not None:  # the fit's bar gives way to this one
            self.stop()
            self._task = None
            self._bar = Progress(
                TextColumn("ELBO and k-hat draws {task.completed:>5.0f}/{task.total:.0f}"),
                BarColumn(), TimeRemainingColumn(), console=self.console, transient=True)
            self._bar.start()
            self._draws_task = self._bar.add_task("draws", total=event.total)
            self._last = 0.0
        now = time.perf_counter()
        if self._bar is None or (now - self._last < REFRESH_SECONDS and event.done < event.total):
            return
        self._last = now
        self._bar.update(self._draws_task, completed=event.done)

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def finish(self, result, out_dir) -> None:
        if not self.enabled:
            return
        title = ("posterior (variational, natural scale)" if result.summary_method == "q" else
                 "posterior (Pareto-smoothed importance-weighted draws from q, natural scale)")
        table = Table(title=title, title_justify="left")
        for col in ("parameter", "mean", "sd", "q5", "q50", "q95"):
            table.add_column(col, justify="left" if col == "parameter" else "right")
        for row in result.summary_rows():
            table.add_row(escape(row["parameter"]), *(f"{row[c]:.4g}" for c in
                                              ("mean", "sd", "q5", "q50", "q95")))
        self.console.print(table)
        style = "green" if result.converged else "yellow"
        self.console.print(f"[{style}]{result.reason}[/{style}]")
        self.console.print(f"ELBO {result.elbo:,.2f} ± {result.elbo_se:.2f}  "
                           f"{sparkline(result.elbo_trace)}  {result.steps} steps in "
                           f"{result.fit_seconds:.2f} s (+{result.compile_seconds:.2f} s compile)")
        if result.khat is not None:
            from vireg.diagnostics import KHAT_BAD, KHAT_GOOD, khat_message

            if result.khat <= KHAT_BAD:  # above, the CLI prints the warning itself
                style = "green" if result.khat <= KHAT_GOOD else "yellow"
                message = khat_message(result.khat, family=result.config.inference.family)
                self.console.print(f"[{style}]{message}[/{style}]")
            self.console.print(f"[dim]importance ESS {100 * (result.psis_ess or 0):.0f}% of "
                               f"{result.config.output.psis_draws} draws; sd of log p/q "
                               f"{result.log_ratio_sd:.2g}[/dim]")
        if result.summary_original is not None:
            self.console.print("[dim]coefficients above are per sd of each covariate "
                               "(data.standardize); summary_original.csv has them per unit as "
                               "given[/dim]")
        if out_dir is not None:
            groups = ", groups.csv" if result.group_rows is not None else ""
            self.console.print(escape(f"results in {out_dir}/ (summary.csv{groups}, draws.csv, "
                                      "elbo.csv, fit.json)"))


def _maybe(value: float | None, fmt: str) -> str:
    """A figure, or "-" where there is none (no NumPy step for the probit link)."""
    return "-" if value is None else fmt.format(value)


def bench_table(r: dict) -> None:
    console = Console()
    table = Table(title=(f"{r['model']} {r['family']} ({r['estimator']}), N={r['n']:,} D={r['d']} "
                         f"S={r['samples']}, {r['dtype']}, {r['threads']} thread(s)"),
                  title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("vireg ms per step (median)", f"{r['ms_per_step']:.2f}"),
        ("NumPy ms per step (median)", _maybe(r["numpy_ms_per_step"], "{:.2f}")),
        ("speed-up vs NumPy", _maybe(r["speedup_vs_numpy"], "{:.1f}x")),
        ("read bandwidth GB/s", f"{r['bandwidth_gb_s']:.1f}"),
        ("roofline ms per step (one read of X)", f"{r['roofline_ms_per_step']:.2f}"),
        ("efficiency (roofline / step)", f"{r['efficiency']:.2f}"),
        ("float64 matmul GFLOP/s (NumPy BLAS)", f"{r['matmul_gflop_s']:.0f}"),
        ("compute roofline ms (4 N S D flops at that rate)",
         f"{r['compute_roofline_ms_per_step']:.2f}"),
        ("compute efficiency (compute roofline / step)", f"{r['compute_efficiency']:.2f}"),
        ("bound by", r["bound"]),
        ("compile or cache load s", f"{r['compile_s']:.2f}"),
        ("kernel agrees with NumPy", {True: "yes", False: "NO", None: "-"}[
            r["kernel_matches_numpy"]]),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


def gradvar_tables(study: dict) -> None:
    console = Console(stderr=True)
    table = Table(title=(f"single-draw ELBO gradients at {study['at']} ({study['family']}, "
                         f"{study['draws']} draws each, common random numbers)"),
                  title_justify="left")
    for col in ("estimator", "trace of covariance", "ratio to reparam (draws to match one)",
                "squared bias (noise level)"):
        table.add_column(col, justify="left" if col == "estimator" else "right")
    for name, r in study["estimators"].items():
        table.add_row(name, f"{r['trace_cov']:.4g}", f"{r['ratio_to_reparam']:.3g}",
                      f"{r['sq_bias']:.3g} ({r['sq_bias_noise']:.3g})")
    console.print(table)
    console.print("[dim]squared bias: |mean - high-precision gradient|^2, to compare with its "
                  "Monte Carlo noise level in brackets (an unbiased estimator is within a few "
                  "times that)[/dim]")
    if study["fits"]:
        fits = Table(title="fits from the same start with the same step budget",
                     title_justify="left")
        for col in ("estimator", "ELBO", "steps", "converged", "seconds"):
            fits.add_column(col, justify="left" if col == "estimator" else "right")
        for f in study["fits"]:
            elbo = "diverged" if f["elbo"] is None else f"{f['elbo']:,.2f} ± {f['elbo_se']:.2f}"
            fits.add_row(f["estimator"], elbo, str(f["steps"] or "-"),
                         "yes" if f["converged"] else "no", f"{f['seconds']:.2f}")
        console.print(fits)


def check_report(report: dict) -> None:
    """The resolved config as YAML, then the columns and the priors, on standard output."""
    import yaml

    console = Console()
    console.print("# resolved config", markup=False)
    console.print(yaml.safe_dump(report["config"], sort_keys=False).rstrip(), markup=False,
                  highlight=False)
    table = Table(title=escape(f"{report['rows']:,} rows of {report['data']}"),
                  title_justify="left")
    for col in ("column", "role", "mean", "sd", "min", "max"):
        table.add_column(col, justify="left" if col in ("column", "role") else "right")
    for c in report["columns"]:
        table.add_row(escape(c["name"]), c["role"],
                      *(f"{c[k]:.4g}" for k in ("mean", "sd", "min", "max")))
    console.print(table)
    priors = Table(title="parameters and priors", title_justify="left")
    priors.add_column("parameter")
    priors.add_column("prior")
    for p in report["parameters"]:
        priors.add_row(escape(p["name"]), p["prior"])
    console.print(priors)
    if report["fixed_sigma"] is not None:
        console.print(f"sigma is fixed at {report['fixed_sigma']:g}")
    console.print("no problems found: the posterior of this model exists", style="green")
