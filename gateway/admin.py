"""`kiln clients …`: API clients in the gateway's store, for operators.

    kiln clients create CLIENT_ID --tenant T [--scopes "objects.read jobs.read"]
                                             [--rate R --burst B]
    kiln clients list [--tenant T]
    kiln clients disable CLIENT_ID | enable CLIENT_ID | delete CLIENT_ID
    kiln clients limit CLIENT_ID --rate R --burst B | --default
    kiln clients rotate CLIENT_ID

`create` and `rotate` print the new secret once, in their JSON answer: it is stored only as an
argon2 hash. Scopes default to `*` (every service, read and write; never `jobs.worker`). The
store is KILN_GATEWAY_DATABASE_URL's (the gateway's own SQLite file by default), migrated
first, so the command works before the gateway ever ran. Every answer is one JSON document on
stdout; errors go to stderr with exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
from collections.abc import Sequence
from typing import Any

from gateway.core import MIGRATIONS
from gateway.identity import ApiClient, ClientExists, ClientStore
from services.runtime import db
from services.runtime.auth import WORKER_SCOPE
from services.runtime.config import load_gateway_config
from services.runtime.errors import KilnError


def _client_json(client: ApiClient) -> dict[str, Any]:
    return {
        "client_id": client.client_id,
        "tenant": client.tenant,
        "scopes": sorted(client.scopes),
        "disabled": client.disabled,
        "created_at": client.created_at.isoformat(),
        "rate_per_second": client.rate_per_second,
        "rate_burst": client.rate_burst,
    }


class AdminError(Exception):
    """A command that cannot be done; the message is for the operator."""


async def _run(args: argparse.Namespace) -> Any:
    config = load_gateway_config()
    engine = db.create_engine(config.database_url)
    try:
        await db.migrate(engine, "gateway", MIGRATIONS)
        store = ClientStore(db.sessionmaker(engine))
        return await _command(store, args)
    finally:
        await engine.dispose()


async def _known(store: ClientStore, client_id: str) -> ApiClient:
    client = await store.get(client_id)
    if client is None:
        raise AdminError(f"no client {client_id!r}")
    return client


async def _command(store: ClientStore, args: argparse.Namespace) -> Any:
    if args.action == "create":
        scopes = args.scopes.split() if args.scopes else ["*"]
        if WORKER_SCOPE in scopes:
            raise AdminError(f"{WORKER_SCOPE} is for workers' own tokens, not API clients")
        secret = secrets.token_urlsafe(32)
        try:
            client = await store.create(args.client_id, secret, tenant=args.tenant, scopes=scopes)
        except ClientExists:
            raise AdminError(f"client {args.client_id!r} exists") from None
        if args.rate is not None or args.burst is not None:
            await store.set_rate_limit(client.client_id, args.rate, args.burst)
            client = await _known(store, client.client_id)
        return {**_client_json(client), "client_secret": secret}
    if args.action == "list":
        return [_client_json(c) for c in await store.list_clients(args.tenant)]
    if args.action in ("disable", "enable"):
        await _known(store, args.client_id)
        await store.set_disabled(args.client_id, args.action == "disable")
        return _client_json(await _known(store, args.client_id))
    if args.action == "rotate":
        secret = secrets.token_urlsafe(32)
        if not await store.set_secret(args.client_id, secret):
            raise AdminError(f"no client {args.client_id!r}")
        return {**_client_json(await _known(store, args.client_id)), "client_secret": secret}
    if args.action == "delete":
        if not await store.delete(args.client_id):
            raise AdminError(f"no client {args.client_id!r}")
        return {"client_id": args.client_id, "deleted": True}
    if args.action == "limit":
        await _known(store, args.client_id)
        if args.default:
            await store.set_rate_limit(args.client_id, None, None)
        else:
            await store.set_rate_limit(args.client_id, args.rate, args.burst)
        return _client_json(await _known(store, args.client_id))
    raise AdminError(f"unknown action {args.action!r}")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="kiln", description="Kiln's operator commands.")
    groups = root.add_subparsers(dest="group", required=True)
    clients = groups.add_parser(
        "clients",
        help="API clients",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = clients.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new client; prints its secret once")
    create.add_argument("client_id")
    create.add_argument("--tenant", required=True)
    create.add_argument("--scopes", default="", help='space-separated; default "*"')
    create.add_argument("--rate", type=float, help="its own requests per second")
    create.add_argument("--burst", type=int, help="its own burst")
    listing = actions.add_parser("list", help="every client")
    listing.add_argument("--tenant")
    for name, text in (
        ("disable", "refuse its credentials and new tokens"),
        ("enable", "accept them again"),
        ("rotate", "give it a new secret, printed once; the old one stops working"),
        ("delete", "remove it"),
    ):
        actions.add_parser(name, help=text).add_argument("client_id")
    limit = actions.add_parser("limit", help="its own rate limit")
    limit.add_argument("client_id")
    limit.add_argument("--rate", type=float)
    limit.add_argument("--burst", type=int)
    limit.add_argument("--default", action="store_true", help="back to the gateway's default")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        answer = asyncio.run(_run(args))
    except (AdminError, KilnError) as exc:
        print(f"kiln: {getattr(exc, 'message', None) or exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
