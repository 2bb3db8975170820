"""Maximum-likelihood mixed models in statsmodels (MixedLM) on the radon data, timed: the
frequentist reference point beside vireg's multilevel fits.

    /work/refvenv/bin/python bench/references/mixedlm_radon.py [--repeats 3] [--no-synthetic]

Fits ``MixedLM.fit(reml=False)`` (ML) to

* ``tests/data/multilevel/radon_mn_intercepts.csv``: ``log_radon ~ floor + log_uranium``, random
  intercept by county;
* ``tests/data/multilevel/radon_mn_slopes.csv``: the same with a random intercept and a random
  slope on floor, correlated (``re_formula="~floor"``);

and, unless ``--no-synthetic``, a synthetic Gaussian data set made by ``bench/multilevel.py``'s
generator (same seed, so the same data as ``python bench/multilevel.py --family gaussian --n
100000 --d 10 --groups 1000``): n = 100,000, x0..x9, 1,000 groups, random intercept and slope on
x0 (sds 0.5 and 0.3, independent), noise sd 1.

Each problem is fitted twice: with statsmodels' default optimisers (bfgs, then lbfgs, then cg: what
a user gets) and with Powell at tight tolerances (``method="powell", ftol=1e-12``).
On the radon data the default stops short of the maximum (intercepts: not converged; slopes:
"converged" 1.6 log-likelihood units below it, sd(county:floor) 0.49 against 0.33), so every
fit is also checked against an independent maximisation of the exact marginal likelihood (scipy,
fixed effects profiled out by GLS), whose log-likelihood and estimates are printed beside.

The time is ``time.perf_counter()`` around ``.fit()`` alone (the model, i.e. the design matrices,
is built outside it), the best of ``--repeats`` runs. Each fit runs in a child process with a time
limit (``--limit``, 120 s): a fit that does not finish in time is reported as not feasible; the
synthetic fits are repeated only if the first run took under ``--limit / 3``. Printed, and written
to ``bench/results/mixedlm-radon.txt`` with date, machine, command and versions: the fixed
effects (with ML standard errors), sigma, the group sds and correlation, the log-likelihood,
whether statsmodels says it converged and its warnings, and the NUTS posterior means of the same
quantities from ``tests/data/multilevel`` (Bayesian posterior means under the reference priors,
not ML estimates) or the synthetic truth.

Nothing from ``nuts_common.py`` is imported: it sets up JAX and NumPyro on import, which MixedLM
does not need.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import multiprocessing as mp
import platform
import queue as queue_module
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy
import scipy.optimize
import statsmodels
import statsmodels.formula.api as smf

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from machine import machine  # noqa: E402

DATA = ROOT / "tests" / "data" / "multilevel"
OUT = ROOT / "bench" / "results" / "mixedlm-radon.txt"


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
                "response": "log_radon", "fixed": ["floor", "log_uranium"], "re_formula": None,
                "compare": compare, "compare_label": "NUTS mean"}
    if name == "radon_mn_slopes":
        d = pd.read_csv(DATA / "radon_mn_slopes.csv", keep_default_na=False)
        ref = json.loads((DATA / "reference.json").read_text())["radon_mn_slopes"]
        keys = ["(Intercept)", "floor", "log_uranium", "sigma", "sd(county:(Intercept))",
                "sd(county:floor)", "cor(county:(Intercept),floor)"]
        return {"data": d, "formula": "log_radon ~ floor + log_uranium", "group": "county",
                "response": "log_radon", "fixed": ["floor", "log_uranium"],
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
                "group": "g", "response": "y", "fixed": [f"x{j}" for j in range(dcov)],
                "re_formula": "~x0", "compare": compare, "compare_label": "truth",
                "description": f"bench/multilevel.py make_data(gaussian, n={n}, d={dcov}, "
                               f"groups={groups}, seed={seed})"}
    raise ValueError(name)


VARIANTS = {
    # what a user gets: statsmodels' default optimisers (bfgs, then lbfgs, then cg)
    "default": {},
    # Powell with tight tolerances: reached the exact ML optimum on all three problems
    "powell": {"method": "powell", "ftol": 1e-12},
}


def _fit_once(spec: dict, kwargs: dict) -> dict:
    model = smf.mixedlm(spec["formula"], spec["data"], groups=spec["data"][spec["group"]],
                        re_formula=spec["re_formula"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        res = model.fit(reml=False, **kwargs)
        seconds = time.perf_counter() - t0
    seen = []
    for w in caught:
        text = f"{w.category.__name__}: {str(w.message).splitlines()[0]}"
        if text not in seen:
            seen.append(text)
    g = spec["group"]
    cov = np.asarray(res.cov_re)
    out = {"seconds": seconds, "converged": bool(res.converged), "llf": float(res.llf),
           "warnings": seen, "estimates": {}, "se": {}}
    for k, v in res.fe_params.items():
        key = "(Intercept)" if k == "Intercept" else k
        out["estimates"][key] = float(v)
        out["se"][key] = float(res.bse_fe[k])
    out["estimates"]["sigma"] = math.sqrt(float(res.scale))
    terms = ["(Intercept)" if t in ("Group", "Intercept") else t for t in res.cov_re.index]
    _add_re(out["estimates"], g, terms, cov)
    return out


def _add_re(est: dict, g: str, terms: list[str], cov: np.ndarray) -> None:
    sds = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    for t, s in zip(terms, sds, strict=True):
        est[f"sd({g}:{t})"] = float(s)
    if len(terms) == 2:
        denom = sds[0] * sds[1]
        est[f"cor({g}:{terms[0]},{terms[1]})"] = (float(cov[0, 1] / denom) if denom > 0
                                                  else float("nan"))


def _child(spec: dict, kwargs: dict, queue) -> None:
    try:
        queue.put(_fit_once(spec, kwargs))
    except Exception as exc:  # reported, not raised: the parent prints it
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def timed(spec: dict, kwargs: dict, repeats: int, limit: float,
          repeat_if_under: float | None = None) -> dict:
    """Best of ``repeats`` fits, each in a forked child with a time limit of ``limit`` s (further
    runs only if the first took under ``repeat_if_under`` s, when given)."""
    ctx = mp.get_context("fork")
    runs = []
    for i in range(repeats):
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(spec, kwargs, queue))
        t0 = time.perf_counter()
        proc.start()
        try:
            result = queue.get(timeout=limit)
        except queue_module.Empty:  # over the limit
            result = None
        if result is None:
            proc.terminate()
            proc.join()
            return {"feasible": False, "limit": limit, "waited": time.perf_counter() - t0,
                    "runs": [r["seconds"] for r in runs]}
        proc.join()
        if "error" in result:
            return {"feasible": False, "error": result["error"]}
        runs.append(result)
        if repeat_if_under is not None and i == 0 and result["seconds"] > repeat_if_under:
            break
    best = min(runs, key=lambda r: r["seconds"])
    return {"feasible": True, **best, "runs": [r["seconds"] for r in runs]}


def exact_ml(spec: dict) -> dict:
    """Independent check: the exact Gaussian marginal likelihood, V_g = sigma^2 I + Z_g S Z_g',
    fixed effects profiled out by GLS, maximised over (log sds, atanh cor, log sigma) by
    Nelder-Mead then BFGS from three starts (scipy and numpy; no statsmodels code).

    With S = Lam Lam' and A_g = I + Lam' Z_g'Z_g Lam / sigma^2 (Woodbury), V_g^-1 = (I - Z_g Lam
    A_g^-1 Lam' Z_g' / sigma^2) / sigma^2 and log det V_g = n_g log sigma^2 + log det A_g, so the
    likelihood needs only per-group sums (Z'Z, Z'X, Z'y) and the totals X'X, X'y, y'y."""
    d = spec["data"]
    y = d[spec["response"]].to_numpy(float)
    fixed = spec["fixed"]
    X = np.column_stack([np.ones(len(d))] + [d[c].to_numpy(float) for c in fixed])
    slope = [c.strip() for c in (spec["re_formula"] or "~1").lstrip("~").split("+")
             if c.strip() != "1"]
    Z = np.column_stack([np.ones(len(d))] + [d[c].to_numpy(float) for c in slope])
    codes = pd.factorize(d[spec["group"]])[0]
    G, q, n = codes.max() + 1, Z.shape[1], y.size
    Xy = np.column_stack([X, y])                      # last column: y
    ZtZ = np.zeros((G, q, q))
    ZtXy = np.zeros((G, q, Xy.shape[1]))
    np.add.at(ZtZ, codes, Z[:, :, None] * Z[:, None, :])
    np.add.at(ZtXy, codes, Z[:, :, None] * Xy[:, None, :])
    XyXy = Xy.T @ Xy
    p = X.shape[1]

    def unpack(theta):
        s = np.exp(theta[:q])
        corr = np.eye(q)
        if q == 2:
            corr[0, 1] = corr[1, 0] = np.tanh(theta[q + 1])
        lam = s[:, None] * np.linalg.cholesky(corr)
        return lam, float(np.exp(2 * theta[q]))

    def nll(theta, full=False):
        lam, s2 = unpack(theta)
        A = np.eye(q) + lam.T @ ZtZ @ lam / s2                       # (G, q, q)
        B = lam.T @ ZtXy                                             # (G, q, p + 1)
        M = (XyXy - np.einsum("gqi,gqj->ij", B, np.linalg.solve(A, B)) / s2) / s2
        b = np.linalg.solve(M[:p, :p], M[:p, p])
        quad = M[p, p] - b @ M[:p, p]
        logdet = n * math.log(s2) + np.linalg.slogdet(A)[1].sum()
        value = 0.5 * (logdet + quad + n * math.log(2 * math.pi))
        return (value, b, lam @ lam.T, math.sqrt(s2)) if full else value

    best = None
    for s0, r0 in ((0.2, 0.0), (0.05, 0.5), (0.5, -0.5)):
        p0 = np.r_[np.full(q, math.log(s0)), math.log(0.7), [r0] * (q == 2)]
        r = scipy.optimize.minimize(nll, p0, method="Nelder-Mead",
                                    options={"xatol": 1e-9, "fatol": 1e-11, "maxfev": 40000})
        r = scipy.optimize.minimize(nll, r.x, method="BFGS")
        if best is None or r.fun < best.fun:
            best = r
    value, b, S, sig = nll(best.x, full=True)
    est = {"(Intercept)": float(b[0]), **{c: float(v) for c, v in zip(fixed, b[1:], strict=True)},
           "sigma": sig}
    _add_re(est, spec["group"], ["(Intercept)", *slope], S)
    return {"llf": -float(value), "estimates": est}


def _f(v: float | None, digits: int = 5) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def report(name: str, spec: dict, fits: dict, exact: dict | None) -> str:
    data = spec["data"]
    lines = [f"## {name}", "",
             f"rows {len(data)}, groups {data[spec['group']].nunique()}, formula "
             f"`{spec['formula']}`, groups `{spec['group']}`, re_formula "
             f"`{spec['re_formula'] or '~1'}`, MixedLM.fit(reml=False, ...)"]
    if spec.get("description"):
        lines.append(f"data: {spec['description']}")
    lines.append("")
    ok = {}
    for v, r in fits.items():
        label = f"{v} {VARIANTS[v] or '(bfgs, lbfgs, cg)'}"
        if not r.get("feasible"):
            lines.append(f"- {label}: " + (f"failed: {r['error']}" if "error" in r else
                         f"not feasible: no fit finished within {r['limit']:.0f} s"))
            continue
        ok[v] = r
        runs = ", ".join(f"{s:.3f}" for s in r["runs"])
        gap = (f", {round(exact['llf'] - r['llf'], 5) + 0.0:.5f} below the exact maximum"
               if exact else "")
        lines.append(f"- {label}: fit seconds best {r['seconds']:.3f} of {len(r['runs'])} "
                     f"({runs}); converged {r['converged']}; log-likelihood {r['llf']:.5f}{gap}")
        lines += [f"  - {w}" for w in r["warnings"]]
    if exact:
        lines.append(f"- exact ML (scipy, independent): log-likelihood {exact['llf']:.5f}")
    cols = list(ok)
    header = " | ".join(f"{v} | {v} se" for v in cols)
    lines += ["", f"| quantity | {header} | {'exact ML | ' if exact else ''}"
                  f"{spec['compare_label']} |",
              "|---|" + "---|" * (2 * len(cols) + (1 if exact else 0) + 1)]
    keys = []
    for r in ok.values():
        keys += [k for k in r["estimates"] if k not in keys]
    keys += [k for k in spec["compare"] if k not in keys]
    for k in keys:
        cells = [f"{_f(ok[v]['estimates'].get(k))} | {_f(ok[v]['se'].get(k))}" for v in cols]
        if exact:
            cells.append(_f(exact["estimates"].get(k)))
        cells.append(_f(spec["compare"].get(k)))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=float, default=120.0,
                    help="seconds allowed for one fit before it is called not feasible")
    ap.add_argument("--no-synthetic", action="store_true")
    ap.add_argument("--out-file", default=str(OUT))
    args = ap.parse_args()
    meta = machine(python=platform.python_version(), statsmodels=statsmodels.__version__,
                   numpy=np.__version__, scipy=scipy.__version__, pandas=pd.__version__)
    blocks, rows = [], []
    names = ["radon_mn_intercepts", "radon_mn_slopes"] + ([] if args.no_synthetic else ["synthetic"])
    with tempfile.TemporaryDirectory(prefix="mixedlm-bench-") as tmp:
        for name in names:
            t0 = time.perf_counter()
            spec = problem(name, Path(tmp))
            synthetic = name == "synthetic"
            if synthetic:
                print(f"{name}: data made in {time.perf_counter() - t0:.1f} s", file=sys.stderr,
                      flush=True)
            fits = {v: timed(spec, kw, args.repeats, args.limit,
                             args.limit / 3 if synthetic else None)
                    for v, kw in VARIANTS.items()}
            exact = exact_ml(spec)
            text = report(name, spec, fits, exact)
            print(text, flush=True)
            blocks.append(text)
            rows.append({"problem": name, "fits": fits, "exact_ml": exact})
    header = "# statsmodels MixedLM (ML) timings\n\n" + "\n".join(
        f"{k}: {v}" for k, v in meta.items())
    out = Path(args.out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + "\n\n" + "\n".join(blocks) + "\n"
                   + "".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
