"""`python -m services.render`: run the render service until SIGTERM."""

from services.render.main import build
from services.runtime.config import load_service_config
from services.runtime.server import run

if __name__ == "__main__":
    run(load_service_config("render"), build)
