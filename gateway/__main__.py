"""`python -m gateway`: the gateway on uvicorn (uvloop, httptools) until SIGTERM or SIGINT.

uvicorn handles the signals: it stops accepting connections, lets in-flight requests finish
within the grace period, then runs the app's lifespan shutdown (channels, database).
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

import uvicorn

from gateway.app import build_app
from services.runtime import tracing
from services.runtime.config import load_gateway_config
from services.runtime.errors import ConfigError
from services.runtime.logs import configure_logging


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    del signum, frame
    raise SystemExit(0)


def main() -> int:
    """Runs the gateway; answers 2 when the configuration is unusable."""
    try:
        config = load_gateway_config()
    except ConfigError as exc:
        print(f"kiln gateway: {exc}", file=sys.stderr)
        return 2
    configure_logging("gateway", config.log_level, config.log_format)
    tracing.configure("gateway", config.tracing)
    try:
        app = build_app(config)
    except ConfigError as exc:
        logging.getLogger("kiln.gateway").error("cannot start: %s", exc)
        return 2
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            # Our middleware writes the structured access log; uvicorn's logs go through
            # the JSON handler configure_logging installed.
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=int(config.shutdown_grace_seconds),
            server_header=False,
        )
    )
    # uvicorn drains and shuts down on SIGTERM/SIGINT, restores the handlers it found, then
    # re-raises the signal. Finding these, a completed graceful shutdown exits 0, as the
    # services do, instead of dying by the signal after the work is done.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    server.run()
    tracing.shutdown()
    # uvicorn exits 3 when the lifespan start-up failed (bad key, unreachable database).
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
