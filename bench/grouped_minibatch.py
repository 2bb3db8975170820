"""Minibatch fits of models with group terms against the full-batch fit of the same data.

    python bench/grouped_minibatch.py [--n 20000] [--d 1] [--groups 30] [--crossed 12]
                                      [--family gaussian|bernoulli|both]
                                      [--batch 500,2000,5000] [--out-of-core] [--out-file PATH]

Data: ``bench/multilevel.py``'s synthetic set (``(1 + x0 | g)`` over ``--groups`` levels, with
``--crossed L`` a second factor ``(1 | h)`` of L levels crossed with g), written to a temporary
folder (with ``--out-of-core`` read from the disk cache, ``data.groups``, in both fits). Each
family is fitted with ``vireg.fit`` full batch, then with ``inference.batch_size``
at each batch size (blocks of whole g groups, ``minibatch.GroupedMinibatch``). Reported per
minibatch fit: converged, steps, data passes, seconds, and against the full-batch posterior the
largest |mean error| in full-batch sds of the fixed effects, sigma, the group sds and
correlations, and the group effects, and the largest |sd ratio - 1| of the reported quantities
and of the group effects. Results (a Markdown table with date, commit, machine and command) go
to ``bench/results/grouped_minibatch_<n>_g<groups>[_h<L>]_<commit>.txt`` (``--out-file``).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from machine import machine
from multilevel import make_data, write_config

ROOT = Path(__file__).resolve().parents[1]


def fit(config: Path, batch: int | None):
    import vireg

    extra = [f"inference.batch_size={batch}"] if batch else []
    t0 = time.perf_counter()
    result = vireg.fit(config, overrides=extra + ["output.draws=4000"])
    return result, time.perf_counter() - t0


def errors(result, full) -> dict:
    """Largest |mean error| (full-batch sds) by kind, and largest |sd ratio - 1|."""
    ref = {r["parameter"]: r for r in full.summary_rows()}
    worst = {"fixed": 0.0, "sigma": 0.0 if "sigma" in ref else None, "group sds": 0.0,
             "effects": 0.0}
    ratio = {"reported": 0.0, "effects": 0.0}
    for r in result.summary_rows():
        f = ref[r["parameter"]]
        kind = ("group sds" if r["parameter"].startswith(("sd(", "cor(")) else
                "sigma" if r["parameter"] == "sigma" else "fixed")
        worst[kind] = max(worst[kind], abs(r["mean"] - f["mean"]) / f["sd"])
        ratio["reported"] = max(ratio["reported"], abs(r["sd"] / f["sd"] - 1))
    for g, f in zip(result.group_rows, full.group_rows, strict=True):
        worst["effects"] = max(worst["effects"], abs(g["mean"] - f["mean"]) / f["sd"])
        ratio["effects"] = max(ratio["effects"], abs(g["sd"] / f["sd"] - 1))
    return {**worst, "sd ratio": ratio}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--d", type=int, default=1)
    p.add_argument("--groups", type=int, default=30)
    p.add_argument("--crossed", type=int, default=12)
    p.add_argument("--family", choices=["gaussian", "bernoulli", "both"], default="both")
    p.add_argument("--batch", default="500,2000,5000")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out-of-core", action="store_true")
    p.add_argument("--out-file", default=None)
    args = p.parse_args()
    meta = machine()
    families = ["gaussian", "bernoulli"] if args.family == "both" else [args.family]
    lines = ["| family | batch | converged | steps | data passes | s | fixed | sigma | group sds "
             "| effects | sd ratio - 1 (reported / effects) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    work = Path(tempfile.mkdtemp(prefix="vireg-bench-grouped-minibatch-"))
    try:
        for family in families:
            data, config = work / f"{family}.csv", work / f"{family}.yaml"
            make_data(data, family, args.n, args.d, args.groups, args.seed, args.crossed)
            write_config(config, data, family, args.d, args.crossed, args.out_of_core)
            full, seconds = fit(config, None)
            lines.append(f"| {family} | full | {full.converged} | {full.steps} | "
                         f"{full.extras['data_passes']} | {seconds:.1f} | | | | | |")
            print(lines[-1], flush=True)
            for batch in (int(b) for b in args.batch.split(",")):
                mini, seconds = fit(config, batch)
                e = errors(mini, full)
                lines.append(
                    f"| {family} | {batch:,} | {mini.converged} | {mini.steps} | "
                    f"{mini.extras['data_passes']} | {seconds:.1f} | {e['fixed']:.3f} | "
                    f"{'-' if e['sigma'] is None else format(e['sigma'], '.3f')} | "
                    f"{e['group sds']:.3f} | {e['effects']:.3f} | "
                    f"{e['sd ratio']['reported']:.3f} / {e['sd ratio']['effects']:.3f} |")
                print(lines[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    target = Path(args.out_file) if args.out_file else (
        ROOT / "bench" / "results" / (f"grouped_minibatch_{args.n}_g{args.groups}"
                                      + (f"_h{args.crossed}" if args.crossed else "")
                                      + ("_out_of_core" if args.out_of_core else "")
                                      + f"_{meta['commit']}.txt"))
    header = "\n".join(f"{k}: {v}" for k, v in meta.items())
    target.write_text(header + "\n\n" + "\n".join(lines) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
