"""`python -m services.render`: run the render service until SIGTERM."""

from services.runtime.malloc import cap_arenas

# Two arenas for the threads that edit images: about 20 MiB less of the image benchmark's
# 310 MiB peak per render worker (docs/performance.md), as imgproxy advises for libvips servers.
# Before the imports below, which start threads.
cap_arenas(2)

from services.render.main import build  # noqa: E402
from services.runtime.config import load_service_config  # noqa: E402
from services.runtime.server import run  # noqa: E402

if __name__ == "__main__":
    run(load_service_config("render"), build)
