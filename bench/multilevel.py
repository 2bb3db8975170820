"""End-to-end speed, memory and recovery of a multilevel fit (``vireg fit`` on synthetic data).

    python bench/multilevel.py [--n 1000000] [--d 10] [--groups 10000] [--crossed L]
                               [--family gaussian|bernoulli|both] [--threads T] [--out-file PATH]

Data (seeded): n rows, covariates x0..x{d-1} ~ N(0, 1), group ids g drawn uniformly from
``--groups`` levels, fixed effects intercept 0.3 and beta = 0.5 * linspace(-1, 1, d), each group's
intercept deviation ~ N(0, 0.5^2) and slope-on-x0 deviation ~ N(0, 0.3^2) (independent, so the
true correlation is 0); with ``--crossed L``, a second grouping column h of L levels crossed
with g (drawn uniformly, from its own seeded stream), whose intercept deviations ~ N(0, 0.4^2)
join eta, and the term ``(1 | h)`` joins the formula;

    gaussian:   y = eta + N(0, 1)          bernoulli:  y ~ Bernoulli(logistic(eta))
    eta = 0.3 + x . beta + b0[g] + b1[g] * x0

written as CSV into a temporary folder (never the repository), with the config
``data.formula: y ~ x0 + ... + x{d-1} + (1 + x0 | g)`` and ``model.family``, everything else
default (``inference.family: structured``). ``vireg fit CONFIG --quiet --out DIR`` runs as a
subprocess under ``/usr/bin/time -v`` (peak resident memory of the fit's process); the wall clock
is that of the whole command (interpreter start-up, import, read, fit, diagnostics, writing).

Reported per family: wall seconds, fit_seconds, steps, ms per step (fit_seconds / steps),
optimisation passes, compile and diagnostics seconds, peak RSS, converged; the posterior mean and
sd of sd(g:(Intercept)), sd(g:x0), cor(g:(Intercept),x0) and sigma against the truth (the
population values and, in brackets, the sample sd / correlation of the drawn group effects), the
largest |error| of the fixed effects against the truth in posterior sds, and the RMSE of the
per-level effects in groups.csv against the drawn ones. Results (a Markdown table and one JSON
line per fit, with date, commit, machine and command) go to ``bench/results/`` (``--out-file``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import machine

ROOT = Path(__file__).resolve().parents[1]
SD_INTERCEPT, SD_SLOPE, SIGMA, SD_CROSSED = 0.5, 0.3, 1.0, 0.4
INTERCEPT = 0.3


def truth(d: int) -> dict:
    return {"intercept": INTERCEPT, "beta": 0.5 * np.linspace(-1.0, 1.0, d) if d > 1
            else np.array([0.5])}


def make_data(path: Path, family: str, n: int, d: int, groups: int, seed: int,
              crossed: int = 0) -> dict:
    """Write the synthetic data set to ``path``; return the drawn truth."""
    rng = np.random.default_rng(seed)
    t = truth(d)
    b0 = rng.normal(0.0, SD_INTERCEPT, groups)
    b1 = rng.normal(0.0, SD_SLOPE, groups)
    g = rng.integers(0, groups, n)
    X = np.round(rng.standard_normal((n, d)), 6)
    eta = t["intercept"] + X @ t["beta"] + b0[g] + b1[g] * X[:, 0]
    if crossed:
        other = np.random.default_rng(seed + 1)
        h = other.integers(0, crossed, n)
        eta += other.normal(0.0, SD_CROSSED, crossed)[h]
    if family == "gaussian":
        y = np.round(eta + SIGMA * rng.standard_normal(n), 6)
    else:
        y = (rng.random(n) < 1.0 / (1.0 + np.exp(-eta))).astype(np.int64)
    del eta
    names = ["y"] + [f"x{j}" for j in range(d)] + ["g"] + (["h"] if crossed else [])
    labels = np.array([f"g{k}" for k in range(groups)])
    h_labels = np.array([f"h{k}" for k in range(crossed)])[h] if crossed else None
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        cols = [pa.array(y)] + [pa.array(X[:, j]) for j in range(d)] + [pa.array(labels[g])]
        cols += [pa.array(h_labels)] if crossed else []
        pacsv.write_csv(pa.table(cols, names=names), str(path),
                        pacsv.WriteOptions(quoting_style="none"))
    except ImportError:  # pyarrow is optional: plain Python formatting (slower)
        ys = [f"{v:d}" for v in y] if family == "bernoulli" else [f"{v:.6f}" for v in y]
        with path.open("w") as fh:
            fh.write(",".join(names) + "\n")
            for i in range(n):
                fh.write(ys[i] + "," + ",".join(f"{v:.6f}" for v in X[i]) + f",g{g[i]}"
                         + (f",{h_labels[i]}" if crossed else "") + "\n")
    used = np.bincount(g, minlength=groups) > 0
    return {"b0": b0, "b1": b1, "levels": labels, "used": used,
            "sample_sd0": float(b0[used].std(ddof=1)), "sample_sd1": float(b1[used].std(ddof=1)),
            "sample_cor": float(np.corrcoef(b0[used], b1[used])[0, 1]), **t}


def write_config(path: Path, data: Path, family: str, d: int, crossed: int = 0,
                 out_of_core: bool = False) -> str:
    """The fit's config; out of core (which reads no formula) the same model as data.groups,
    with the cache beside the data."""
    formula = ("y ~ " + " + ".join(f"x{j}" for j in range(d)) + " + (1 + x0 | g)"
               + (" + (1 | h)" if crossed else ""))
    if not out_of_core:
        path.write_text(f"data:\n  path: {data}\n  formula: '{formula}'\n"
                        f"model:\n  family: {family}\n")
        return formula
    groups = "{g: [intercept, x0]" + (", h: [intercept]}" if crossed else "}")
    covariates = ", ".join(f"x{j}" for j in range(d))
    path.write_text(f"data:\n  path: {data}\n  response: y\n  covariates: [{covariates}]\n"
                    f"  groups: {groups}\nmodel:\n  family: {family}\n"
                    "runtime:\n  out_of_core: true\n")
    return formula + " (out of core)"


def _peak_rss_mb(time_output: str) -> float:
    m = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", time_output)
    return int(m.group(1)) / 1024 if m else float("nan")


def _vireg() -> str:
    exe = Path(sys.executable).parent / "vireg"
    return str(exe) if exe.exists() else (shutil.which("vireg") or "vireg")


def read_summary(path: Path) -> dict:
    with path.open(newline="") as fh:
        return {r["parameter"]: (float(r["mean"]), float(r["sd"])) for r in csv.DictReader(fh)}


def group_rmse(path: Path, drawn: dict) -> dict:
    """RMSE of the per-level posterior means in groups.csv against the drawn group effects."""
    index = {lab: k for k, lab in enumerate(drawn["levels"])}
    sq = {"(Intercept)": [], "x0": []}
    with path.open(newline="") as fh:
        for r in csv.DictReader(fh):
            k = index.get(r["level"])
            if k is None or r["term"] not in sq:
                continue
            true = drawn["b0"][k] if r["term"] == "(Intercept)" else drawn["b1"][k]
            sq[r["term"]].append((float(r["mean"]) - true) ** 2)
    return {t: math.sqrt(sum(v) / len(v)) if v else float("nan") for t, v in sq.items()}


def run_one(family: str, args, work: Path) -> dict:
    data = work / f"{family}.csv"
    t0 = time.perf_counter()
    drawn = make_data(data, family, args.n, args.d, args.groups, args.seed, args.crossed)
    gen_s = time.perf_counter() - t0
    config = work / f"{family}.yaml"
    formula = write_config(config, data, family, args.d, args.crossed, args.out_of_core)
    out = work / f"out_{family}"
    cmd = ["/usr/bin/time", "-v", _vireg(), "fit", str(config), "--quiet", "--out", str(out)]
    if args.threads is not None:
        cmd += ["--set", f"runtime.threads={args.threads}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"vireg fit failed for {family} (exit {proc.returncode})")
    fit = json.loads((out / "fit.json").read_text())
    summ = read_summary(out / "summary.csv")
    fixed_names = ["intercept" if "intercept" in summ else "(Intercept)"] + \
        [f"x{j}" for j in range(args.d)]
    fixed_true = [drawn["intercept"], *drawn["beta"]]
    z = [abs(summ[p][0] - t) / summ[p][1] for p, t in zip(fixed_names, fixed_true, strict=True)]
    worst = int(np.argmax(z))
    steps = int(fit["steps"])

    def est(name: str) -> list[float] | None:
        return list(summ[name]) if name in summ else None

    row = {
        "family": family, "n": args.n, "d": args.d, "groups": args.groups, "seed": args.seed,
        "formula": formula, "threads_requested": args.threads, "threads": fit.get("threads"),
        "data_seconds": round(gen_s, 2), "csv_mb": round(data.stat().st_size / 1e6, 1),
        "wall_seconds": round(wall, 3), "fit_seconds": round(fit["fit_seconds"], 3),
        "steps": steps,
        "ms_per_step": round(1e3 * fit["fit_seconds"] / max(steps, 1), 3),
        "passes": fit.get("optimisation", {}).get("passes"),
        "compile_seconds": round(fit.get("compile_seconds", float("nan")), 3),
        "diagnostics_seconds": round(fit.get("diagnostics_seconds", float("nan")), 3),
        "peak_rss_mb": round(_peak_rss_mb(proc.stderr), 1),
        "data_source": fit.get("optimisation", {}).get("data_source"),
        "converged": fit["converged"], "stop_reason": fit.get("stop_reason"),
        "khat": fit.get("khat"),
        "sd_intercept": est("sd(g:(Intercept))"), "sd_x0": est("sd(g:x0)"),
        "cor": est("cor(g:(Intercept),x0)"), "crossed": args.crossed,
        "sd_h": est("sd(h:(Intercept))"), "true_sd_h": SD_CROSSED if args.crossed else None,
        "sigma": est("sigma") if family == "gaussian" else None,
        "true_sd_intercept": SD_INTERCEPT, "true_sd_x0": SD_SLOPE, "true_cor": 0.0,
        "true_sigma": SIGMA if family == "gaussian" else None,
        "sample_sd_intercept": round(drawn["sample_sd0"], 4),
        "sample_sd_x0": round(drawn["sample_sd1"], 4),
        "sample_cor": round(drawn["sample_cor"], 4),
        "fixed_max_abs_err_sd": round(float(z[worst]), 3),
        "fixed_worst": fixed_names[worst],
        "group_rmse": {k: round(v, 4) for k, v in group_rmse(out / "groups.csv", drawn).items()},
    }
    return row


def _pm(v: list[float] | None) -> str:
    return "-" if v is None else f"{v[0]:.3f} ± {v[1]:.3f}"


def tables(rows: list[dict]) -> str:
    lines = ["| family | n | d | groups | threads | wall s | fit s | steps | ms/step | passes | "
             "compile s | diag s | peak RSS MB | converged |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['n']:,} | {r['d']} | {r['groups']:,} | {r['threads']} "
                     f"| {r['wall_seconds']:.2f} | {r['fit_seconds']:.2f} | {r['steps']} | "
                     f"{r['ms_per_step']:.2f} | {r['passes']} | {r['compile_seconds']:.2f} | "
                     f"{r['diagnostics_seconds']:.2f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['converged']} |")
    lines += ["", "| family | sd(g:(Intercept)) (true 0.5) | sd(g:x0) (true 0.3) | "
              "cor (true 0) | sigma (true 1) | fixed max abs err (post. sd) | "
              "group effects RMSE (Intercept, x0) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {_pm(r['sd_intercept'])} [{r['sample_sd_intercept']:.3f}] "
                     f"| {_pm(r['sd_x0'])} [{r['sample_sd_x0']:.3f}] | {_pm(r['cor'])} "
                     f"[{r['sample_cor']:.3f}] | {_pm(r['sigma'])} | "
                     f"{r['fixed_max_abs_err_sd']:.2f} ({r['fixed_worst']}) | "
                     f"{r['group_rmse']['(Intercept)']:.3f}, {r['group_rmse']['x0']:.3f} |")
    if any(r["crossed"] for r in rows):
        lines += ["", f"| family | levels of h | sd(h:(Intercept)) (true {SD_CROSSED}) |",
                  "|---|---|---|"]
        lines += [f"| {r['family']} | {r['crossed']} | {_pm(r['sd_h'])} |" for r in rows]
    lines.append("")
    lines.append("[brackets]: the sample sd / correlation of the drawn group effects.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=10)
    p.add_argument("--groups", type=int, default=10_000)
    p.add_argument("--crossed", type=int, default=0,
                   help="levels of a second grouping column h crossed with g (0: none)")
    p.add_argument("--family", choices=["gaussian", "bernoulli", "both"], default="both")
    p.add_argument("--threads", type=int, default=None,
                   help="runtime.threads for the fit (default: vireg's, all cores)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out-file", default=None,
                   help="results file (default: bench/results/multilevel_<n>x<d>_g<groups>_"
                        "<commit>.txt)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (data, outputs)")
    p.add_argument("--out-of-core", action="store_true",
                   help="runtime.out_of_core: the rows streamed from a disk cache (built by the "
                        "fit, and counted in its wall time)")
    args = p.parse_args()
    if args.d < 1:
        p.error("--d must be at least 1 (the slope is on x0)")
    if not Path("/usr/bin/time").exists():
        raise SystemExit("/usr/bin/time not found (GNU time is needed for the peak RSS)")
    meta = machine()
    families = ["gaussian", "bernoulli"] if args.family == "both" else [args.family]
    work = Path(tempfile.mkdtemp(prefix="vireg-bench-multilevel-"))
    rows = []
    try:
        for family in families:
            row = run_one(family, args, work)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = tables(rows)
    print()
    print(text)
    target = Path(args.out_file) if args.out_file else (
        ROOT / "bench" / "results"
        / (f"multilevel_{args.n}x{args.d}_g{args.groups}"
           + (f"_h{args.crossed}" if args.crossed else "")
           + ("_out_of_core" if args.out_of_core else "") + f"_{meta['commit']}.txt"))
    target.parent.mkdir(parents=True, exist_ok=True)
    header = "\n".join(f"{k}: {v}" for k, v in meta.items())
    target.write_text(header + "\n\n" + text + "\n\n"
                      + "".join(json.dumps({**meta, **r}) + "\n" for r in rows))
    print(f"wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
