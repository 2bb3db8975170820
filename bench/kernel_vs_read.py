"""The data kernel against a plain streaming read of the same array, alternated in one process.

    python bench/kernel_vs_read.py [--n 1000000] [--d 100] [--samples 1] [--model logistic]
                                   [--dtype float64] [--rounds 5] [--calls 7]

On a shared machine the read bandwidth drifts between runs (33-65 GB/s measured for the same
800 MB array), so a kernel timed in one run and a read timed in another give a meaningless ratio.
This alternates the two: in each round, the median of ``calls`` kernel passes, then the median of
``calls`` reads; it prints the fastest and the median round of each and their ratio (the kernel's
efficiency against the read of X). The kernel pass is the data kernel alone (no draws, priors or
optimiser; `vireg bench` times the whole step).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from vireg.bench import add_kernel_problem_args, kernel_problem, median_ms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_kernel_problem_args(p)
    args = p.parse_args()

    from vireg.kernels import likelihood
    from vireg.kernels.bandwidth import streaming_sum

    Z, y, U, chunk, name = kernel_problem(args.model, args.n, args.d, args.samples, args.dtype)
    kernel = getattr(likelihood, name)

    def run_kernel():
        kernel(Z, y, U, True, chunk, True)

    def run_read():
        streaming_sum(Z, chunk)

    run_kernel()
    run_read()
    kernel_ms, read_ms = [], []
    for _ in range(args.rounds):
        kernel_ms.append(median_ms(run_kernel, args.calls))
        read_ms.append(median_ms(run_read, args.calls))
    out = {**vars(args), "bytes": Z.nbytes,
           "kernel_ms_min": min(kernel_ms), "kernel_ms_median": float(np.median(kernel_ms)),
           "read_ms_min": min(read_ms), "read_ms_median": float(np.median(read_ms)),
           "read_gb_s_best": Z.nbytes / (min(read_ms) * 1e-3) / 1e9,
           "efficiency_min": min(read_ms) / min(kernel_ms),
           "efficiency_median": float(np.median(read_ms) / np.median(kernel_ms))}
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
