"""vireg's posterior against scikit-learn's point estimate, timed side by side on the same data.

    python bench/sklearn_compare.py [--n 100000] [--d 50] [--repeat 3] [--family auto]
                                    [--set key=value ...]

Synthetic logistic data (standard normal columns, two of them correlated at 0.95; true
coefficients N(0, 0.3^2)) written once to a temporary CSV. Each repeat times, alternately,
scikit-learn's ``LogisticRegression(C=1, solver="lbfgs")`` fit on the arrays in memory, and
vireg's fit of the same rows: ``fit_seconds`` (the search for the mode, the optimisation and
its stopping tests; rows already read, kernels already loaded). Prints one JSON line per repeat
with both times, their ratio, vireg's steps and passes over the data.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vireg  # noqa: E402


def synthetic(n: int, d: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X[:, 1] = 0.95 * X[:, 0] + np.sqrt(1 - 0.95**2) * X[:, 1]
    beta = rng.normal(0.0, 0.3, d)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(0.3 + X @ beta)))).astype(float)
    return X, y


def main() -> None:
    from sklearn.linear_model import LogisticRegression

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--family", default="auto")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    X, y = synthetic(args.n, args.d)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.csv"
        names = [f"x{j}" for j in range(args.d)]
        np.savetxt(path, np.column_stack([y, X]), delimiter=",", comments="",
                   header=",".join(["y", *names]))
        cfg = {"data": {"path": str(path), "response": "y"}, "model": {"family": "bernoulli"},
               "inference": {"family": args.family}, "output": {"draws": 0, "psis_draws": 0}}
        vireg.fit(cfg, overrides=args.set)  # kernels loaded (compiled once per machine)
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000).fit(X, y)
            sk = time.perf_counter() - t0
            r = vireg.fit(cfg, overrides=args.set)
            print(json.dumps({"n": args.n, "d": args.d, "family": r.config.inference.family,
                              "sklearn_s": round(sk, 4), "vireg_fit_s": round(r.fit_seconds, 4),
                              "ratio": round(r.fit_seconds / sk, 2), "steps": r.steps,
                              "passes": r.extras["passes"], "samples": r.config.inference.samples,
                              "converged": r.converged}), flush=True)


if __name__ == "__main__":
    main()
