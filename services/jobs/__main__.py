"""`python -m services.jobs`: run the jobs service until SIGTERM."""

from services.jobs.main import build
from services.runtime.config import load_service_config
from services.runtime.server import run

if __name__ == "__main__":
    run(load_service_config("jobs"), build)
