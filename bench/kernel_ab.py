"""The data kernel of this checkout against the same kernel at another git revision, alternated
in one process (with a streaming read of X beside them).

    python bench/kernel_ab.py --rev REV [--n 1000000] [--d 100] [--samples 1] [--model logistic]
                              [--dtype float64] [--no-grad] [--rounds 5] [--calls 7]

On this shared machine timings move 30-50% between runs, so a before/after figure is only
meaningful when both kernels run in the same process, interleaved: this loads
``vireg/kernels/likelihood.py`` as it was at REV (with Numba's cache off, so that it cannot load
this checkout's machine code) beside the current one, checks that both give the same sums, and
prints the fastest and the median round of each. ``--no-grad`` times the pass without gradient
sums (the ELBO and k-hat draws).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import types
from pathlib import Path

import numpy as np

from vireg.bench import add_kernel_problem_args, kernel_problem, median_ms

REPO = Path(__file__).resolve().parents[1]
MODULE = "vireg/kernels/likelihood.py"


def kernels_at(rev: str) -> types.ModuleType:
    """The likelihood kernels module as it was at ``rev``, compiled afresh (cache off)."""
    src = subprocess.run(["git", "show", f"{rev}:{MODULE}"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    src = src.replace("from vireg.kernels.flags import JIT_OPTIONS\n",
                      "from vireg.kernels.flags import JIT_OPTIONS as _OPTIONS\n"
                      "JIT_OPTIONS = dict(_OPTIONS, cache=False)\n")
    module = types.ModuleType(f"likelihood_at_{rev}")
    exec(compile(src, f"{rev}:{MODULE}", "exec"), module.__dict__)
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", required=True)
    p.add_argument("--no-grad", action="store_true")
    add_kernel_problem_args(p)
    args = p.parse_args()

    from vireg.kernels import likelihood
    from vireg.kernels.bandwidth import streaming_sum

    Z, y, U, chunk, name = kernel_problem(args.model, args.n, args.d, args.samples, args.dtype)
    with_grad = not args.no_grad
    old, new = getattr(kernels_at(args.rev), name), getattr(likelihood, name)
    calls = {"read": lambda: streaming_sum(Z, chunk),
             "old": lambda: old(Z, y, U, True, chunk, with_grad),
             "new": lambda: new(Z, y, U, True, chunk, with_grad)}
    (G0, ll0), (G1, ll1) = calls["old"](), calls["new"]()
    np.testing.assert_allclose(ll1, ll0, rtol=1e-9)
    if with_grad:
        np.testing.assert_allclose(G1, G0, rtol=1e-9, atol=1e-9 * np.abs(G0).max())
    calls["read"]()
    times = {k: [] for k in calls}
    for _ in range(args.rounds):
        for k, fn in calls.items():
            times[k].append(median_ms(fn, args.calls))
    out = {**vars(args), **{f"{k}_ms_min": round(min(v), 3) for k, v in times.items()},
           **{f"{k}_ms_median": round(float(np.median(v)), 3) for k, v in times.items()}}
    out["new_over_old_min"] = round(out["new_ms_min"] / out["old_ms_min"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
