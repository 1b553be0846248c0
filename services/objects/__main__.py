"""`python -m services.objects`: run the objects service until SIGTERM."""

from services.objects.main import build
from services.runtime.config import load_service_config
from services.runtime.server import run

if __name__ == "__main__":
    run(load_service_config("objects"), build)
