"""`kiln clients …` against a real SQLite store: the secret shown once works, list, disable,
limits, delete, and refusals with exit status 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.cli import main
from gateway.identity import ClientStore
from services.runtime import db


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, (json.loads(out) if out.strip() else None), err


async def test_clients_lifecycle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    monkeypatch.setenv("KILN_GATEWAY_DATABASE_URL", url)
    status, created, _ = await _in_thread(
        run, capsys, "clients", "create", "ci", "--tenant", "acme", "--scopes", "objects.read"
    )
    assert status == 0 and isinstance(created, dict)
    secret = created["client_secret"]
    assert len(secret) >= 40 and created["scopes"] == ["objects.read"]

    engine = db.create_engine(url)
    try:
        store = ClientStore(db.sessionmaker(engine))
        verified = await store.verify("ci", secret)
        assert verified is not None and verified.tenant == "acme"
        assert await store.verify("ci", "wrong") is None

        status, listed, _ = await _in_thread(run, capsys, "clients", "list", "--tenant", "acme")
        assert status == 0 and [c["client_id"] for c in listed] == ["ci"]  # type: ignore[union-attr]
        assert "client_secret" not in listed[0]  # type: ignore[index]

        status, limited, _ = await _in_thread(
            run, capsys, "clients", "limit", "ci", "--rate", "5", "--burst", "10"
        )
        assert limited["rate_per_second"] == 5.0 and limited["rate_burst"] == 10  # type: ignore[index]

        status, rotated, _ = await _in_thread(run, capsys, "clients", "rotate", "ci")
        assert status == 0 and rotated["client_id"] == "ci"  # type: ignore[index]
        new_secret = rotated["client_secret"]  # type: ignore[index]
        assert len(new_secret) >= 40 and new_secret != secret
        assert rotated["rate_per_second"] == 5.0  # the rest of the client is kept
        rotated_store = ClientStore(db.sessionmaker(engine))
        assert await rotated_store.verify("ci", secret) is None
        assert (await rotated_store.verify("ci", new_secret)) is not None
        secret = new_secret

        status, disabled, _ = await _in_thread(run, capsys, "clients", "disable", "ci")
        assert disabled["disabled"] is True  # type: ignore[index]
        assert await ClientStore(db.sessionmaker(engine)).verify("ci", secret) is None

        for argv, message in (
            (("clients", "create", "ci", "--tenant", "acme"), "exists"),
            (("clients", "create", "w", "--tenant", "t", "--scopes", "jobs.worker"), "workers"),
            (("clients", "create", "bad:id", "--tenant", "t"), "client_id"),
            (("clients", "limit", "ci", "--rate", "5"), "both"),
            (("clients", "disable", "nobody"), "no client"),
            (("clients", "rotate", "nobody"), "no client"),
        ):
            status, _, err = await _in_thread(run, capsys, *argv)
            assert status == 1 and message in err, (argv, err)

        status, deleted, _ = await _in_thread(run, capsys, "clients", "delete", "ci")
        assert status == 0 and deleted == {"client_id": "ci", "deleted": True}
        assert await ClientStore(db.sessionmaker(engine)).get("ci") is None
    finally:
        await engine.dispose()


async def _in_thread(fn: object, *args: object) -> tuple[int, object, str]:
    # The command runs its own event loop (asyncio.run), so it runs off this one.
    import asyncio

    return await asyncio.to_thread(fn, *args)  # type: ignore[arg-type]
