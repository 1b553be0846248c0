"""glibc's allocator settings that a process must choose before its first threads start."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_ARENA_MAX = -8  # glibc's mallopt parameter number


def cap_arenas(count: int) -> None:
    """At most `count` glibc malloc arenas, unless MALLOC_ARENA_MAX says otherwise.

    glibc gives each new thread that allocates an arena of its own (up to 8 per core) and keeps
    what it freed there, so a process whose threads take turns with large buffers (libvips
    edits) grows its RSS with every thread that ever held one. The cap only limits arenas made
    later: call this before any import starts a thread. Not glibc (musl has no arenas): nothing.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return  # glibc has read it already, and the operator's choice wins
    name = ctypes.util.find_library("c")
    if name is None:
        return
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, count)
