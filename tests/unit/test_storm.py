"""The pure parts of loadtests/storm.py (the schedule, failure kinds, frame accounting, the
window table, the fd limit, the target) and its connection attempt against small loopback
servers that misbehave in each way a storm can meet."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import re
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtests.api_cpu import ProtocolError, Session, accept_key
from loadtests.storm import (
    FD_SLACK,
    Outcome,
    Plan,
    classify,
    connect_watcher,
    due_count,
    nofile_plan,
    parse_args,
    planned_at,
    tally,
    target_unmet,
    windows,
)

TID = "TRK-abcdefghijklmnopqrstuvwx"


# ------------------------------------------------------------------------------ the schedule
def test_ten_thousand_at_a_thousand_per_second_span_just_under_ten_seconds() -> None:
    assert planned_at(100.0, 0, 1000.0) == 100.0
    assert planned_at(100.0, 9_999, 1000.0) == pytest.approx(109.999)
    assert due_count(100.0, 1000.0, 99.9, 10_000) == 0
    assert due_count(100.0, 1000.0, 100.0, 10_000) == 1  # connection 0 is due at t0
    assert due_count(100.0, 1000.0, 105.0005, 10_000) == 5_001
    assert due_count(100.0, 1000.0, 200.0, 10_000) == 10_000


@given(t0=st.floats(0, 1e6), rate=st.floats(0.5, 5_000), dt=st.floats(-5, 50),
       n=st.integers(0, 100_000))
def test_exactly_the_items_planned_by_now_are_due(t0: float, rate: float, dt: float,
                                                  n: int) -> None:
    now = t0 + dt
    due = due_count(t0, rate, now, n)
    assert 0 <= due <= n
    if due:
        assert planned_at(t0, due - 1, rate) <= now
    if due < n:
        assert planned_at(t0, due, rate) > now


# ------------------------------------------------------------------------------ failure kinds
@pytest.mark.parametrize(("exc", "lost", "kind"), [
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), None, "refused"),
    (TimeoutError(), None, "timeout"),
    (OSError(errno.ETIMEDOUT, "timed out"), None, "timeout"),
    (ConnectionResetError(errno.ECONNRESET, "reset by peer"), None, "reset"),
    (BrokenPipeError(errno.EPIPE, "broken pipe"), None, "reset"),
    # the watcher's own error when its socket ends before initial_state: an orderly close ...
    (ConnectionResetError("connection closed before initial_state"), None, "closed_early"),
    # ... or a reset, told apart by what connection_lost was given
    (ConnectionResetError("connection closed before initial_state"),
     ConnectionResetError(errno.ECONNRESET, "reset by peer"), "reset"),
    (ProtocolError("handshake answered 'HTTP/1.1 503 Service Unavailable'"), None,
     "bad_handshake"),
    (ProtocolError("handshake: wrong Sec-WebSocket-Accept"), None, "bad_handshake"),
    (ProtocolError("a masked frame from the server"), None, "protocol"),
    (OSError(errno.EMFILE, "too many open files"), None, "generator_fd_limit"),
    (OSError(errno.EADDRNOTAVAIL, "cannot assign address"), None, "generator_no_ports"),
    (OSError(errno.EHOSTUNREACH, "no route"), None, "os_EHOSTUNREACH"),
    (asyncio.CancelledError(), None, "cancelled"),
    (ValueError("?"), None, "other_ValueError"),
])
def test_each_failure_has_its_kind(exc: BaseException, lost: BaseException | None,
                                   kind: str) -> None:
    assert classify(exc, lost) == kind


# ------------------------------------------------------------------------------ real sockets
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def session() -> Session:
    return Session(index=0, rider_id="RIDER-1", order_id="ORD-1", token="t", drop_lat=5.6,
                   drop_lng=-0.18, tracking_id=TID)


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_factory(request: pytest.FixtureRequest) -> LoopFactory:
    """Both event loops: the storm runs on uvloop, which reports a socket's end its own way."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory: LoopFactory = uvloop.new_event_loop
        return factory
    return asyncio.new_event_loop


def attempt(loop_factory: LoopFactory, handler: Handler | None,
            timeout_s: float = 5.0) -> tuple[Outcome, Counter[str]]:
    """One connect_watcher against a loopback server running `handler` (None: a port nobody
    listens on). The server's side of each connection is closed and waited for after."""
    errors: Counter[str] = Counter()

    async def scenario() -> Outcome:
        if handler is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            return await connect_watcher(session(), port, timeout_s, errors)
        assert handler is not None
        serving: list[asyncio.Task[None]] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            serving.append(task)
            try:
                await handler(reader, writer)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            out = await connect_watcher(session(), port, timeout_s, errors)
            if out.watcher is not None and out.watcher.transport is not None:
                out.watcher.transport.abort()  # the server's read ends: its handler returns
            await asyncio.wait_for(asyncio.gather(*serving), 5)
            return out
        finally:
            server.close()
            await server.wait_closed()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(scenario()), errors


def frame(message: dict[str, object]) -> bytes:
    payload = json.dumps(message, separators=(",", ":")).encode()
    assert len(payload) < 126
    return bytes((0x81, len(payload))) + payload


async def upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Read the client's upgrade request and accept it."""
    request = await reader.readuntil(b"\r\n\r\n")
    key = re.search(rb"Sec-WebSocket-Key: (\S+)", request)
    assert key is not None
    assert request.startswith(f"GET /ws/tracking/{TID} HTTP/1.1".encode())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: %b\r\n\r\n" % accept_key(key.group(1)).encode())


def test_a_port_nobody_listens_on_is_refused(loop_factory: LoopFactory) -> None:
    out, _ = attempt(loop_factory, None)
    assert (out.failure, out.stage, out.watcher) == ("refused", "connect", None)


def test_a_server_that_closes_before_answering_closed_early(loop_factory: LoopFactory) -> None:
    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    out, _ = attempt(loop_factory, close)
    assert (out.failure, out.stage) == ("closed_early", "handshake")


def test_a_server_that_resets_the_connection_is_a_reset(loop_factory: LoopFactory) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    out, _ = attempt(loop_factory, reset)
    assert (out.failure, out.stage) == ("reset", "handshake")


def test_a_refusal_over_http_is_a_bad_handshake(loop_factory: LoopFactory) -> None:
    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()  # until the client goes

    out, _ = attempt(loop_factory, busy)
    assert (out.failure, out.stage) == ("bad_handshake", "handshake")


def test_a_socket_closed_after_the_upgrade_without_initial_state_closed_early(
    loop_factory: LoopFactory,
) -> None:
    async def upgrade_then_close(reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
        writer.write(await upgrade(reader, writer) + b"\x88\x02\x03\xf3")  # close 1011
        await writer.drain()
        writer.close()

    out, _ = attempt(loop_factory, upgrade_then_close)
    assert (out.failure, out.stage) == ("closed_early", "initial_state")


def test_a_server_that_never_answers_times_out(loop_factory: LoopFactory) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    out, _ = attempt(loop_factory, silent, timeout_s=0.3)
    assert (out.failure, out.stage) == ("timeout", "handshake")


def test_initial_state_makes_the_connection_and_its_seq_is_kept_past_later_frames(
    loop_factory: LoopFactory,
) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # initial_state and the next update in one write: one read on the client side
        writer.write(await upgrade(reader, writer)
                     + frame({"type": "initial_state", "data": {"tracking_id": TID, "seq": 7}})
                     + frame({"type": "location_update", "data": {"tracking_id": TID,
                                                                  "seq": 8}}))
        await writer.drain()
        await reader.read()

    out, errors = attempt(loop_factory, serve)
    assert (out.failure, out.stage) == (None, "made")
    assert out.watcher is not None
    assert out.watcher.initial_seq == 7
    assert list(out.watcher.seqs) == [8]
    assert out.at == out.watcher.made_at > 0
    assert errors == Counter()


# ------------------------------------------------------------------------------ accounting
def test_a_watcher_owes_the_frames_newer_than_its_initial_state() -> None:
    accepted = [{1: 0, 2: 2, 3: 4, 4: 6}, {1: 1, 2: 3}]  # session -> seq -> update k
    counted = tally(accepted, [
        (0, 0, [1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0]),  # there from the start: all four
        (0, 2, [3, 4, 4], [3.1, 4.1, 4.2]),  # joined at seq 2: owes 3 and 4; one duplicate
        (0, 1, [2, 4, 9], [2.2, 4.2, 9.0]),  # misses 3; 9 was never accepted
        (1, 0, [1, 1], [1.5, 1.6]),  # misses 2 (and repeats 1)
        (1, 2, [2], [2.5]),  # a frame its initial_state already showed
    ])
    assert counted.owed == 4 + 2 + 3 + 2 + 0
    assert counted.received == 4 + 2 + 2 + 1 + 0
    assert counted.lost == 2
    assert (counted.duplicates, counted.unmatched, counted.stale) == (2, 1, 1)
    assert sorted(counted.frames)[:3] == [(0, 1.0), (1, 1.5), (2, 2.0)]
    assert len(counted.frames) == counted.received


def test_windows_split_latencies_and_events_by_time_and_name_their_phases() -> None:
    phases = [("lead", 0.0, 5.0), ("storm", 5.0, 12.0), ("hold", 12.0, 23.0)]
    rows = windows(5.0, 23.0, phases,
                   [(0.5, 1.0), (6.0, 10.0), (7.0, 30.0), (22.9, 2.0), (99.0, 4.0)],
                   {"made": [5.0, 6.0, 11.9, 12.0], "failed": [-1.0]})
    assert [(r["start_s"], r["end_s"], r["phase"]) for r in rows] == [
        (0.0, 5.0, "lead"), (5.0, 10.0, "storm"), (10.0, 15.0, "storm+hold"),
        (15.0, 20.0, "hold"), (20.0, 23.0, "hold")]
    assert [r["made"] for r in rows] == [0, 2, 2, 0, 0]
    assert [r["failed"] for r in rows] == [1, 0, 0, 0, 0]  # before 0 counts in the first
    assert [r["fanout_ms"]["n"] for r in rows] == [1, 2, 0, 0, 2]  # after the end: the last
    assert rows[1]["fanout_ms"]["p50"] == 10.0
    assert rows[1]["fanout_ms"]["max"] == 30.0
    assert rows[2]["fanout_ms"]["p99"] is None


# ------------------------------------------------------------------------------ limits, target
def test_the_fd_limit_is_raised_to_the_hard_limit_or_the_need_is_explained() -> None:
    assert nofile_plan(1024, 65536, 10_100) == (65536, None)
    assert nofile_plan(20000, 20000, 10_100) == (20000, None)
    import resource

    assert nofile_plan(1024, resource.RLIM_INFINITY, 10_100) == (10_100, None)
    soft, problem = nofile_plan(1024, 4096, 10_000 + 8 + FD_SLACK)
    assert soft == 4096
    assert problem is not None
    assert "10072" in problem
    assert "4096" in problem
    assert "--watchers" in problem


def result(made: int = 10_000, rate: float = 1005.0, storm_p99: float | None = 40.0,
           lost: int = 0) -> dict[str, object]:
    return {
        "storm": {"planned": 10_000, "made": made, "achieved_per_s": rate},
        "fanout": {"storm": {"p99": storm_p99}, "steady": {"p99": 8.0}},
        "loss": {"lost": lost}, "dropped": {"count": 0},
    }


def test_the_target_is_met_only_by_all_of_it() -> None:
    assert target_unmet(result()) == []
    unmet = target_unmet(result(made=9_990, rate=640.0, storm_p99=None, lost=3))
    assert unmet == ["10 connections not made", "connect rate 640.0/s < 1000/s",
                     "fan-out p99 storm None ms", "3 frames lost, 0 sockets dropped"]
    assert target_unmet(result(storm_p99=100.0)) == ["fan-out p99 storm 100.0 ms"]


# ------------------------------------------------------------------------------ the command
def test_by_default_the_issues_storm() -> None:
    args = parse_args([])
    assert (args.watchers, args.connect_rate, args.sessions, args.update_rate, args.hold) == (
        10_000, 1000.0, 100, 100.0, 20.0)
    assert args.max_in_flight == Plan().max_in_flight == 4096


@pytest.mark.parametrize("argv", [
    ["--url", "http://127.0.0.1:8500"],  # no secret, no pid
    ["--secret", "s"],
    ["--url", "http://example.com:8500", "--secret", "s", "--pid", "1"],
    ["--watchers", "0"],
    ["--connect-rate", "0"],
    ["--hold", "-1"],
    ["--max-in-flight", "0"],
])
def test_bad_command_lines_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
