"""PSIS-LOO of vireg runs against ArviZ, exact leave-one-out refits, and the subsampled
estimate on a large data set.

    python bench/loo.py kidiq [--rows N] [--draws 1000]     # posteriordb kidiq models + wells
    python bench/loo.py large [--n 1000000] [--d 5] [--subsample 1000] [--seeds 5]

kidiq: the four posteriordb kidiq models (flat coefficients, half-Cauchy(2.5) sigma) fitted with
mean-field and full-rank q, and the shipped wells config: vireg's uncorrected elpd_loo against
``az.loo`` on the same float64 log-likelihood values and on posterior.nc (float32), and the
corrected one against exact leave-one-out: for each row, a full-rank fit without it with 4,000
draws, importance-weighted to its posterior by PSIS of p/q, elpd_i = log sum_s w_s p(y_i | theta_s)
(with its Monte Carlo se). ``--rows`` limits the refits to the first N rows.

large: a synthetic logistic regression of n rows (CSV), fitted by ``vireg fit``; the wall time of
``vireg loo RUN --subsample M`` as a command, the full computation from the Python API, and the
subsampled estimate for several seeds against it.

Results as JSON lines under bench/results/ and a summary on standard output.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from machine import machine  # noqa: E402
from workflow_runs import (  # noqa: E402
    KIDIQ_MODELS,
    POSTERIORDB,
    fit_run,
    gaussian_loglik,
    kidiq_config,
    wells_config,
    without_row,
)

REFIT_DRAWS = 4000


def _is_se(lw: np.ndarray, lp: np.ndarray) -> float:
    w = np.exp(lw - np.logaddexp.reduce(lw))
    p = np.exp(lp - lp.max())
    mean = np.sum(w * p)
    return float(np.sqrt(np.sum(w**2 * (p - mean) ** 2)) / mean)


def exact_loo(model: str, rows: list[int], work: Path) -> tuple[np.ndarray, np.ndarray]:
    import vireg
    from vireg.diagnostics import psis

    src = POSTERIORDB / f"kidiq-kidscore_{model}.csv"
    data = np.loadtxt(src, delimiter=",", skiprows=1)
    y, X = data[:, 0], data[:, 1:]
    elpd, se = np.empty(len(rows)), np.empty(len(rows))
    for j, i in enumerate(rows):
        path = without_row(src, i, work / "loo.csv")
        r = vireg.fit(kidiq_config(model, data=path, draws=REFIT_DRAWS, family="fullrank"))
        lw, _ = psis(r.draws_log_p - r.draws_log_q)
        lp = gaussian_loglik(r.draws, r.param_names, X[i:i + 1], y[i:i + 1])[:, 0]
        elpd[j] = np.logaddexp.reduce(lw + lp)
        se[j] = _is_se(lw, lp)
    return elpd, se


def run_kidiq(args) -> list[dict]:
    import arviz as az

    from vireg.workflow.compare import compare_results
    from vireg.workflow.loo import loo_arrays, loo_of_run
    from vireg.workflow.run import load_run, pointwise_loglik, rebuild, to_u

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    out = []
    configs = {f"kidiq_{m}": kidiq_config(m, draws=args.draws, arviz=True) for m in KIDIQ_MODELS}
    configs["wells"] = wells_config(draws=args.draws, arviz=True)
    loo_by = {}
    for family in ("meanfield", "fullrank"):
        for name, cfg in configs.items():
            cfg = json.loads(json.dumps(cfg))
            cfg["inference"]["family"] = family
            run_dir = work / f"{name}_{family}"
            fit_run(cfg, run_dir)
            run = load_run(run_dir)
            t0 = time.perf_counter()
            corrected = loo_of_run(run)
            seconds = time.perf_counter() - t0
            plain = loo_of_run(run, correct=False)
            with rebuild(run) as rb:
                ll = pointwise_loglik(rb.model, to_u(rb.model, run))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = az.loo(az.from_dict(posterior={"a": run.draws[None, :, 0]},
                                          log_likelihood={"y": ll[None]}))
                ref32 = az.loo(az.from_netcdf(run_dir / "posterior.nc"))
            assert abs(loo_arrays(ll).elpd_loo - plain.elpd_loo) < 1e-9
            row = {"bench": "loo_vs_arviz", "run": name, "q": family, "n": run.doc["n_rows"],
                   "draws": args.draws, "khat_fit": run.doc["khat"],
                   "elpd_corrected": corrected.elpd_loo, "se": corrected.se,
                   "p_loo_corrected": corrected.p_loo, "elpd_uncorrected": plain.elpd_loo,
                   "elpd_arviz": float(ref.elpd_loo), "elpd_arviz_netcdf": float(ref32.elpd_loo),
                   "abs_diff_arviz": abs(plain.elpd_loo - float(ref.elpd_loo)),
                   "abs_diff_arviz_netcdf": abs(plain.elpd_loo - float(ref32.elpd_loo)),
                   "k_counts": corrected.k_counts, "loo_seconds": seconds}
            out.append(row)
            corrected.label = name
            loo_by[(name, family)] = corrected
            print(json.dumps(row), flush=True)
    for family in ("meanfield", "fullrank"):
        table = compare_results([loo_by[(f"kidiq_{m}", family)] for m in KIDIQ_MODELS])
        row = {"bench": "compare", "q": family, "order": [r.run for r in table],
               "elpd_diff": [r.elpd_diff for r in table], "se_diff": [r.se_diff for r in table],
               "weight": [r.weight for r in table]}
        out.append(row)
        print(json.dumps(row), flush=True)
    exact_total = {}
    for m in KIDIQ_MODELS:
        n = 434 if args.rows is None else min(args.rows, 434)
        rows = list(range(n))
        t0 = time.perf_counter()
        elpd, se = exact_loo(m, rows, work)
        exact_total[m] = float(elpd.sum())
        for family in ("meanfield", "fullrank"):
            r = loo_by[(f"kidiq_{m}", family)]
            approx = r.pointwise.elpd[rows]
            diff = approx - elpd
            row = {"bench": "loo_vs_exact", "model": m, "q": family, "rows": n,
                   "elpd_exact": float(elpd.sum()), "mc_se_exact": float(math.sqrt(np.sum(se**2))),
                   "elpd_psis_corrected": float(approx.sum()), "diff": float(diff.sum()),
                   "max_abs_diff_row": float(np.max(np.abs(diff))),
                   "mcse_psis": float(math.sqrt(np.sum(r.pointwise.mc_var[rows]))),
                   "diff_in_mc_se": float(diff.sum() / math.sqrt(np.sum(se**2)
                                                                 + np.sum(r.pointwise.mc_var[rows]))),
                   "k_bad": r.k_counts[2], "khat_draws": r.khat_posterior,
                   "elpd_se": r.se, "refit_seconds": time.perf_counter() - t0}
            out.append(row)
            print(json.dumps(row), flush=True)
    order = sorted(exact_total, key=lambda m: -exact_total[m])
    row = {"bench": "exact_order", "order": [f"kidiq_{m}" for m in order],
           "elpd_exact": [exact_total[m] for m in order]}
    out.append(row)
    print(json.dumps(row), flush=True)
    return out


def run_large(args) -> list[dict]:
    from vireg.workflow.loo import loo_of_run
    from vireg.workflow.run import load_run

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    csv_path = work / f"logistic_{args.n}x{args.d}.csv"
    rng = np.random.default_rng(1)
    if not csv_path.is_file():
        X = rng.standard_normal((args.n, args.d))
        beta = np.linspace(-1, 1, args.d)
        y = (rng.random(args.n) < 1 / (1 + np.exp(-(0.3 + X @ beta)))).astype(int)
        header = ",".join(["y"] + [f"x{j}" for j in range(args.d)])
        np.savetxt(csv_path, np.column_stack([y, X]), delimiter=",", header=header, comments="",
                   fmt=["%d"] + ["%.6f"] * args.d)
    cfg = {"data": {"path": str(csv_path), "response": "y"}, "model": {"family": "bernoulli"},
           "output": {"draws": 1000}}
    run_dir = work / f"run_{args.n}"
    t0 = time.perf_counter()
    fit_run(cfg, run_dir)
    fit_s = time.perf_counter() - t0
    vireg = str(Path(sys.executable).parent / "vireg")
    t0 = time.perf_counter()
    cli = subprocess.run([vireg, "loo", str(run_dir), "--subsample", str(args.subsample),
                          "--out", "-"], capture_output=True, text=True, check=True)
    cli_s = time.perf_counter() - t0
    header, values = cli.stdout.strip().splitlines()
    cli_row = dict(zip(header.split(","), values.split(","), strict=True))
    run = load_run(run_dir)
    t0 = time.perf_counter()
    full = loo_of_run(run)
    full_s = time.perf_counter() - t0
    subs = []
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        s = loo_of_run(run, subsample=args.subsample, seed=seed)
        subs.append({"seed": seed, "elpd": s.elpd_loo, "subsampling_se": s.subsampling_se,
                     "se": s.se, "z": (s.elpd_loo - full.elpd_loo) / s.subsampling_se,
                     "seconds": time.perf_counter() - t0})
    row = {"bench": "loo_large", "n": args.n, "d": args.d, "draws": 1000,
           "subsample": args.subsample, "fit_seconds": fit_s,
           "cli_subsample_seconds": cli_s, "cli_elpd": float(cli_row["elpd_loo"]),
           "cli_subsampling_se": float(cli_row["subsampling_se"]),
           "full_elpd": full.elpd_loo, "full_se": full.se, "full_seconds": full_s,
           "full_k_counts": full.k_counts, "subsamples": subs,
           "within_2se": sum(abs(s["z"]) < 2 for s in subs)}
    print(json.dumps(row), flush=True)
    return [row]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    k = sub.add_parser("kidiq")
    k.add_argument("--rows", type=int, default=None)
    k.add_argument("--draws", type=int, default=1000)
    k.add_argument("--workdir", default="/tmp/vireg-bench-loo")
    g = sub.add_parser("large")
    g.add_argument("--n", type=int, default=1_000_000)
    g.add_argument("--d", type=int, default=5)
    g.add_argument("--subsample", type=int, default=1000)
    g.add_argument("--seeds", type=int, default=5)
    g.add_argument("--workdir", default="/tmp/vireg-bench-loo")
    args = p.parse_args()
    rows = run_kidiq(args) if args.what == "kidiq" else run_large(args)
    meta = machine()
    target = ROOT / "bench" / "results" / f"loo_{args.what}_{meta['commit']}.jsonl"
    with target.open("w") as fh:
        for row in rows:
            fh.write(json.dumps({**meta, **row}) + "\n")
    print(f"wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
