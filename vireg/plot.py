"""``vireg plot``: a picture of a run (ELBO trace, forest plot, gradient-variance comparison).

matplotlib is an optional extra (``pip install 'vireg[plot]'``); it is imported only here.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from vireg.errors import InputError


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def plot_run(run_dir: Path, out: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("vireg plot needs matplotlib: pip install 'vireg[plot]'") from None
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise InputError(f"--out '{out}' must end in .png, .svg or .pdf")
    steps, values, rows, fit, gradvar = _read_run(run_dir)
    n_panels = 3 if gradvar else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(5.2 * n_panels, max(3.6, 0.35 * len(rows) + 1.5)))
    _elbo_panel(axes[0], steps, values, fit)
    _posterior_panel(axes[1], rows, fit)
    if gradvar:
        _gradvar_panel(axes[2], gradvar)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)
    return out


def _read_run(run_dir: Path):
    """(steps, ELBO values, summary rows, fit.json, gradvar.json or None) of a run folder."""
    needed = [run_dir / n for n in ("elbo.csv", "summary.csv", "fit.json")]
    for path in needed:
        if not path.is_file():
            raise InputError(f"'{run_dir}' is not a vireg run folder: {path.name} is missing")
    try:
        elbo = _read_csv(run_dir / "elbo.csv")
        summary = _read_csv(run_dir / "summary.csv")
        fit = json.loads((run_dir / "fit.json").read_text())
        steps = [int(r["step"]) for r in elbo]
        values = [float(r["elbo"]) for r in elbo]
        rows = [(r["parameter"], float(r["mean"]), float(r["q5"]), float(r["q95"]))
                for r in summary]
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the results in '{run_dir}': {exc}") from None
    gradvar_path = run_dir / "gradvar.json"
    gradvar = json.loads(gradvar_path.read_text()) if gradvar_path.is_file() else None
    return steps, values, rows, fit, gradvar


def _elbo_panel(ax, steps, values, fit) -> None:
    start = len(values) // 10  # the first steps can sit far below the rest and flatten them
    ax.plot(steps[start:], values[start:], lw=0.6, color="#4c72b0")
    ax.set_xlabel("step")
    ax.set_ylabel("ELBO (one Monte Carlo estimate per step)")
    verdict = "converged" if fit.get("converged") else "did not converge"
    ax.set_title(f"ELBO: {verdict} after {fit.get('steps')} steps", fontsize=10)


def _posterior_panel(ax, rows, fit) -> None:
    for i, (_, mean, lo, hi) in enumerate(reversed(rows)):
        ax.plot([lo, hi], [i, i], color="#4c72b0", lw=2)
        ax.plot([mean], [i], "o", color="#dd8452")
    ax.set_yticks(range(len(rows)), [r[0] for r in reversed(rows)])
    khat = fit.get("khat")
    ktext = "" if khat is None else f", Pareto k-hat {khat:.2f}"
    ax.set_title(f"posterior mean and 90% interval ({fit['config']['inference']['family']}"
                 f"{ktext})", fontsize=10)
    ax.axvline(0.0, color="grey", lw=0.5)


def _gradvar_panel(ax, gradvar) -> None:
    names = list(gradvar["estimators"])
    traces = [gradvar["estimators"][e]["trace_cov"] for e in names]
    ax.bar(names, traces, color=["#4c72b0", "#55a868", "#c44e52"][: len(names)])
    ax.set_yscale("log")
    ax.set_ylabel("trace of single-draw gradient covariance")
    ax.set_title(f"gradient variance at {gradvar['at']}", fontsize=10)
