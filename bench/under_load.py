"""A fit's speed on a shared machine: quiet, and beside busy processes that each keep a core busy.

    python bench/under_load.py CONFIG [--busy N] [--threads 1 2 ...] [--set key=value ...] [--repeat R]

For each thread count, times the same fit (``fit_seconds``: the optimisation, after the kernels
are loaded) with no other load, then with N busy-loop processes running beside it (started
before the fit, stopped after it). Prints one JSON line per run: threads, busy, steps,
fit_seconds, ms_per_step. Each run is a fresh process, so that the threading layer's environment
(e.g. OMP_WAIT_POLICY) is that of the run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

RUN = """
import json, sys, vireg
r = vireg.fit(sys.argv[1], overrides=sys.argv[3:] + ["runtime.threads=" + sys.argv[2],
                                                     "output.draws=0", "output.psis_draws=0"])
print(json.dumps({"steps": r.steps, "fit_seconds": r.fit_seconds,
                  "ms_per_step": 1e3 * r.fit_seconds / max(r.steps, 1)}))
"""


def busy(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def run_fit(config: str, threads: int, sets: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", RUN, config, str(threads), *sets],
                         capture_output=True, text=True, check=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--busy", type=int, default=1)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    run_fit(args.config, 1, args.set)  # kernels compiled and cached before timing
    for _ in range(args.repeat):
        for load in (0, args.busy):
            stop = mp.Event()
            procs = [mp.Process(target=busy, args=(stop,)) for _ in range(load)]
            for p in procs:
                p.start()
            time.sleep(0.5 if load else 0.0)
            try:
                for t in args.threads:
                    row = run_fit(args.config, t, args.set)
                    print(json.dumps({"threads": t, "busy": load,
                                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                                      **row}), flush=True)
            finally:
                stop.set()
                for p in procs:
                    p.join()


if __name__ == "__main__":
    main()
