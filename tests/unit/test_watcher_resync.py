"""A watcher across a shard's restart (api.gateway.Watcher): live events wait while what the
socket missed is replayed, then everything goes out once, in seq order. Pure logic: the
socket is a recording sink (the transport's edge), no server."""

from __future__ import annotations

from collections.abc import Callable

from api.gateway import Out, Watcher
from engine.protocol import Watched


class Sink:
    """Records what a socket would have written; `ready` is the buffer below its high-water
    mark."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.ready = True
        self.open = True
        self.drain: Callable[[], None] | None = None
        self.closed_with: tuple[int, str] | None = None

    def write(self, frame: bytes) -> None:
        self.frames.append(frame)

    def on_drain(self, callback: Callable[[], None] | None) -> None:
        self.drain = callback

    def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)


def loc(seq: int) -> tuple[Out, int, bytes]:
    return Out.LOCATION, seq, b"L%d" % seq


def status(seq: int) -> tuple[Out, int, bytes]:
    return Out.STATUS, seq, b"S%d" % seq


def started(sink: Sink, seq: int = 5) -> Watcher:
    w = Watcher("TRK-1", sink, maxlen=100)
    w.start(Watched(seq, b"{}"))
    sink.frames.clear()  # the initial_state
    return w


def test_what_was_missed_goes_out_before_live_events_that_overtook_it() -> None:
    sink = Sink()
    w = started(sink)
    w.offer(*loc(6))
    w.mark_resume()  # the shard came back; 7 was committed but never published
    w.offer(*loc(8))  # live, from the restarted shard
    w.offer(*status(8))
    assert sink.frames == [b"L6"]  # held until the replay
    w.catch_up([loc(7), loc(8), status(8)])
    assert sink.frames == [b"L6", b"L7", b"L8", b"S8"]
    w.offer(*loc(9))  # and live again
    assert sink.frames[-1] == b"L9"


def test_nothing_missed_nothing_repeated() -> None:
    sink = Sink()
    w = started(sink)
    w.offer(*loc(6))
    w.mark_resume()
    w.catch_up([])
    w.offer_current(6, b"L6 again")  # a resync that could not replay: the state it has
    assert sink.frames == [b"L6"]
    w.offer_current(7, b"L7")  # one it has not
    assert sink.frames == [b"L6", b"L7"]


def test_a_slow_socket_keeps_order_through_the_replay() -> None:
    sink = Sink()
    w = started(sink)
    sink.ready = False
    w.offer(*loc(6))  # held: the buffer is full
    w.mark_resume()
    w.offer(*loc(8))
    w.catch_up([loc(7), loc(8)])
    assert sink.frames == []
    sink.ready = True
    assert sink.drain is not None
    sink.drain()
    assert sink.frames == [b"L6", b"L7", b"L8"]


def test_a_drain_during_the_resync_waits_for_the_replay() -> None:
    sink = Sink()
    w = started(sink)
    sink.ready = False
    w.offer(*loc(6))
    w.mark_resume()
    sink.ready = True
    w.flush()  # the buffer drained before the shard answered
    assert sink.frames == []
    w.catch_up([loc(6), loc(7)])  # 6 was held, not missed: once
    assert sink.frames == [b"L6", b"L7"]


def test_expiry_held_during_a_resync_still_comes_last_and_closes() -> None:
    sink = Sink()
    w = started(sink)
    w.mark_resume()
    w.offer(Out.EXPIRED, 0, b"E")
    w.catch_up([loc(6)])
    assert sink.frames == [b"L6", b"E"]
    assert sink.closed_with is not None
    assert sink.closed_with[0] == 1008


def test_a_socket_still_starting_is_not_paused() -> None:
    sink = Sink()
    w = Watcher("TRK-1", sink, maxlen=100)
    w.mark_resume()
    assert w.resume_from is None
