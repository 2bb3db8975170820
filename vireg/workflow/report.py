"""Rich tables of the workflow commands, on standard error (results go to standard output)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _f(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def loo_table(r) -> None:
    console = Console(stderr=True)
    how = "corrected for q by p/q" if r.corrected else "taken as posterior draws"
    sub = (f"{r.n_subsample:,} of {r.n_obs:,} observations (difference estimator)"
           if r.n_subsample else f"{r.n_obs:,} observations")
    table = Table(title=f"PSIS-LOO of {r.label}", title_justify="left")
    table.add_column("")
    table.add_column("estimate", justify="right")
    table.add_column("se", justify="right")
    if r.n_subsample:
        table.add_column("subsampling se", justify="right")
    rows = [("elpd_loo", r.elpd_loo, r.se), ("p_loo", r.p_loo, r.p_loo_se),
            ("looic", r.looic, r.looic_se)]
    for name, v, se in rows:
        extra = [] if not r.n_subsample else [
            _f(r.subsampling_se, 2) if name == "elpd_loo" else
            (_f(2 * r.subsampling_se, 2) if name == "looic" else "")]
        table.add_row(name, _f(v), _f(se), *extra)
    console.print(table)
    console.print(f"{r.n_draws:,} draws from q, {how}; {sub}; Monte Carlo se of elpd_loo "
                  f"{r.mcse:.2f}", markup=False, highlight=False)
    good, ok, bad = r.k_counts
    total = good + ok + bad
    console.print(f"Pareto k: {good:,} good (<= 0.5), {ok:,} ok (<= {r.k_threshold:.2f}), "
                  f"{bad:,} bad of {total:,}; max {r.khat_max:.2f}"
                  + ("" if r.khat_posterior is None else
                     f"; k-hat of the draws (p/q) {r.khat_posterior:.2f}"))
    for line in r.messages():
        console.print(line, markup=False, highlight=False)


def compare_table(rows, method: str) -> None:
    console = Console(stderr=True)
    table = Table(title=f"model comparison by PSIS-LOO (weights: {method})", title_justify="left")
    for col in ("rank", "run", "elpd_loo", "se", "elpd_diff", "se_diff", "p_loo", "weight",
                "bad k"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in rows:
        table.add_row(str(r.rank), r.run, _f(r.elpd_loo), _f(r.se), _f(r.elpd_diff),
                      _f(r.se_diff), _f(r.p_loo), f"{r.weight:.3f}", str(r.k_bad))
    console.print(table)
    for r in rows:
        if r.warning:
            console.print(f"warning: {r.run} has {r.k_bad} observation(s) with a Pareto k above "
                          "the threshold: its elpd_loo is unreliable", markup=False,
                          highlight=False)
    if len(rows) > 1 and abs(rows[1].elpd_diff) < 2 * rows[1].se_diff:
        console.print(f"the difference between {rows[0].run} and {rows[1].run} is within 2 "
                      "se_diff: the data do not clearly prefer one", markup=False,
                      highlight=False)
