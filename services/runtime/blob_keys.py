"""Where things live in the bucket: the one place every service agrees on object keys.

An asset's bytes sit at a key derived from its tenant and id alone, so a retried upload
overwrites instead of duplicating, and a service that may read an asset (the archive worker)
finds it without asking for its key.

Every job output sits under its job's prefix, named by the worker: a retried attempt writes the
same keys again (overwriting, never duplicating), cancelling or purging a job removes the
prefix, and the jobs service can serve any output knowing only the job id and the name.

Temporary results (an image edit without a destination) sit under `tmp/`, which the render
service sweeps by age: they are meant to last a day, not a job's retention.
"""

from __future__ import annotations

import re

from services.runtime.errors import InvalidArgument

#: Output names are plain file names: no separators, no dot-only names, no control characters.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,199}")


def asset_key(tenant: str, asset_id: str) -> str:
    """The object key of an asset's bytes. The tenant is part of it so a bucket listing per
    tenant (backups, purges) is cheap."""
    return f"tenants/{tenant}/assets/{asset_id}"


def output_prefix(job_id: str) -> str:
    """The prefix every output of `job_id` lives under, ending in '/'."""
    return f"jobs/{job_id}/outputs/"


def output_key(job_id: str, name: str) -> str:
    """The object key of output `name` of `job_id`; refuses names that could leave the prefix."""
    check_output_name(name)
    return output_prefix(job_id) + name


TMP_PREFIX = "tmp/"


def tmp_key(tenant: str, scope: str, name: str) -> str:
    """The key of a temporary result: `scope` groups one request's files (a job id, or a
    random token for a synchronous call) so a retry overwrites them."""
    check_output_name(name)
    check_output_name(scope)
    return f"{TMP_PREFIX}{tenant}/{scope}/{name}"


def check_output_name(name: str) -> None:
    if not _NAME.fullmatch(name) or name.endswith((".", " ")):
        raise InvalidArgument(
            f"output name {name!r} must be a plain file name (letters, digits, '.', '_', '-', "
            "' '; at most 200 characters)",
            field="name",
        )
