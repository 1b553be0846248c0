"""Adapters, one module per source API, registered here explicitly.

Each module maps what its documented API does beyond plain transcoding (multipart uploads,
token endpoints, its own error body) onto the gRPC services, with no business logic.
"""

from gateway.apis import (
    claid,
    claid_edit,
    clara,
    clara_scenes,
    clyman,
    oauth2,
    scenario,
    scenario_archive,
    sidefx,
)
from gateway.apis.registry import ApiModule

#: The APIs `build_app` installs by default, in precedence order.
DEFAULT_APIS: tuple[ApiModule, ...] = (
    oauth2.API,
    scenario.API,
    scenario.JOBS_API,
    scenario_archive.API,
    clara.API,
    clara_scenes.API,
    claid.API,
    claid_edit.API,
    clyman.API,
    sidefx.API,
)

__all__ = ["DEFAULT_APIS", "ApiModule"]
