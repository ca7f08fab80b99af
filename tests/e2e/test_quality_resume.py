"""Resume on reconnect over real WebSockets: `?since_seq=N` sends `initial_state` (recovered),
then exactly what the socket missed after N, then live messages, with no gap and no duplicate at
the seam, even while updates keep coming; `recovered: false` when N cannot be replayed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from harness import ServerProcess
from tests.e2e.clients import Api, expect_error_then_close, recv_json, run, ws_connect
from tests.e2e.quality import drain, fix, post_fix_ok


def seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [m["data"]["seq"] for m in messages if m["type"] == "location_update"]


def test_resume_has_no_gap_and_no_duplicate_while_updates_flow(server: ServerProcess) -> None:
    with Api(server) as api:
        view = api.start_ok()
        tid = view["tracking_id"]
        t0 = time.time() - 2000
        n = 0

        def one() -> dict[str, Any]:
            nonlocal n
            n += 1
            status = {5: "PICKED_UP", 30: "IN_TRANSIT"}.get(n)
            return post_fix_ok(api, view, fix(5000 - 20 * n, t0 + 5 * n, status))

        async def body() -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
            stop = asyncio.Event()

            async def rider() -> None:
                while not stop.is_set():
                    await asyncio.to_thread(one)

            async with ws_connect(server, tid) as first:
                await recv_json(first)
                task = asyncio.create_task(rider())
                seen: list[dict[str, Any]] = []
                while len(seqs(seen)) < 10:
                    seen.append(await recv_json(first))
            last = seqs(seen)[-1]
            await asyncio.sleep(0.5)  # away while the rider keeps reporting
            url = f"{tid}?since_seq={last}"
            async with ws_connect(server, url) as back:
                resumed = [await recv_json(back)]
                while len(seqs(resumed)) < 40:
                    resumed.append(await recv_json(back))
                stop.set()
                await task
                resumed += await drain(back, 1.0)
            return seen, resumed, last

        seen, resumed, last = run(body(), seconds=120)
        first = resumed[0]
        assert first["type"] == "initial_state"
        assert first["recovered"] is True
        current = first["data"]["seq"]
        got = seqs(resumed)
        assert current > last, "the rider should have moved on while the socket was away"
        # Everything after `last`, each once, in order, across replay and live.
        assert got == list(range(last + 1, last + 1 + len(got)))
        assert got[-1] >= current
        statuses = [m for m in seen + resumed if m["type"] == "status_change"]
        assert [m["data"]["status"] for m in statuses] == ["PICKED_UP", "IN_TRANSIT"]
        final = api.view(tid)
        assert got[-1] == final["seq"]


def test_resume_from_zero_replays_the_whole_trail(server: ServerProcess) -> None:
    with Api(server) as api:
        view = api.start_ok()
        t = time.time() - 100
        for i in range(3):
            post_fix_ok(api, view, fix(1000 - 100 * i, t + 10 * i))

        async def body() -> list[dict[str, Any]]:
            # Another socket of this process already watches it: a resume still replays.
            async with ws_connect(server, view["tracking_id"]) as other:
                await recv_json(other)
                async with ws_connect(server, f"{view['tracking_id']}?since_seq=0") as ws:
                    return await drain(ws, 1.0)

        got = run(body())
        assert got[0]["type"] == "initial_state"
        assert got[0]["recovered"] is True
        assert seqs(got) == [1, 2, 3, 4]
        assert got[1]["data"]["current_location"] is None  # the start
        assert got[-1]["data"] == got[0]["data"]  # the replay ends at the current view


def test_too_old_or_invalid_positions(server_factory: Any) -> None:
    with server_factory(TRACKING_RESUME_MAX_CHANGES="5") as srv, Api(srv) as api:
        view = api.start_ok()
        tid = view["tracking_id"]
        t = time.time() - 100
        for i in range(8):
            post_fix_ok(api, view, fix(1000 - 10 * i, t + 10 * i))

        async def body() -> None:
            async with ws_connect(srv, f"{tid}?since_seq=2") as ws:  # 7 missed, bound 5
                first = await recv_json(ws)
                assert (first["type"], first["recovered"]) == ("initial_state", False)
                assert first["data"]["seq"] == 9
                assert await drain(ws, 0.5) == []  # nothing replayed: start afresh
            async with ws_connect(srv, f"{tid}?since_seq=4") as ws:
                got = [await recv_json(ws), *await drain(ws, 0.5)]
                assert got[0]["recovered"] is True
                assert seqs(got) == [5, 6, 7, 8, 9]
            async with ws_connect(srv, f"{tid}?since_seq=99") as ws:  # never reached
                assert (await recv_json(ws))["recovered"] is False
            async with ws_connect(srv, tid) as ws:  # not resuming: as API.md says
                assert "recovered" not in await recv_json(ws)
            for bad in ("-1", "x", "1.5", "9" * 30):
                async with ws_connect(srv, f"{tid}?since_seq={bad}") as ws:
                    assert "since_seq" in await expect_error_then_close(ws, 1008)

        run(body())
