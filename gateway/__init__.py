"""Kiln's HTTP/JSON gateway: documented REST paths in front of the gRPC services.

Public surface: `build_app(config)` (an ASGI app) and `python -m gateway` (the process).
"""

from gateway.app import build_app

__all__ = ["build_app"]
