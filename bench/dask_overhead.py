"""Per-step cost of the Dask backend against the local one, by partition count.

    python bench/dask_overhead.py --n 1000000 --d 50 --samples 8 --partitions 2 4 8 16

Builds a synthetic logistic data set (Parquet), then times the data pass of one optimisation step
(``Model.log_joint_grad`` on S draws: ship the draws, run the kernel on every partition, gather and
reduce) with the local backend and with a LocalCluster of 2 single-threaded worker processes on
loopback, for each partition count. Prints one JSON object per configuration (median of --steps
calls after a warm-up) and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from vireg.bench import median_ms


def time_steps(model, samples: int, steps: int) -> float:
    rng = np.random.default_rng(0)
    U = rng.standard_normal((samples, model.n_params)) * 0.01
    model.log_joint_grad(U)
    return median_ms(lambda: model.log_joint_grad(U), steps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=50)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--partitions", type=int, nargs="+", default=[2, 4, 8, 16])
    args = ap.parse_args()
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from minibatch import make_data

    from vireg.api import build_model
    from vireg.config import config_from_dict

    data = Path(f"synthetic_{args.n}x{args.d}.parquet")
    if not data.exists():
        make_data(data, args.n, args.d)
    base = {"data": {"path": str(data.resolve()), "response": "y",
                     "covariates": [f"x{j}" for j in range(args.d)]},
            "model": {"family": "bernoulli"}, "inference": {"samples": args.samples}}
    rows = []
    model = build_model(config_from_dict(base))
    model.warm_up()
    local = time_steps(model, args.samples, args.steps)
    rows.append({"backend": "local", "partitions": None, "ms_per_step": round(local, 2)})
    print(json.dumps(rows[-1]), flush=True)
    for k in args.partitions:
        cfg = config_from_dict({**base, "runtime": {"backend": "dask", "partitions": k}})
        t0 = time.perf_counter()
        model = build_model(cfg)
        model.warm_up()
        setup = time.perf_counter() - t0
        ms = time_steps(model, args.samples, args.steps)
        model.rows.close()
        rows.append({"backend": "dask", "partitions": k, "ms_per_step": round(ms, 2),
                     "overhead_ms": round(ms - local, 2), "ratio": round(ms / local, 2),
                     "setup_s": round(setup, 1)})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| backend | partitions | ms per step | vs local | set-up s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['partitions'] or '-'} | {r['ms_per_step']} | "
              f"{r.get('ratio', 1.0)}x | {r.get('setup_s', '-')} |")


if __name__ == "__main__":
    main()
