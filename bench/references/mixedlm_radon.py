"""Maximum-likelihood mixed models in statsmodels (MixedLM) on the radon data, timed: the
frequentist reference point beside vireg's multilevel fits.

    /work/refvenv/bin/python bench/references/mixedlm_radon.py [--repeats 3] [--no-synthetic]

Fits ``MixedLM.fit(reml=False)`` (ML, statsmodels' default optimiser) to

* ``tests/data/multilevel/radon_mn_intercepts.csv``: ``log_radon ~ floor + log_uranium``, random
  intercept by county;
* ``tests/data/multilevel/radon_mn_slopes.csv``: the same with a random intercept and a random
  slope on floor, correlated (``re_formula="~floor"``);

and, unless ``--no-synthetic``, a synthetic Gaussian data set made by ``bench/multilevel.py``'s
generator (same seed, so the same data as ``python bench/multilevel.py --family gaussian --n
100000 --d 10 --groups 1000``): n = 100,000, x0..x9, 1,000 groups, random intercept and slope on
x0 (sds 0.5 and 0.3, independent), noise sd 1. Each fit is run in a child process with a time
limit (``--limit``, 120 s): a fit that does not finish in time is reported as not feasible.

The time is ``time.perf_counter()`` around ``.fit()`` alone (the model, i.e. the design matrices,
is built outside it), the best of ``--repeats`` runs (the synthetic fit is repeated only if its
first run took under ``--limit / 3``). Printed, and written to ``bench/results/mixedlm-radon.txt``
with date, machine, command and versions: the fixed effects (with ML standard errors), sigma, the
group sds and correlation, the log-likelihood, the optimiser and whether it converged, and the
NUTS posterior means of the same quantities from ``tests/data/multilevel`` for comparison (those
are Bayesian posterior means under the reference priors, not ML estimates).

Nothing from ``nuts_common.py`` is imported: it sets up JAX and NumPyro on import, which MixedLM
does not need.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import multiprocessing as mp
import os
import platform
import queue as queue_module
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import scipy
import statsmodels
import statsmodels.formula.api as smf

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "multilevel"
OUT = ROOT / "bench" / "results" / "mixedlm-radon.txt"


def _machine() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"date": date.today().isoformat(), "commit": commit, "cpu": cpu,
            "cores": os.cpu_count(), "python": platform.python_version(),
            "statsmodels": statsmodels.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "pandas": pd.__version__,
            "command": " ".join([Path(sys.executable).as_posix(), Path(sys.argv[0]).as_posix(),
                                 *sys.argv[1:]])}


def _generator():
    """``make_data`` of bench/multilevel.py (loaded by path: this folder has its own
    multilevel.py, the NUTS references)."""
    spec = importlib.util.spec_from_file_location("bench_multilevel", ROOT / "bench" / "multilevel.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- the problems --------------------------------------------------------------------------------

def problem(name: str, workdir: Path | None = None) -> dict:
    """Data, formula, group column, re_formula and the reference (or truth) to print beside."""
    if name == "radon_mn_intercepts":
        d = pd.read_csv(DATA / "radon_mn_intercepts.csv", keep_default_na=False)
        ref = json.loads((DATA / "radon_mn_intercepts.json").read_text())
        compare = {k: v["mean"] for k, v in ref["fixed"].items()}
        compare["sigma"] = ref["sigma"]["mean"]
        compare["sd(county:(Intercept))"] = ref["group_sd"]["(Intercept)"]["mean"]
        return {"data": d, "formula": "log_radon ~ floor + log_uranium", "group": "county",
                "re_formula": None, "compare": compare, "compare_label": "NUTS mean"}
    if name == "radon_mn_slopes":
        d = pd.read_csv(DATA / "radon_mn_slopes.csv", keep_default_na=False)
        ref = json.loads((DATA / "reference.json").read_text())["radon_mn_slopes"]
        keys = ["(Intercept)", "floor", "log_uranium", "sigma", "sd(county:(Intercept))",
                "sd(county:floor)", "cor(county:(Intercept),floor)"]
        return {"data": d, "formula": "log_radon ~ floor + log_uranium", "group": "county",
                "re_formula": "~floor", "compare": {k: ref["mean"][k] for k in keys},
                "compare_label": "NUTS mean"}
    if name == "synthetic":
        gen = _generator()
        n, dcov, groups, seed = 100_000, 10, 1000, 1
        path = workdir / "synthetic.csv"
        drawn = gen.make_data(path, "gaussian", n, dcov, groups, seed)
        d = pd.read_csv(path)
        compare = {"(Intercept)": drawn["intercept"],
                   **{f"x{j}": float(b) for j, b in enumerate(drawn["beta"])},
                   "sigma": gen.SIGMA, "sd(g:(Intercept))": gen.SD_INTERCEPT,
                   "sd(g:x0)": gen.SD_SLOPE, "cor(g:(Intercept),x0)": 0.0}
        return {"data": d, "formula": "y ~ " + " + ".join(f"x{j}" for j in range(dcov)),
                "group": "g", "re_formula": "~x0", "compare": compare, "compare_label": "truth",
                "description": f"bench/multilevel.py make_data(gaussian, n={n}, d={dcov}, "
                               f"groups={groups}, seed={seed})"}
    raise ValueError(name)


def _fit_once(spec: dict) -> dict:
    model = smf.mixedlm(spec["formula"], spec["data"], groups=spec["data"][spec["group"]],
                        re_formula=spec["re_formula"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        res = model.fit(reml=False)
        seconds = time.perf_counter() - t0
    g = spec["group"]
    cov = np.asarray(res.cov_re)
    names = list(res.cov_re.index)
    out = {"seconds": seconds, "converged": bool(res.converged),
           "method": str(getattr(res, "method", "?")), "llf": float(res.llf),
           "warnings": sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0]}"
                               for w in caught}),
           "estimates": {}, "se": {}}
    for k, v in res.fe_params.items():
        key = "(Intercept)" if k == "Intercept" else k
        out["estimates"][key] = float(v)
        out["se"][key] = float(res.bse_fe[k])
    out["estimates"]["sigma"] = math.sqrt(float(res.scale))
    sds = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    terms = ["(Intercept)" if t in ("Group", "Intercept") else t for t in names]
    for t, s in zip(terms, sds, strict=True):
        out["estimates"][f"sd({g}:{t})"] = float(s)
    if len(terms) == 2:
        denom = sds[0] * sds[1]
        out["estimates"][f"cor({g}:{terms[0]},{terms[1]})"] = (
            float(cov[0, 1] / denom) if denom > 0 else float("nan"))
    return out


def _child(spec: dict, queue) -> None:
    try:
        queue.put(_fit_once(spec))
    except Exception as exc:  # reported, not raised: the parent prints it
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def timed(spec: dict, repeats: int, limit: float) -> dict:
    """Best of ``repeats`` fits, each in a forked child with a time limit of ``limit`` s."""
    ctx = mp.get_context("fork")
    runs = []
    for i in range(repeats):
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(spec, queue))
        t0 = time.perf_counter()
        proc.start()
        try:
            result = queue.get(timeout=limit)
        except queue_module.Empty:  # over the limit
            result = None
        if result is None:
            proc.terminate()
            proc.join()
            return {"feasible": False, "limit": limit, "runs": [r["seconds"] for r in runs],
                    "waited": time.perf_counter() - t0, **(runs[0] if runs else {})}
        proc.join()
        if "error" in result:
            return {"feasible": False, "error": result["error"]}
        runs.append(result)
        if spec.get("repeat_if_under") is not None and i == 0 \
                and result["seconds"] > spec["repeat_if_under"]:
            break
    best = min(runs, key=lambda r: r["seconds"])
    return {"feasible": True, **best, "runs": [r["seconds"] for r in runs]}


def report(name: str, spec: dict, r: dict) -> str:
    data = spec["data"]
    head = (f"## {name}\n\nrows {len(data)}, groups {data[spec['group']].nunique()}, "
            f"formula `{spec['formula']}`, groups `{spec['group']}`, "
            f"re_formula `{spec['re_formula'] or '~1'}`, MixedLM.fit(reml=False)")
    if spec.get("description"):
        head += f"\ndata: {spec['description']}"
    if not r.get("feasible"):
        if "error" in r:
            return head + f"\n\nfailed: {r['error']}\n"
        return head + (f"\n\nnot feasible: no fit finished within {r['limit']:.0f} s "
                       f"(stopped after {r['waited']:.0f} s)\n")
    runs = ", ".join(f"{s:.3f}" for s in r["runs"])
    lines = [head, "",
             f"fit seconds: best {r['seconds']:.3f} of {len(r['runs'])} ({runs}); "
             f"optimiser {r['method']}, converged {r['converged']}, log-likelihood "
             f"{r['llf']:.3f}"]
    for w in r["warnings"]:
        lines.append(f"warning: {w}")
    lines += ["", f"| quantity | ML estimate | ML se | {spec['compare_label']} |", "|---|---|---|---|"]
    keys = list(r["estimates"])
    keys += [k for k in spec["compare"] if k not in keys]
    for k in keys:
        est = r["estimates"].get(k)
        se = r["se"].get(k)
        cmp = spec["compare"].get(k)
        lines.append(f"| {k} | {'-' if est is None else f'{est:.5f}'} | "
                     f"{'-' if se is None else f'{se:.5f}'} | "
                     f"{'-' if cmp is None else f'{cmp:.5f}'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=float, default=120.0,
                    help="seconds allowed for one fit before it is called not feasible")
    ap.add_argument("--no-synthetic", action="store_true")
    ap.add_argument("--out-file", default=str(OUT))
    args = ap.parse_args()
    meta = _machine()
    blocks, rows = [], []
    names = ["radon_mn_intercepts", "radon_mn_slopes"] + ([] if args.no_synthetic else ["synthetic"])
    with tempfile.TemporaryDirectory(prefix="mixedlm-bench-") as tmp:
        for name in names:
            t0 = time.perf_counter()
            spec = problem(name, Path(tmp))
            if name == "synthetic":
                spec["repeat_if_under"] = args.limit / 3
                print(f"{name}: data made in {time.perf_counter() - t0:.1f} s", file=sys.stderr,
                      flush=True)
            r = timed(spec, args.repeats, args.limit)
            text = report(name, spec, r)
            print(text, flush=True)
            blocks.append(text)
            rows.append({"problem": name, **r})
    header = "# statsmodels MixedLM (ML) timings\n\n" + "\n".join(
        f"{k}: {v}" for k, v in meta.items())
    out = Path(args.out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + "\n\n" + "\n".join(blocks) + "\n"
                   + "".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
