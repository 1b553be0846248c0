"""Every Object API example of seed 004, sent as the seed's own curl commands, host and port
changed, without credentials, gives the documented answer.

Each sequence runs twice: replayed with httpx (method, headers and body bytes taken from the
command) and with the real `curl` binary where one is installed.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.clyman.conftest import Clyman
from tests.clyman.seed_examples import (
    CURL,
    DOCUMENTED_CREATE,
    DOCUMENTED_GET,
    DOCUMENTED_QUERY,
    DOCUMENTED_UPDATE,
)

SEED_HOSTS = ("http://localhost:8768", "http://localhost:5885")
KEY = re.compile(r"[0-9a-f]{24}")
SEED_TRANSFORM = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 1, 0, 0, 0, 1]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def command_args(command: str, base_url: str, **placeholders: str) -> list[str]:
    """The command's arguments with the seed's host and port replaced and the URL's
    `{name}` placeholders filled; nothing else changes."""
    args = shlex.split(command)
    assert args[0] == "curl"
    return [_retarget(arg, base_url, placeholders) for arg in args[1:]]


def _retarget(arg: str, base_url: str, placeholders: dict[str, str]) -> str:
    host = next((h for h in SEED_HOSTS if arg.startswith(h)), None)
    if host is None:
        return arg
    url = base_url + arg[len(host) :]
    for name, value in placeholders.items():
        url = url.replace("{" + name + "}", value)
    assert "{" not in url, f"unfilled placeholder in {url}"
    return url


async def replay_with_httpx(client: httpx.AsyncClient, args: list[str]) -> Answer:
    """What curl would send for these arguments (-i, -X, -H, --data-raw, the URL)."""
    method, url, headers, data = None, "", {}, None
    rest = iter(args)
    for arg in rest:
        if arg == "-i":
            continue
        if arg == "-X":
            method = next(rest)
        elif arg == "-H":
            name, _, value = next(rest).partition(":")
            headers[name.strip()] = value.strip()
        elif arg == "--data-raw":
            data = next(rest).encode()
        else:
            assert not arg.startswith("-"), f"unexpected curl option {arg}"
            url = arg
    method = method or ("POST" if data is not None else "GET")
    response = await client.request(method, url, headers=headers, content=data)
    return Answer(response.status_code, dict(response.headers), response.text)


async def run_curl(args: list[str]) -> Answer:
    process = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--max-time",
        "10",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    head, _, body = stdout.decode().partition("\r\n\r\n")
    status_line, *header_lines = head.split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), headers, body)


@pytest.fixture(params=["httpx", "curl"])
def send(request: pytest.FixtureRequest, clyman: Clyman) -> Any:
    """Sends one of the seed's commands: `await send("GET", key=...)`."""
    if request.param == "curl" and shutil.which("curl") is None:
        pytest.skip("no curl binary on this machine; the httpx replay covers the commands")

    async def go(name: str, **placeholders: str) -> Answer:
        args = command_args(CURL[name], clyman.base_url, **placeholders)
        if request.param == "curl":
            return await run_curl(args)
        return await replay_with_httpx(clyman.client, args)

    return go


def documented_object(documented: dict[str, Any], key: str) -> dict[str, Any]:
    """The seed's documented object, with the `key` CLyman added after v2.0.1 (api-spec §5.3)."""
    (only,) = documented["objects"]
    return {**only, "key": key}


async def test_the_seed_examples_in_order(send: Any, clyman: Clyman) -> None:
    # Object Creation.
    created = await send("CREATE")
    assert created.status == 200, created.text
    assert created.headers["content-type"] == "application/json"
    body = created.json()
    assert body["num_records"] == DOCUMENTED_CREATE["num_records"] == 1
    assert body["err_code"] == 100 and body["msg_type"] == 0
    key = body["objects"][0]["key"]
    assert KEY.fullmatch(key)

    # Object Retrieval: the documented object, numbers as JSON numbers.
    got = await send("GET", key=key)
    assert got.status == 200, got.text
    assert got.json() == {
        "msg_type": DOCUMENTED_GET["msg_type"],
        "err_code": DOCUMENTED_GET["err_code"],
        "num_records": DOCUMENTED_GET["num_records"],
        "objects": [documented_object(DOCUMENTED_GET, key)],
    }
    assert '"transform":[1,0,0,0,0,1,0,0,0,0,2,1,0,0,0,1]' in got.text
    assert got.json()["objects"][0]["transform"] == SEED_TRANSFORM

    # Object Update: only the fields sent change; no transform input, so the transform stays.
    updated = await send("UPDATE", key=key)
    assert updated.status == 200, updated.text
    body = updated.json()
    assert body["num_records"] == DOCUMENTED_UPDATE["num_records"] == 1
    assert body["msg_type"] == 1 and body["err_code"] == 100
    assert body["objects"][0]["key"] == key
    after = (await send("GET", key=key)).json()
    assert after["objects"][0] == documented_object(DOCUMENTED_GET, key)

    # Object Query: the seed's own body finds the object with that name and asset...
    match = await clyman.client.post(
        "/v1/object", json={"objects": [{"name": "test", "assets": ["TestAsset10"]}]}
    )
    match_key = match.json()["objects"][0]["key"]
    queried = await send("QUERY")
    assert queried.status == 200, queried.text
    body = queried.json()
    # msg_type 4, as CLyman's code answers (the docs' 2 is a copy-paste slip, api-spec §5.2).
    assert (body["msg_type"], body["err_code"], body["num_records"]) == (4, 100, 1)
    assert body["objects"][0]["key"] == match_key
    assert body["objects"][0]["assets"] == ["TestAsset10"]
    # ...and a query for the seed's object answers the documented query object.
    seed_object = await clyman.client.post(
        "/v1/object/query", json={"objects": [{"name": "Test Object 123464", "frame": 0}]}
    )
    assert seed_object.json()["objects"] == [documented_object(DOCUMENTED_QUERY, key)]

    # Object Lock, then another device is refused, then Object Unlock by the holder.
    locked = await send("LOCK", key=key)
    assert locked.status == 200, locked.text
    assert locked.json() == {"msg_type": 5, "err_code": 100, "num_records": 0, "objects": []}
    taken = await clyman.client.get(f"/v1/object/{key}/lock", params={"device": "456"})
    assert taken.status_code == 423 and taken.json()["err_code"] == 123
    unlocked = await send("UNLOCK", key=key)
    assert unlocked.status == 200, unlocked.text
    assert unlocked.json() == {"msg_type": 6, "err_code": 100, "num_records": 0, "objects": []}

    # Asset Addition and Removal, no body.
    added = await send("ASSET_ADD", object_key=key, asset_key="Asset_6")
    assert added.status == 200, added.text
    assert added.json()["msg_type"] == 13 and added.json()["err_code"] == 100
    assets = (await send("GET", key=key)).json()["objects"][0]["assets"]
    assert assets == ["Asset_5", "Asset_6"]
    removed = await send("ASSET_REMOVE", object_key=key, asset_key="Asset_5")
    assert removed.status == 200, removed.text
    assert removed.json()["msg_type"] == 14 and removed.json()["err_code"] == 100
    assert (await send("GET", key=key)).json()["objects"][0]["assets"] == ["Asset_6"]

    # Object Deletion; the object is gone.
    deleted = await send("DELETE", key=key)
    assert deleted.status == 200, deleted.text
    assert deleted.json() == {"msg_type": 3, "err_code": 100, "num_records": 0, "objects": []}
    gone = await send("GET", key=key)
    assert gone.status == 404
    assert gone.json()["err_code"] == 102 and gone.json()["msg_type"] == 2
    # Tidy up, so the next run's query finds exactly its own match.
    assert (await send("DELETE", key=match_key)).status == 200


async def test_the_documented_create_path_with_its_trailing_slash(clyman: Clyman) -> None:
    # The seed's heading is `POST /v1/object/`; its examples drop the slash. Both create.
    args = command_args(CURL["CREATE"], clyman.base_url)
    slashed = [
        arg.replace("/v1/object", "/v1/object/") if "/v1/object" in arg else arg for arg in args
    ]
    answer = await replay_with_httpx(clyman.client, slashed)
    assert answer.status == 200, answer.text
    key = answer.json()["objects"][0]["key"]
    got = await clyman.client.get(f"/v1/object/{key}/")
    assert got.json()["objects"][0]["transform"] == SEED_TRANSFORM
    # The literal query route is never taken for a key, with or without the slash.
    for path in ("/v1/object/query", "/v1/object/query/"):
        queried = await clyman.client.post(path, json={"objects": [{"name": "nothing-like-it"}]})
        assert queried.status_code == 200 and queried.json()["msg_type"] == 4
    assert (await clyman.client.delete(f"/v1/object/{key}/")).status_code == 200
