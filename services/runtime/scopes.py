"""Which scope each RPC needs: `<service>.read` for reads, `<service>.write` for the rest.

A method is a read when its name says so (`Get…`, `List…`, `Query…`, `Watch…`, `Read…`,
`Subscribe…`, `BatchGet…`); `write` covers reads too, so a client granted `objects.write` needs
no second scope to read what it wrote. `*` grants every scope but the worker's (`jobs.worker`,
always granted by name). `WorkerService` needs the worker scope; the calls render workers make
for a job's tenant (`WORKER_CALLS`) accept it beside the ordinary scope.

A call that needs another service acts with the caller's token there too, so a capability
spanning services needs each one's scope (a scene render: `render.write`, `objects.read`,
`jobs.write`); docs/apis/sidefx.md lists them.
"""

from __future__ import annotations

from services.runtime.auth import WORKER_SCOPE

READ_PREFIXES = ("Get", "List", "Query", "Watch", "Read", "Subscribe", "BatchGet")
WORKER_SERVICE = "kiln.jobs.v1.WorkerService"
WORKER_CALLS = frozenset(
    {
        "/kiln.objects.v1.SceneService/CommitImport",
        "/kiln.objects.v1.SceneService/GetSceneContent",
    }
)


def required_scopes(method: str) -> tuple[str, ...]:
    """The scopes of which a caller of `method` (`/pkg.Service/Method`) must hold one; empty
    for methods outside Kiln's packages (health, reflection)."""
    service, _, name = method.strip("/").partition("/")
    parts = service.split(".")
    if len(parts) < 4 or parts[0] != "kiln":
        return ()
    if service == WORKER_SERVICE:
        return (WORKER_SCOPE,)
    domain = parts[1]
    scopes: tuple[str, ...] = (f"{domain}.write",)
    if name.startswith(READ_PREFIXES):
        scopes = (f"{domain}.read", *scopes)
    if method in WORKER_CALLS:
        scopes = (*scopes, WORKER_SCOPE)
    return scopes
