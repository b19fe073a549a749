"""Hand memory the daemon no longer uses back to the operating system.

Start-up (imports, YAML and pydantic parsing of the config, register-map loading) leaves
freed blocks in glibc's heap that it keeps by default; on a 1 GB Pi with a 60 MB budget that
slack matters. `malloc_trim(0)` returns it. Elsewhere (not glibc) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger(__name__)


def release_free_memory() -> bool:
    """Collect garbage and trim the C heap; True if the C library could be asked."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True
