"""CLyman's lock through HTTP: of any number of devices asking at once, exactly one wins."""

from __future__ import annotations

import asyncio

from tests.clyman.conftest import Clyman

DEVICES = 50


async def test_fifty_devices_race_for_one_lock(clyman: Clyman) -> None:
    created = await clyman.client.post("/v1/object", json={"objects": [{"name": "contested"}]})
    key = created.json()["objects"][0]["key"]
    for round_ in range(2):  # twice: the released lock is as contested as a fresh one
        answers = await asyncio.gather(
            *(
                clyman.client.get(f"/v1/object/{key}/lock", params={"device": f"d{round_}-{n}"})
                for n in range(DEVICES)
            )
        )
        winners = [n for n, answer in enumerate(answers) if answer.status_code == 200]
        assert len(winners) == 1, [a.status_code for a in answers]
        losers = [a for a in answers if a.status_code != 200]
        assert {a.status_code for a in losers} == {423}
        assert {a.json()["err_code"] for a in losers} == {123}
        winner = f"d{round_}-{winners[0]}"
        got = await clyman.client.get(f"/v1/object/{key}")
        assert got.json()["objects"][0]["owner"] == winner
        # Only the holder unlocks.
        loser = f"d{round_}-{(winners[0] + 1) % DEVICES}"
        refused = await clyman.client.delete(f"/v1/object/{key}/lock", params={"device": loser})
        assert refused.status_code == 423
        released = await clyman.client.delete(f"/v1/object/{key}/lock", params={"device": winner})
        assert released.status_code == 200, released.text
