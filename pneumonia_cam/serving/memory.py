"""Keep a long-running CPU server's resident memory flat: tune glibc malloc before the first request."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt parameters (glibc malloc.h)
M_ARENA_MAX = -8


def bound_heap_growth(arena_max: int | None, mmap_threshold: int | None) -> bool:
    """glibc only (a no-op, returning False, elsewhere): cap the malloc arenas, of which every request thread
    would otherwise get its own, and serve every block >= `mmap_threshold` bytes by mmap, so freed activation
    and image buffers go back to the OS. Left dynamic, the threshold climbs to 32 MiB after the first large
    free and those buffers then stay in fragmented heaps: RSS creeps with every new batch size."""
    name = ctypes.util.find_library("c")
    if name is None or (arena_max is None and mmap_threshold is None):
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    settings = [(M_ARENA_MAX, arena_max), (M_MMAP_THRESHOLD, mmap_threshold)]
    applied = all(mallopt(param, int(value)) == 1 for param, value in settings if value is not None)
    log.info(
        f"malloc: arena_max={arena_max}, mmap_threshold={mmap_threshold} ({'set' if applied else 'refused'})"
    )
    return applied
