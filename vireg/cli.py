"""The ``vireg`` command line: thin Typer commands over the Python API.

Results go to standard output (``--out -``) or files; progress, tables and messages go to
standard error. Exit codes: 0 success, 1 the fit failed or did not converge (results are still
written, and marked), 2 bad input or usage, 130 interrupted. Heavy modules (NumPy, Numba) are
imported inside the commands so that ``vireg --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

import vireg

# vireg bench refuses sizes whose data would need more than BENCH_MAX_GIB: X, its standardised
# copy and NumPy's temporaries are about BENCH_COPIES_OF_X copies of X.
BENCH_COPIES_OF_X = 2.5
BENCH_MAX_GIB = 16

app = typer.Typer(
    help="Bayesian linear and logistic regression by variational inference.",
    add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
)


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        print(f"vireg {vireg.__version__}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Bayesian linear and logistic regression by variational inference."""


@app.command()
def fit(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    out: Annotated[str | None, typer.Option(
        "--out", help="Output folder, or '-' to print summary.csv to standard output and write "
                      "no files. Default: output.dir of the config, else runs/<config name>.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a config value, e.g. --set inference.samples=16 (repeatable).")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed (inference.seed).")] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="Threads for the data kernel (default: all cores).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")] = False,
) -> None:
    """Fit the model a config describes and write its variational posterior."""
    from vireg.errors import ViregError

    overrides = list(set_ or [])
    if seed is not None:
        overrides.append(f"inference.seed={seed}")
    if threads is not None:
        overrides.append(f"runtime.threads={threads}")
    try:
        code = _run_fit(config, out, overrides, quiet)
    except ViregError as exc:
        _fail(str(exc), exc.exit_code)
    except MemoryError:
        _fail("out of memory; no result files were written: for data larger than memory set "
              "runtime.out_of_core: true (and a smaller runtime.memory_mb), or use "
              "inference.dtype: float32", 1)
    except KeyboardInterrupt:
        print("error: interrupted; no result files were written (earlier results are intact)",
              file=sys.stderr)
        raise typer.Exit(130) from None
    raise typer.Exit(code)


def _run_fit(config_path: Path, out: str | None, overrides: list[str], quiet: bool) -> int:
    from vireg import api, export
    from vireg.config import load_config
    from vireg.render import FitDisplay

    cfg = load_config(config_path, overrides)
    out_dir = export.output_dir(out, cfg, config_path)
    if out_dir is not None:
        export.check_output_dir(out_dir)
        if cfg.output.arviz:
            from vireg.workflow.inference_data import check_config

            check_config(cfg)
    display = FitDisplay(enabled=not quiet)
    result = _fit_with_display(cfg, display)
    if out_dir is None:
        sys.stdout.write(export.summary_csv(result))
        sys.stdout.flush()
    else:
        export.write_results(result, out_dir, api.versions())
    display.finish(result, out_dir)
    for line in result.warnings():
        print(line, file=sys.stderr)
    return 0 if result.converged else 1


def _fit_with_display(cfg, display):
    """Run the fit, showing its events; Ctrl-C between steps ends it with exit code 130."""
    from vireg import api
    from vireg.engine import Progress

    result = None
    step = 0
    try:
        with _InterruptBetweenSteps() as interrupt:
            for event in api.iter_fit(cfg):
                if isinstance(event, Progress):
                    step = event.step
                    display.progress(event)
                elif isinstance(event, api.Diagnosing):
                    display.diagnosing(event)
                elif isinstance(event, api.Preparing):
                    display.preparing(event)
                elif isinstance(event, api.Started):
                    display.start(event)
                elif isinstance(event, api.Finished):
                    result = event.result
                if interrupt.requested:
                    raise KeyboardInterrupt
    except (KeyboardInterrupt, SystemError) as exc:
        # A second Ctrl-C inside a Numba kernel surfaces as a SystemError caused by it.
        if isinstance(exc, SystemError) and not isinstance(exc.__cause__, KeyboardInterrupt):
            raise
        display.stop()
        print(f"error: interrupted at step {step}; no result files were written (earlier results "
              "are intact)", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        display.stop()
    return result


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="Folder of a run (vireg fit --out DIR).")],
    data: Annotated[Path, typer.Argument(help="CSV or Parquet file of new rows ('-': stdin).")],
    draws: Annotated[int, typer.Option("--draws", help="Posterior draws per row.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    out: Annotated[str, typer.Option("--out", help="CSV file to write, or '-'.")] = "-",
    no_group_effects: Annotated[bool, typer.Option(
        "--no-group-effects", help="Population-level predictions: leave out the group "
        "effects of a model with group terms.")] = False,
) -> None:
    """Posterior predictive for new rows: linear predictor and response scale, per row. With
    group terms, a level the fit saw gets its fitted effects, a new one draws from the fitted
    population."""
    from vireg.errors import ViregError

    try:
        if draws < 10:
            _fail(f"--draws must be at least 10, got {draws}", 2)
        if not out.strip():
            _fail("--out needs a file name, or '-' for standard output", 2)
        from vireg import export
        from vireg.predict import predict as run_predict
        from vireg.predict import predictions_csv

        notes: list[str] = []
        text = predictions_csv(run_predict(run_dir, data, draws, seed,
                                           not no_group_effects, notes))
        for note in notes:
            print(note, file=sys.stderr)
        if out == "-":
            sys.stdout.write(text)
        else:
            target = Path(out)
            export.check_output_dir(target.parent if str(target.parent) else Path("."))
            export.write_atomically(target.parent, {target.name: text})
            print(f"wrote {target}", file=sys.stderr)
    except ViregError as exc:
        _fail(str(exc), exc.exit_code)


@app.command()
def init(
    data: Annotated[Path | None, typer.Option("--data", help="CSV or Parquet file to describe.")
                    ] = None,
    response: Annotated[str | None, typer.Option("--response", help="Response column.")] = None,
    family: Annotated[str | None, typer.Option(
        "--family", help="gaussian or bernoulli (default: guessed from the response).")] = None,
    out: Annotated[str, typer.Option("--out", help="Config file to write, or '-'.")] = "vireg.yaml",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter config, guessing the family and columns from --data."""
    from vireg.config import FAMILY_ALIASES
    from vireg.errors import ViregError

    try:
        if family is not None and family not in FAMILY_ALIASES:
            _fail(f"--family '{family}' is not known: use gaussian or bernoulli", 2)
        if not out.strip():
            _fail("--out needs a file name, or '-' for standard output", 2)
        from vireg.starter import starter_config, write_starter

        target = Path("vireg.yaml") if out == "-" else Path(out)
        text = starter_config(data, response,
                              FAMILY_ALIASES[family] if family else None, target)
        if out == "-":
            sys.stdout.write(text)
        else:
            write_starter(text, target, force)
            print(f"wrote {target}; check it with: vireg check {target}", file=sys.stderr)
    except ViregError as exc:
        _fail(str(exc), exc.exit_code)


@app.command()
def check(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config value.")
                    ] = None,
) -> None:
    """Validate a config and its data without fitting: print the resolved config, the columns
    and the priors, or the first problem (exit 2)."""
    from vireg.errors import ViregError

    try:
        from vireg import api
        from vireg.render import check_report

        report = api.check(config, overrides=list(set_ or []))
    except ViregError as exc:
        _fail(str(exc), exc.exit_code)
    check_report(report)


@app.command()
def gradvar(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    at: Annotated[str, typer.Option(
        "--at", help="Where to measure: zero (m = 0, small sds: away from the posterior, where "
                     "plain ADVI starts), init (where a vireg fit starts: the Laplace "
                     "approximation), fit (after fitting), or the folder of an earlier run.")
    ] = "zero",
    draws: Annotated[int, typer.Option("--draws", help="Single-draw gradients per estimator.")
                     ] = 1000,
    fits: Annotated[bool, typer.Option(
        "--fits", help="Also run fits with each estimator from the same start and budget.")
    ] = False,
    steps: Annotated[int, typer.Option("--steps", help="Step budget of each --fits fit.")] = 2000,
    out: Annotated[str | None, typer.Option(
        "--out", help="Folder for gradvar.csv and gradvar.json, or '-' to print gradvar.csv.")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config value.")
                    ] = None,
) -> None:
    """Compare the variance of the reparameterization, STL and score-function gradients."""
    from vireg.errors import ViregError

    try:
        if draws < 10:
            _fail(f"--draws must be at least 10, got {draws}", 2)
        if steps < 1:
            _fail(f"--steps must be at least 1, got {steps}", 2)
        if out is not None and not out.strip():
            _fail("--out needs a folder name, or '-' for standard output", 2)
        from vireg import api, export
        from vireg.render import gradvar_tables

        if out not in (None, "-"):
            export.check_output_dir(Path(out))
        study = api.gradvar(config, at=at, draws=draws, fits=fits, fit_steps=steps,
                            overrides=list(set_ or []))
        gradvar_tables(study)
        if out == "-":
            sys.stdout.write(export.gradvar_csv(study))
        elif out is not None:
            export.write_atomically(Path(out), {"gradvar.csv": export.gradvar_csv(study),
                                           "gradvar.json": export.gradvar_json(study,
                                                                               api.versions())})
    except ViregError as exc:
        _fail(str(exc), exc.exit_code)


@app.command()
def plot(
    run_dir: Annotated[Path, typer.Argument(help="Folder of a run (vireg fit --out DIR).")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="Image file (.png, .svg or .pdf). Default: RUN_DIR/fit.png.")] = None,
) -> None:
    """Draw the ELBO trace, a forest plot and (if present) the gradient-variance comparison."""
    from vireg.errors import ViregError
    from vireg.plot import plot_run

    try:
        path = plot_run(run_dir, out or run_dir / "fit.png")
    except ViregError as exc:
        _fail(str(exc), exc.exit_code)
    print(f"wrote {path}", file=sys.stderr)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="Folder of a run (vireg fit --out DIR).")],
    to: Annotated[str, typer.Option("--to", help="Format: netcdf (ArviZ InferenceData).")
                  ] = "netcdf",
    out: Annotated[Path | None, typer.Option(
        "--out", help="File to write (.nc). Default: RUN_DIR/posterior.nc.")] = None,
    log_likelihood: Annotated[str | None, typer.Option(
        "--log-likelihood", help="true, false or auto (default: the run's "
                                 "output.log_likelihood).")] = None,
) -> None:
    """Write an earlier run as ArviZ InferenceData (needs the arviz extra)."""
    from vireg.errors import ViregError

    try:
        if to != "netcdf":
            _fail(f"--to '{to}' is not known: use netcdf", 2)
        choices = {"true": True, "false": False, "auto": "auto", None: None}
        if log_likelihood not in choices:
            _fail(f"--log-likelihood '{log_likelihood}' is not known: use true, false or auto", 2)
        from vireg.workflow.inference_data import export_run

        path = export_run(run_dir, out, choices[log_likelihood])
    except ViregError as exc:
        _fail(str(exc), exc.exit_code)
    print(f"wrote {path}", file=sys.stderr)


@app.command()
def loo(
    run_dir: Annotated[Path, typer.Argument(help="Folder of a run (vireg fit --out DIR).")],
    subsample: Annotated[int | None, typer.Option(
        "--subsample", help="Estimate from this many observations (difference estimator).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the subsample.")] = 0,
    uncorrected: Annotated[bool, typer.Option(
        "--uncorrected", help="Take q's draws as posterior draws (no p/q correction).")] = False,
    out: Annotated[str | None, typer.Option(
        "--out", help="CSV file of the estimates, or '-' for standard output.")] = None,
    pointwise: Annotated[str | None, typer.Option(
        "--pointwise", help="CSV file of per-observation elpd, p_loo and Pareto k, or '-'.")
    ] = None,
) -> None:
    """PSIS-LOO of a run (draws from q corrected by p/q): elpd_loo, se, p_loo, Pareto k."""
    from vireg.errors import ViregError

    try:
        for name, value in (("--out", out), ("--pointwise", pointwise)):
            if value is not None and not value.strip():
                _fail(f"{name} needs a file name, or '-' for standard output", 2)
        from vireg.workflow.loo import loo as run_loo
        from vireg.workflow.loo import loo_csv, pointwise_csv
        from vireg.workflow.report import loo_table

        result = run_loo(run_dir, subsample, seed, correct=not uncorrected)
        loo_table(result)
        _emit(out, loo_csv([result]))
        _emit(pointwise, pointwise_csv(result))
    except ViregError as exc:
        _fail(str(exc), exc.exit_code)


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Two or more run folders.")],
    method: Annotated[str, typer.Option(
        "--method", help="Weights: stacking or pseudo-bma+.")] = "stacking",
    seed: Annotated[int, typer.Option("--seed", help="Seed of pseudo-bma+'s bootstrap.")] = 0,
    uncorrected: Annotated[bool, typer.Option(
        "--uncorrected", help="Take q's draws as posterior draws (no p/q correction).")] = False,
    out: Annotated[str | None, typer.Option(
        "--out", help="CSV file of the table, or '-' for standard output.")] = None,
) -> None:
    """Compare runs fitted to the same rows by PSIS-LOO: elpd_diff, se_diff and weights."""
    from vireg.errors import ViregError

    try:
        if out is not None and not out.strip():
            _fail("--out needs a file name, or '-' for standard output", 2)
        from vireg.workflow.compare import compare as run_compare
        from vireg.workflow.compare import compare_csv
        from vireg.workflow.report import compare_table

        rows, _ = run_compare(run_dirs, method, seed, correct=not uncorrected)
        compare_table(rows, method)
        _emit(out, compare_csv(rows))
    except ViregError as exc:
        _fail(str(exc), exc.exit_code)


@app.command()
def ppc(
    run_dir: Annotated[Path, typer.Argument(help="Folder of a run (vireg fit --out DIR).")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="Image file (.png, .svg or .pdf). Default: RUN_DIR/ppc.png.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the replicated data.")] = 0,
) -> None:
    """Posterior predictive check: a picture, and test statistics as CSV (plot extra)."""
    from vireg.errors import ViregError

    try:
        from vireg.workflow.ppc import plot_ppc, ppc_csv
        from vireg.workflow.ppc import ppc as run_ppc

        target = out or run_dir / "ppc.png"
        if target.suffix.lower() not in (".png", ".svg", ".pdf"):
            _fail(f"--out '{target}' must end in .png, .svg or .pdf", 2)
        result = run_ppc(run_dir, seed)
        path = plot_ppc(result, target)
        sys.stdout.write(ppc_csv(result))
    except ViregError as exc:
        _fail(str(exc), exc.exit_code)
    print(f"wrote {path}", file=sys.stderr)


def _emit(out: str | None, text: str) -> None:
    """Write a command's CSV to standard output ('-'), a file, or nowhere (None)."""
    if out is None:
        return
    if out == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from vireg import export

    target = Path(out)
    export.check_output_dir(target.parent if str(target.parent) else Path("."))
    export.write_atomically(target.parent if str(target.parent) else Path("."),
                            {target.name: text})
    print(f"wrote {target}", file=sys.stderr)


@app.command()
def bench(
    model: Annotated[str, typer.Option(
        "--model", help="logistic, linear, binomial, poisson, negative_binomial, student_t or "
        "probit.")] = "logistic",
    family: Annotated[str, typer.Option("--family", help="meanfield or fullrank.")] = "meanfield",
    n: Annotated[int, typer.Option("--n", help="Rows of synthetic data.")] = 100_000,
    d: Annotated[int, typer.Option("--d", help="Covariates.")] = 50,
    samples: Annotated[int, typer.Option("--samples", help="Monte Carlo draws per step.")] = 8,
    dtype: Annotated[str, typer.Option("--dtype", help="float64 or float32 data.")] = "float64",
    threads: Annotated[int | None, typer.Option("--threads", help="Threads (default all).")] = None,
    steps: Annotated[int, typer.Option("--steps", help="Steps to time (median).")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Measure gradient-step throughput on synthetic data against NumPy and memory bandwidth."""
    from vireg.bench import BENCH_MODELS

    if model not in BENCH_MODELS:
        _fail(f"--model '{model}' is not known: use one of {', '.join(BENCH_MODELS)}", 2)
    if family not in ("meanfield", "fullrank"):
        _fail(f"--family '{family}' is not known: use meanfield or fullrank", 2)
    if dtype not in ("float64", "float32"):
        _fail(f"--dtype '{dtype}' is not known: use float64 or float32", 2)
    for name, value in (("--n", n), ("--d", d), ("--samples", samples), ("--steps", steps)):
        if value < 1:
            _fail(f"{name} must be at least 1, got {value}", 2)
    if threads is not None and threads < 1:
        _fail(f"--threads must be at least 1, got {threads}", 2)
    gib = n * d * 8 * BENCH_COPIES_OF_X / 2**30
    if gib > BENCH_MAX_GIB:
        _fail(f"--n {n} --d {d} needs about {gib:.0f} GiB of memory: choose smaller sizes", 2)
    from vireg.bench import run_bench

    result = run_bench(model, family, n, d, samples, threads, steps, dtype)
    if as_json:
        import json

        print(json.dumps(result))
        return
    from vireg.render import bench_table

    bench_table(result)


class _InterruptBetweenSteps:
    """Ctrl-C during a fit sets a flag that the event loop checks after every step, so the
    interrupt never lands inside a Numba kernel (where it would surface as a SystemError with a
    traceback). A second Ctrl-C interrupts at once."""

    def __enter__(self):
        import signal

        self.requested = False
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        import signal

        signal.signal(signal.SIGINT, self._previous)
        return False


def main() -> None:
    app()


if __name__ == "__main__":
    main()
