"""numba set-up shared by the compiled CPU kernels (:mod:`.raycast_numba`,
:mod:`.triangulate_numba`). Imports nothing heavy: numba itself is imported only by the kernel
modules, when a kernel first runs."""
from __future__ import annotations

import importlib.util
from typing import Any


def numba_available() -> bool:
    """Whether numba can be imported (does not import it)."""
    return importlib.util.find_spec('numba') is not None


def configure_threading(numba: Any) -> None:
    """Prefer the OpenMP threading layer (numba's default order tries TBB first, whose old
    libtbb here only warns), unless the user chose one (NUMBA_THREADING_LAYER)."""
    if numba.config.THREADING_LAYER == 'default':
        numba.config.THREADING_LAYER_PRIORITY = ['omp', 'workqueue', 'tbb']
