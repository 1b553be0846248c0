"""`python -m services.render`: run the render service until SIGTERM."""

import ctypes
import ctypes.util
import os

_M_ARENA_MAX = -8  # glibc's mallopt parameter number
_RENDER_MALLOC_ARENAS = 2


def _cap_malloc_arenas() -> None:
    """At most two glibc malloc arenas, unless MALLOC_ARENA_MAX says otherwise.

    Image edits allocate their buffers on libvips' and the pool's threads; glibc gives each new
    thread an arena of its own (up to 8 per core) and keeps what they freed, so a worker's peak
    RSS grows with the threads that ever edited: about 20 MiB of the image benchmark's 310 MiB
    peak per render worker (docs/performance.md). imgproxy, a libvips server, gives the same
    advice. The cap only limits arenas made later, so it runs before any import starts a thread.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return  # glibc has read it already
    name = ctypes.util.find_library("c")
    if name is None:  # not glibc (musl has no arenas to cap)
        return
    libc = ctypes.CDLL(name)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, _RENDER_MALLOC_ARENAS)


_cap_malloc_arenas()

from services.render.main import build  # noqa: E402  (after the cap: imports start threads)
from services.runtime.config import load_service_config  # noqa: E402
from services.runtime.server import run  # noqa: E402

if __name__ == "__main__":
    run(load_service_config("render"), build)
