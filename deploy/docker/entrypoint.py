"""The container image's entry point: one image, one process per container, chosen by name.

    python -m deploy.docker.entrypoint PROCESS [ARGS...]

Long-running processes (what a Deployment runs; the process replaces this one, so it is PID 1
and receives SIGTERM itself):

    gateway            the HTTP/JSON gateway (python -m gateway)
    objects | jobs | render | archive
                       one gRPC service (python -m services.<name>)

One-shot commands:

    migrate [--wait SECONDS]
                       upgrade every schema (gateway, objects, jobs, render) to its newest
                       revision on the KILN_*_DATABASE_URL it is configured with, then exit;
                       the Kubernetes migrations Job. --wait retries the first connection that
                       long, for a database that is still starting.
    clients ...        the operators' `kiln clients` command (API clients in the gateway's store)
    keys DIR           write a new Ed25519 key pair DIR/jwt.pem, DIR/jwt.pub.pem (the JWT Secret)
    worker-token [--ttl-days N]
                       print a worker access token (scope jobs.worker) signed with
                       KILN_JWT_PRIVATE_KEY_FILE (the worker-token Secret)

Every service also migrates its own schema at start; the Job makes upgrades happen once,
before a rollout, instead of racing between replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Long-running processes: name → the module `python -m` runs.
PROCESSES: Mapping[str, str] = {
    "gateway": "gateway",
    "objects": "services.objects",
    "jobs": "services.jobs",
    "render": "services.render",
    "archive": "services.archive",
}

#: Schemas the `migrate` command upgrades: owner → its Alembic directory. The owner names both
#: the version table (`alembic_version_<owner>`) and the KILN_<OWNER>_DATABASE_URL it uses.
MIGRATIONS: Mapping[str, Path] = {
    "gateway": REPO_ROOT / "gateway" / "migrations",
    "objects": REPO_ROOT / "services" / "objects" / "migrations",
    "jobs": REPO_ROOT / "services" / "jobs" / "migrations",
    "render": REPO_ROOT / "services" / "render" / "migrations",
}

COMMANDS = ("migrate", "clients", "keys", "worker-token")

EXIT_USAGE = 2


def exec_process(module: str, args: Sequence[str]) -> NoReturn:
    """Replaces this process with `python -m module args...` (never returns)."""
    argv = [sys.executable, "-m", module, *args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def database_urls(environ: Mapping[str, str]) -> dict[str, str]:
    """The database URL of every schema owner, read through the processes' own config loaders,
    so the Job and the services can never disagree on a default."""
    from services.runtime.config import load_gateway_config, load_service_config

    urls = {"gateway": load_gateway_config(environ).database_url}
    for owner in MIGRATIONS:
        if owner != "gateway":
            urls[owner] = load_service_config(owner, environ).database_url
    return urls


async def wait_for_database(url: str, deadline: float) -> None:
    """Returns once a connection to `url` opens; retries connection failures until `deadline`
    (time.monotonic), then raises the last one."""
    from sqlalchemy import exc

    from services.runtime import db

    engine = db.create_engine(url)
    try:
        while True:
            try:
                async with engine.connect():
                    return
            except (OSError, exc.DBAPIError) as error:
                if time.monotonic() >= deadline:
                    raise
                print(f"migrate: waiting for the database: {error}", file=sys.stderr, flush=True)
                await asyncio.sleep(2.0)
    finally:
        await engine.dispose()


async def migrate(environ: Mapping[str, str], wait_seconds: float) -> None:
    """Upgrades every schema; a database shared by several owners is fine (one version table
    each)."""
    from services.runtime import db

    deadline = time.monotonic() + wait_seconds
    for owner, url in database_urls(environ).items():
        await wait_for_database(url, deadline)
        async with db.migrated_engine(url, owner, MIGRATIONS[owner]):
            print(f"migrate: {owner} is at its newest revision", flush=True)


def write_keys(directory: Path) -> None:
    from services.runtime.auth import generate_keypair

    private, public = directory / "jwt.pem", directory / "jwt.pub.pem"
    if private.exists():
        raise SystemExit(f"keys: {private} exists; refusing to replace a key tokens depend on")
    generate_keypair(private, public)
    print(f"keys: wrote {private} and {public}", flush=True)


def worker_token(environ: Mapping[str, str], ttl_days: float) -> str:
    from services.runtime.auth import WORKER_SCOPE, WORKER_TENANT, TokenSigner
    from services.runtime.config import load_gateway_config

    auth = load_gateway_config(environ).auth
    signer = TokenSigner.from_file(
        auth.private_key_file, issuer=auth.issuer, ttl_seconds=int(ttl_days * 86400)
    )
    token, _ = signer.issue(client_id="kiln-worker", tenant=WORKER_TENANT, scopes=[WORKER_SCOPE])
    return token


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="kiln-image",
        description="Runs one Kiln process or command inside the image.",
    )
    commands = top.add_subparsers(dest="command", required=True)
    run = commands.add_parser("migrate", help="upgrade every schema, then exit")
    run.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    keys = commands.add_parser("keys", help="write a new JWT key pair into DIR")
    keys.add_argument("directory", type=Path)
    token = commands.add_parser("worker-token", help="print a worker access token")
    token.add_argument("--ttl-days", type=float, default=30.0)
    return top


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    if arguments and arguments[0] in PROCESSES:
        exec_process(PROCESSES[arguments[0]], arguments[1:])
    if arguments[:1] == ["clients"]:
        exec_process("deploy.cli", arguments)
    if not arguments or arguments[0] not in COMMANDS:
        print(
            f"usage: PROCESS [ARGS]; PROCESS is one of {', '.join([*PROCESSES, *COMMANDS])}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    args = parser().parse_args(arguments)
    from services.runtime.errors import ConfigError

    try:
        if args.command == "migrate":
            asyncio.run(migrate(env, args.wait))
        elif args.command == "keys":
            write_keys(args.directory)
        else:
            print(worker_token(env, args.ttl_days))
    except ConfigError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
