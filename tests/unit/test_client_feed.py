"""The engine client's event cursor: each event once, in order, from replies in any order."""

from __future__ import annotations

import asyncio
from pathlib import Path

from engine.client import EngineClient
from engine.protocol import Event, EventKind, Feed
from engine.runtime.local import LocalTransport
from engine.settings import Settings
from tests.support import RecordingSink


def ev(seq: int) -> Event:
    return Event("TRK-1", EventKind.LOCATION, seq, b"{}", 0.0)


def seqs(sink: RecordingSink) -> list[int]:
    return [e.seq for e in sink.events]


def feeds(tmp_path: Path, replies: list[tuple[str, int, list[int]]]) -> RecordingSink:
    """Feed `replies` (epoch, base cursor, seqs) of shard 0 to a client; return its sink."""

    async def go() -> RecordingSink:
        transport = LocalTransport(Settings(data_dir=tmp_path, engine="local", shards=1))
        client = EngineClient(transport)
        sink = RecordingSink()
        client.open_events("gw-1", sink)
        try:
            for epoch, base, seqs in replies:
                client.feed(0, Feed(epoch, base, [ev(s) for s in seqs]))
        finally:
            await client.close_events()
            await transport.close()
        return sink

    return asyncio.run(go())


def test_overlapping_replies_deliver_each_event_once(tmp_path: Path) -> None:
    # A call reply and a poll reply can carry the same events (the poll left with an older ack).
    sink = feeds(tmp_path, [("e1", 0, [1, 2]), ("e1", 0, [1, 2, 3]), ("e1", 2, [3, 4]),
                            ("e1", 1, [2, 3]), ("e1", 4, [])])  # fmt: skip
    assert seqs(sink) == [1, 2, 3, 4]
    assert sink.resyncs == []


def test_a_gap_in_the_cursor_asks_for_a_resync(tmp_path: Path) -> None:
    # The shard dropped a backlog this gateway never acknowledged.
    sink = feeds(tmp_path, [("e1", 0, [1, 2]), ("e1", 5, [6, 7])])
    assert seqs(sink) == [1, 2, 6, 7]
    assert sink.resyncs == [0]


def test_a_restarted_shard_restarts_the_cursor_and_late_old_replies_are_ignored(
    tmp_path: Path,
) -> None:
    sink = feeds(tmp_path, [
        ("e1", 0, [1, 2, 3]),
        ("e2", 0, [10]),  # new incarnation: cursors start again at 0
        ("e1", 3, [4]),  # a reply of the old incarnation processed late
        ("e2", 0, [10, 11]),
    ])  # fmt: skip
    assert seqs(sink) == [1, 2, 3, 10, 11]
    assert sink.resyncs == [0]
