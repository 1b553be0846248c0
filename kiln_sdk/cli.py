"""The `kiln` command for Kiln's users, on the SDK:

    kiln login --client-id ID --client-secret SECRET [--url URL]   # ~/.config/kiln/credentials
    kiln assets upload FILE | download ID [-o PATH]
    kiln objects create NAME [--scene S] | get KEY | query [--scene S] [--name N]
    kiln scenes create NAME | import SCENE FILE... | export SCENE EXT [-o P] | render SCENE [-o P]
    kiln images edit REQUEST.json [--file IMAGE] [-o PATH]
    kiln archive create ASSET_ID... [-o PATH]
    kiln jobs get ID | wait ID | cancel ID | watch ID
    kiln clients create | list | disable | enable | delete | limit    # operators: kiln clients -h

Credentials come from `--url` / `--client-id` / `--client-secret`, else KILN_URL /
KILN_CLIENT_ID / KILN_CLIENT_SECRET, else the credentials file (written 0600 by `kiln login`).
Commands that start a job wait for it with a progress bar (on a terminal) and fetch its output
with `-o`; `--no-wait` prints the job at once. `--json` prints one JSON document for scripts.

Exit status: 0 done; 1 a job failed, was cancelled or did not end in time; 2 a usage error
(bad arguments, no credentials); 3 the API refused the request or could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kiln_sdk._client import AsyncClient
from kiln_sdk._errors import ApiError, JobError, KilnError

CREDENTIALS = Path("~/.config/kiln/credentials")
DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_OK, EXIT_JOB, EXIT_USAGE, EXIT_API = 0, 1, 2, 3


class UsageError(Exception):
    pass


def credentials_path() -> Path:
    return Path(os.environ.get("KILN_CREDENTIALS_FILE", str(CREDENTIALS))).expanduser()


def _credentials(args: argparse.Namespace) -> tuple[str, str, str]:
    stored: dict[str, str] = {}
    path = credentials_path()
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except ValueError:
            raise UsageError(f"{path} is not the JSON `kiln login` writes") from None
    url = args.url or os.environ.get("KILN_URL") or stored.get("url") or DEFAULT_URL
    client_id = args.client_id or os.environ.get("KILN_CLIENT_ID") or stored.get("client_id")
    secret = (
        args.client_secret or os.environ.get("KILN_CLIENT_SECRET") or stored.get("client_secret")
    )
    if not client_id or not secret:
        raise UsageError(
            "no credentials: pass --client-id and --client-secret, set KILN_CLIENT_ID and "
            "KILN_CLIENT_SECRET, or run `kiln login`"
        )
    return url, client_id, secret


def login(args: argparse.Namespace) -> dict[str, Any]:
    if not args.client_id or not args.client_secret:
        raise UsageError("kiln login needs --client-id and --client-secret")
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created 0600 before the secret is written: it is never readable by others.
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    body = {"url": args.url or DEFAULT_URL, "client_id": args.client_id}
    path.write_text(json.dumps({**body, "client_secret": args.client_secret}))
    return {**body, "credentials": str(path)}


class Output:
    """What the user sees: a JSON document, or lines and progress bars on a terminal."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.progress = not as_json and sys.stderr.isatty()

    def result(self, value: Any) -> None:
        if self.as_json or not isinstance(value, dict):
            print(json.dumps(value, indent=2))
            return
        for key, item in value.items():
            print(f"{key}: {item if not isinstance(item, dict | list) else json.dumps(item)}")


async def wait_for(kiln: AsyncClient, job: dict[str, Any], out: Output) -> dict[str, Any]:
    """The job once it has ended (JobError otherwise), with a progress bar on a terminal."""
    if not out.progress:
        return await kiln.jobs.wait(str(job["id"]))
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(f"{job.get('type', 'job')} {job['id']}", total=1.0)
        async for state in kiln.jobs.watch(str(job["id"])):
            bar.update(task, completed=float(state.get("progress", 0)))
    return await kiln.jobs.wait(str(job["id"]), timeout=30)


async def _job_command(
    kiln: AsyncClient, job: dict[str, Any], args: argparse.Namespace, out: Output
) -> dict[str, Any]:
    if args.no_wait:
        return job
    done = await wait_for(kiln, job, out)
    if getattr(args, "output", None):
        saved = await kiln.jobs.output(str(done["id"]), args.output)
        done = {**done, "saved": str(saved)}
    return done


async def run(args: argparse.Namespace, out: Output) -> Any:
    url, client_id, secret = _credentials(args)
    async with AsyncClient(url, client_id, secret) as kiln:
        group, action = args.group, getattr(args, "action", "")
        if group == "assets":
            if action == "upload":
                return await kiln.assets.upload(
                    args.file, **({"name": args.name} if args.name else {})
                )
            saved = await kiln.assets.download(args.asset_id, args.output or args.asset_id)
            return {"asset_id": args.asset_id, "saved": str(saved)}
        if group == "objects":
            if action == "create":
                fields = {"name": args.name, **({"scene": args.scene} if args.scene else {})}
                return await kiln.objects.create(**fields)
            if action == "get":
                return await kiln.objects.get(args.key)
            query = {k: v for k, v in (("scene", args.scene), ("name", args.name)) if v}
            return await kiln.objects.query(query, limit=args.limit)
        if group == "scenes":
            if action == "create":
                return await kiln.scenes.create(args.name)
            if action == "import":
                job = await kiln.scenes.import_files(args.scene_id, args.files)
            elif action == "export":
                job = await kiln.scenes.export(args.scene_id, args.extension)
            else:
                params = {"width": args.width, "height": args.height, "format": args.format}
                job = await kiln.scenes.render(args.scene_id, **params)
            return await _job_command(kiln, job, args, out)
        if group == "images":
            if args.file:
                return await kiln.images.edit_upload(args.file, args.request_body)
            return await kiln.images.edit(args.request_body)
        if group == "archive":
            job = await kiln.archives.create(args.asset_ids)
            return await _job_command(kiln, job, args, out)
        if group == "jobs":
            if action == "get":
                return await kiln.jobs.get(args.job_id)
            if action == "cancel":
                return await kiln.jobs.cancel(args.job_id)
            if action == "watch":
                states = []
                async for state in kiln.jobs.watch(args.job_id):
                    states.append(state)
                    if not out.as_json:
                        print(f"{state.get('status')} {float(state.get('progress', 0)):.0%}")
                return states[-1] if states else {}
            return await kiln.jobs.wait(args.job_id, timeout=args.timeout)
    raise UsageError(f"unknown command {group} {action}")


def _edit_request(source: str) -> Any:
    try:
        return json.loads(sys.stdin.read() if source == "-" else Path(source).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the edit request: {exc}") from None


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="kiln", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    root.add_argument("--url")
    root.add_argument("--client-id")
    root.add_argument("--client-secret")
    root.add_argument("--json", action="store_true", help="print one JSON document")
    groups = root.add_subparsers(dest="group", required=True)
    groups.add_parser("login", help="store credentials (0600)")

    def job_options(command: argparse.ArgumentParser, output: bool = True) -> None:
        command.add_argument("--no-wait", action="store_true", help="print the job at once")
        if output:
            command.add_argument("-o", "--output", help="save the job's output here")

    assets = groups.add_parser("assets").add_subparsers(dest="action", required=True)
    upload = assets.add_parser("upload")
    upload.add_argument("file")
    upload.add_argument("--name")
    download = assets.add_parser("download")
    download.add_argument("asset_id")
    download.add_argument("-o", "--output")

    objects = groups.add_parser("objects").add_subparsers(dest="action", required=True)
    create = objects.add_parser("create")
    create.add_argument("name")
    create.add_argument("--scene")
    objects.add_parser("get").add_argument("key")
    query = objects.add_parser("query")
    query.add_argument("--scene")
    query.add_argument("--name")
    query.add_argument("--limit", type=int, default=10)

    scenes = groups.add_parser("scenes").add_subparsers(dest="action", required=True)
    scenes.add_parser("create").add_argument("name")
    importing = scenes.add_parser("import")
    importing.add_argument("scene_id")
    importing.add_argument("files", nargs="+")
    job_options(importing, output=False)
    exporting = scenes.add_parser("export")
    exporting.add_argument("scene_id")
    exporting.add_argument("extension")
    job_options(exporting)
    render = scenes.add_parser("render")
    render.add_argument("scene_id")
    render.add_argument("--width", type=int, default=800)
    render.add_argument("--height", type=int, default=600)
    render.add_argument("--format", default="jpeg", choices=("jpeg", "png"))
    job_options(render)

    images = groups.add_parser("images").add_subparsers(dest="action", required=True)
    edit = images.add_parser("edit")
    edit.add_argument("request", help="Claid's edit JSON (a file, or -)")
    edit.add_argument("--file", help="a local image to edit (the request then has no input)")

    archive = groups.add_parser("archive").add_subparsers(dest="action", required=True)
    archive_create = archive.add_parser("create")
    archive_create.add_argument("asset_ids", nargs="+")
    job_options(archive_create)

    jobs = groups.add_parser("jobs").add_subparsers(dest="action", required=True)
    for name in ("get", "cancel", "watch"):
        jobs.add_parser(name).add_argument("job_id")
    wait = jobs.add_parser("wait")
    wait.add_argument("job_id")
    wait.add_argument("--timeout", type=float, default=600.0)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit_:
        return EXIT_OK if exit_.code in (0, None) else EXIT_USAGE
    out = Output(args.json)
    try:
        if args.group == "images":
            args.request_body = _edit_request(args.request)
        result = login(args) if args.group == "login" else asyncio.run(run(args, out))
    except UsageError as exc:
        print(f"kiln: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except JobError as exc:
        out.result(exc.job)
        print(f"kiln: {exc}", file=sys.stderr)
        return EXIT_JOB
    except (ApiError, KilnError) as exc:
        print(f"kiln: {exc}", file=sys.stderr)
        return EXIT_API
    out.result(result)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
