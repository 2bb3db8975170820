"""Settings that must be in place before Numba (and its OpenMP runtime) first loads.

Set as environment defaults when vireg is imported, so a user's own setting always wins:

- ``NUMBA_CACHE_DIR``: compiled kernels go to a per-user cache folder (``$XDG_CACHE_HOME`` or
  ``~/.cache`` on Linux, ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows, then
  ``vireg/numba``), never into the installed package: site-packages may be read-only, and files
  written there are unknown to pip, so that an uninstall leaves them behind (a later editable
  install of the same package was then shadowed by the leftover folder).
- ``OMP_WAIT_POLICY=PASSIVE``: OpenMP's worker threads sleep as soon as a parallel region ends
  instead of spinning. Spinning threads take the core from whatever else runs there, and from
  each other when a core is busy: on 2 cores with one other busy process, a 100,000 x 50
  logistic step took 9-14 ms with 2 spinning threads against 6-7 ms with 1 thread; with passive
  waiting 5.5-5.9 ms, and 4.3-4.6 ms on the quiet machine (spinning: 4.5-5.2 ms in the same
  runs; ``bench/under_load.py``).

Neither setting takes effect if Numba (or another OpenMP user) was loaded before vireg.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def user_cache_dir() -> Path:
    """The per-user cache folder of vireg's compiled kernels."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vireg" / "numba"


def set_defaults() -> None:
    os.environ.setdefault("NUMBA_CACHE_DIR", str(user_cache_dir()))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
