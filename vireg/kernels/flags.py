"""Compiler flags for every kernel, in one place.

``FASTMATH`` is the safe subset: it lets LLVM reassociate and contract the reductions (so dot
products vectorise) and use fast approximations of transcendental functions, but keeps the IEEE
handling of NaN and infinity ("nnan"/"ninf" are left out), so divergence is still detected.
Reassociation is deterministic for a given binary and loop shape, so results stay identical at any
thread count: the thread count never changes which rows a chunk holds or the order of the reduction.
"""

FASTMATH = set({"nsz", "arcp", "contract", "afn", "reassoc"})
# error_model="numpy": float division follows IEEE (x/0 -> inf) instead of raising Python's
# ZeroDivisionError; the zero check that Python semantics need blocks SIMD in every loop with a
# division (measured: the logistic transcendental loop ran 4.6x slower with it). Non-finite values
# are caught by the engine, which checks every step.
JIT_OPTIONS = {"cache": True, "fastmath": FASTMATH, "nogil": True, "error_model": "numpy"}
TARGET_CHUNK_BYTES = 256 * 1024


def chunk_rows_for(n_rows: int, n_cols: int) -> int:
    """Rows per parallel chunk, fixed by the data shape alone (never by the thread count).

    About 256 KiB of X per chunk: large enough to amortise the per-chunk partials, small enough to
    give every core work on moderate data.
    """
    rows = TARGET_CHUNK_BYTES // (8 * max(n_cols, 1))
    return int(min(max(rows, 256), 2048))


PARALLEL_MIN_WORK = 1 << 20


def use_parallel(n_rows: int, n_cols: int, n_draws: int) -> bool:
    """Whether a step has enough work (rows x draws x columns) to use the parallel build."""
    n_chunks = -(-n_rows // chunk_rows_for(n_rows, n_cols))
    return n_chunks >= 2 and n_rows * n_draws * (n_cols + 2) >= PARALLEL_MIN_WORK
