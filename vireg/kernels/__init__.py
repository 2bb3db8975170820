"""Every Numba-compiled function, and nothing else: pure functions on arrays, no I/O.

The kernels are compiled (or loaded from the on-disk cache) when their modules are first
imported and called, so only code paths that fit a model import them; ``vireg --help`` never
does.
"""
