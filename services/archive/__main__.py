"""`python -m services.archive`: run the archive service until SIGTERM."""

from services.archive.main import build
from services.runtime.config import load_service_config
from services.runtime.server import run

if __name__ == "__main__":
    run(load_service_config("archive"), build)
