"""Every Numba-compiled function, and nothing else: pure functions on arrays, no I/O.

Importing this package compiles (or loads from the on-disk cache) the kernels, so only code paths
that fit a model import it; ``vireg --help`` never does.
"""
