"""Minibatch VI against the full-batch fit on a synthetic logistic problem.

    python bench/minibatch.py --n 10000000 --d 50 --batch 100000 [--family meanfield]

Writes the data to a Parquet file once (``--data``), then fits it with ``vireg.fit`` twice, full
batch and with ``inference.batch_size``, and prints one JSON object: times, steps, passes over the
data, and the largest differences of the minibatch posterior from the full-batch one (means in
full-batch posterior sds, sds as ratios).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def make_data(path: Path, n: int, d: int, seed: int = 1) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    beta = rng.standard_normal(d) * 0.3
    writer = None
    for start in range(0, n, 1_000_000):
        m = min(1_000_000, n - start)
        X = rng.standard_normal((m, d))
        y = (rng.random(m) < 1.0 / (1.0 + np.exp(-(X @ beta - 0.5)))).astype(np.int8)
        table = pa.table({"y": y, **{f"x{j}": X[:, j] for j in range(d)}})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--d", type=int, default=50)
    ap.add_argument("--batch", type=int, default=100_000)
    ap.add_argument("--family", default="meanfield")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--skip-full", action="store_true", help="minibatch fits only")
    ap.add_argument("--full-json", type=Path, default=None, help="an earlier full-batch result")
    args = ap.parse_args()
    import vireg

    data = args.data or Path(f"synthetic_{args.n}x{args.d}.parquet")
    if not data.exists():
        t0 = time.perf_counter()
        make_data(data, args.n, args.d)
        print(f"wrote {data} in {time.perf_counter() - t0:.1f} s", flush=True)
    cfg = {"data": {"path": str(data.resolve()), "response": "y"},
           "model": {"family": "bernoulli"},
           "inference": {"family": args.family},
           "output": {"draws": 0, "psis_draws": 0}}
    out = {"n": args.n, "d": args.d, "batch_size": args.batch, "family": args.family}
    runs = {}
    for name, extra in (("full", {}), ("minibatch", {"batch_size": args.batch}),
                        ("minibatch_no_cv", {"batch_size": args.batch, "control_variate": False})):
        if name == "full" and (args.skip_full or args.full_json):
            continue
        c = {**cfg, "inference": {**cfg["inference"], **extra}}
        t0 = time.perf_counter()
        r = vireg.fit(c)
        total = time.perf_counter() - t0
        runs[name] = {"mean": r.summary.mean.tolist(), "sd": r.summary.sd.tolist()}
        out[name] = {"total_s": round(total, 2), "fit_s": round(r.fit_seconds, 2),
                     "steps": r.steps, "data_passes": r.extras["data_passes"],
                     "converged": r.converged}
        print(json.dumps({name: out[name]}), flush=True)
    if args.full_json:
        full = json.loads(args.full_json.read_text())
        runs["full"] = full["runs"]["full"]
        out["full"] = full["full"]
    for name in ("minibatch", "minibatch_no_cv"):
        if "full" in runs and name in runs:
            fm, fs = np.array(runs["full"]["mean"]), np.array(runs["full"]["sd"])
            m, s = np.array(runs[name]["mean"]), np.array(runs[name]["sd"])
            out[name]["max_mean_error_sd"] = float(np.max(np.abs(m - fm) / fs))
            out[name]["sd_ratio_range"] = [float((s / fs).min()), float((s / fs).max())]
            out[name]["speedup_vs_full"] = round(out["full"]["fit_s"] / out[name]["fit_s"], 1)
    out["runs"] = runs
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=1))
    Path(f"minibatch_{args.n}x{args.d}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main()
