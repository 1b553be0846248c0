"""The render process caps glibc's malloc arenas (services/runtime/malloc.py, applied in
services/render/__main__.py), so the threads that edit images share two heaps instead of one
each."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Eight threads each malloc while all are alive, so glibc hands each a new arena as long as its
# limit allows; malloc_info then lists one <heap> per arena.
_COUNT_HEAPS = textwrap.dedent(
    """
    import ctypes, ctypes.util, sys, tempfile, threading
    if sys.argv[1] == "render":
        import services.render.__main__  # noqa: F401  (the cap is applied on import)
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.fopen.restype = ctypes.c_void_p
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    together = threading.Barrier(8)
    def allocate():
        block = libc.malloc(4096)
        together.wait()
        libc.free(block)
    threads = [threading.Thread(target=allocate) for _ in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
    with tempfile.NamedTemporaryFile(suffix=".xml") as out:
        stream = libc.fopen(out.name.encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        print(open(out.name).read().count("<heap nr="))
    """
)


def _heaps(mode: str, **env: str) -> int:
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    environ.update(env, PYTHONPATH=f"{REPO / 'gen'}:{REPO}")
    done = subprocess.run(
        [sys.executable, "-c", _COUNT_HEAPS, mode],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_the_render_process_uses_at_most_two_arenas() -> None:
    assert _heaps("plain") > 2  # without the cap every thread gets its own
    assert _heaps("render") <= 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_an_operators_malloc_arena_max_wins() -> None:
    assert _heaps("render", MALLOC_ARENA_MAX="4") == 4
