"""Where the time of one ``vireg fit`` goes, phase by phase, in one process (wall clock).

    python bench/end_to_end.py CONFIG [--set key=value ...]

Phases: importing vireg, reading the table, building the design matrix, setting up the model
(standardisation, Gram matrix, propriety checks), loading (or compiling) the kernels, the fit,
the diagnostics (ELBO and k-hat draws over the full data), and writing the four result files.
Process start-up (the Python interpreter itself) is not included: time ``vireg fit`` for that.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

t_start = time.perf_counter()
import vireg  # noqa: E402
from vireg import api, export  # noqa: E402
from vireg.assemble import model_of  # noqa: E402
from vireg.data import build_design, read_table  # noqa: E402

t_import = time.perf_counter() - t_start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    cfg = vireg.load_config(args.config, args.overrides)
    times = {"import_s": t_import}
    t = time.perf_counter()
    path = cfg.resolve_path(cfg.data.path)
    table = read_table(path)
    times["read_s"] = time.perf_counter() - t
    t = time.perf_counter()
    design = build_design(table, cfg.data.response, cfg.data.covariates, cfg.data.missing)
    times["design_s"] = time.perf_counter() - t
    t = time.perf_counter()
    cfg, model = model_of(cfg, design, cfg.model.intercept, None)
    times["model_setup_s"] = time.perf_counter() - t
    result = None
    for event in api.fit_model(cfg, model):
        if isinstance(event, api.Finished):
            result = event.result
    times["kernel_load_s"] = result.compile_seconds
    times["fit_s"] = result.fit_seconds
    times["diagnostics_s"] = result.diagnostics_seconds
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        export.write_results(result, Path(tmp) / "out", api.versions())
        times["write_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - t_start
    size = path.stat().st_size
    print(json.dumps({"config": args.config, "overrides": args.overrides, "rows": model.n_rows,
                      "columns": model.n_cov, "file_mb": round(size / 1e6, 1),
                      "read_mb_s": round(size / 1e6 / times["read_s"], 1), "steps": result.steps,
                      "converged": result.converged,
                      **{k: round(v, 3) for k, v in times.items()}}))


if __name__ == "__main__":
    main()
