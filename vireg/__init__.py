"""vireg: Bayesian linear and logistic regression by variational inference.

    import vireg
    result = vireg.fit("configs/wells.yaml")
    result.summary_rows()

The public names are imported lazily so that ``vireg --help`` never loads NumPy or Numba.
"""

from vireg.environment import set_defaults

set_defaults()  # before Numba loads: kernel cache folder, OpenMP wait policy

__version__ = "0.1.0"
__all__ = ["fit", "iter_fit", "load_config", "FitResult", "Config", "InputError", "FitError"]


def __getattr__(name):
    if name in ("fit", "iter_fit", "FitResult"):
        from vireg import api

        return getattr(api, name)
    if name in ("load_config", "Config"):
        from vireg import config

        return getattr(config, name)
    if name in ("InputError", "FitError"):
        from vireg import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'vireg' has no attribute {name!r}")
