"""The pure parts of loadtests/api_cpu.py: the frame parser and the watcher's receive path, the
percentile, the CPU-time readers, and the command's configurations."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.utils import apply_mask

from loadtests.api_cpu import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Config,
    CpuSample,
    CpuWindow,
    FrameParser,
    ProtocolError,
    Session,
    Watcher,
    accept_key,
    check_handshake,
    check_loopback,
    client_frame,
    configs_from,
    cpu_seconds,
    location_seq,
    machine_ticks,
    parse_args,
    percentile,
    post_head,
    post_request,
    single_text_frame,
    stat_cpu_split,
    stat_cpu_ticks,
    view_seq,
)

TID = "TRK-abcdefghijklmnopqrstuvwx"


def frame(op: Opcode, payload: bytes, fin: bool = True) -> bytes:
    """A server frame as the websockets library writes it (unmasked): the reference."""
    return Frame(op, payload, fin=fin).serialize(mask=False)


def view(seq: int, tid: str = TID) -> dict[str, object]:
    return {
        "tracking_id": tid, "order_id": "ORD-1", "rider_id": "RIDER-1", "status": "ASSIGNED",
        "current_location": {"lat": 5.6, "lng": -0.18, "timestamp": 1704067850},
        "dropoff": {"lat": 5.61, "lng": -0.19}, "eta_seconds": 120,
        "updated_at": 1704067850, "seq": seq, "started_at": 1704067800,
    }


def message(kind: str, seq: int, tid: str = TID) -> bytes:
    """A message as the servers write it: compact JSON, type first."""
    return json.dumps({"type": kind, "data": view(seq, tid)}, separators=(",", ":")).encode()


# -------------------------------------------------------------------- the frame parser
@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_a_text_frame_of_any_length_class_is_one_message(size: int) -> None:
    payload = b"x" * size
    assert FrameParser().feed(frame(Opcode.TEXT, payload)) == [(OP_TEXT, payload)]


def test_frames_split_anywhere_come_out_whole_once_complete() -> None:
    data = frame(Opcode.TEXT, b"a" * 300) + frame(Opcode.TEXT, b"bc")
    parser = FrameParser()
    out: list[tuple[int, bytes]] = []
    for i in range(len(data)):
        out += parser.feed(data[i:i + 1])
        assert parser.idle == (i == len(data) - 1 or i == 303)
    assert out == [(OP_TEXT, b"a" * 300), (OP_TEXT, b"bc")]


def test_fragments_are_joined_and_a_ping_between_them_comes_first() -> None:
    data = (frame(Opcode.TEXT, b"he", fin=False) + frame(Opcode.PING, b"p")
            + frame(Opcode.CONT, b"ll", fin=False) + frame(Opcode.CONT, b"o"))
    parser = FrameParser()
    assert parser.feed(data[:5]) == []
    assert parser.feed(data[5:]) == [(OP_PING, b"p"), (OP_TEXT, b"hello")]
    assert parser.idle


@given(
    st.lists(st.tuples(st.sampled_from([Opcode.TEXT, Opcode.BINARY, Opcode.PING, Opcode.PONG]),
                       st.binary(max_size=400)), max_size=8),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=6),
)
def test_any_stream_cut_anywhere_parses_to_the_messages_sent(
    messages: list[tuple[Opcode, bytes]], cuts: list[int],
) -> None:
    messages = [(op, p[:125] if op in (Opcode.PING, Opcode.PONG) else p) for op, p in messages]
    data = b"".join(frame(op, p) for op, p in messages)
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    parser = FrameParser()
    out: list[tuple[int, bytes]] = []
    for a, b in itertools.pairwise(bounds):
        out += parser.feed(data[a:b])
    assert out == [(op.value, p) for op, p in messages]
    assert parser.idle


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (bytes([0x81, 0x81]) + b"mask" + b"x", "masked"),
        (bytes([0xC1, 0x01]) + b"x", "reserved"),
        (bytes([0x80, 0x01]) + b"x", "continuation"),
        (bytes([0x09, 0x01]) + b"x", "control"),
        (bytes([0x83, 0x01]) + b"x", "opcode"),
        (frame(Opcode.TEXT, b"a", fin=False) + frame(Opcode.TEXT, b"b"), "inside"),
    ],
)
def test_what_a_server_must_not_send_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        FrameParser().feed(data)


def test_a_frame_over_the_limit_is_refused_before_it_is_buffered() -> None:
    with pytest.raises(ProtocolError, match="limit"):
        FrameParser(max_size=1000).feed(frame(Opcode.TEXT, b"x" * 1001)[:10])


@pytest.mark.parametrize("size", [0, 2, 5, 125, 126, 300, 70000])
def test_a_client_frame_is_masked_as_rfc_6455_says(size: int) -> None:
    payload = os.urandom(size)
    mask = os.urandom(4)
    raw = client_frame(OP_PONG, payload, mask)
    head = {True: 2, False: 4 if size < 65536 else 10}[size < 126]
    assert raw[0] == 0x80 | OP_PONG
    assert raw[1] & 0x80
    assert raw[head:head + 4] == mask
    assert apply_mask(raw[head + 4:], mask) == payload
    with pytest.raises(ValueError, match="4 bytes"):
        client_frame(OP_PONG, payload, b"abc")


def test_the_handshake_accept_key_is_the_rfc_example() -> None:
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    assert accept_key(key) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    ok = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    check_handshake(ok, key)
    with pytest.raises(ProtocolError, match="403"):
        check_handshake(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0", key)
    with pytest.raises(ProtocolError, match="Accept"):
        check_handshake(ok.replace(b"s3pP", b"XXXX"), key)
    with pytest.raises(ProtocolError, match="extension"):
        check_handshake(ok + b"\r\nSec-WebSocket-Extensions: permessage-deflate", key)


# -------------------------------------------------------------------- finding seq
def test_a_location_update_gives_its_seq_and_nothing_else_does() -> None:
    quoted = b'"%b"' % TID.encode()
    assert location_seq(message("location_update", 42), quoted) == 42
    assert location_seq(message("location_update", 42, "TRK-other"), quoted) is None
    assert location_seq(message("initial_state", 1), quoted) is None
    assert location_seq(message("status_change", 7), quoted) is None
    framed = frame(Opcode.TEXT, message("location_update", 9))
    head = single_text_frame(framed)
    assert head == 4
    assert location_seq(framed, quoted, head) == 9


def test_a_views_seq_is_found_compact_or_spaced() -> None:
    assert view_seq(json.dumps(view(12)).encode()) == 12
    assert view_seq(json.dumps(view(3), separators=(",", ":")).encode()) == 3
    assert view_seq(b'{"detail":"Tracking session expired"}') is None


def test_only_one_whole_unfragmented_text_frame_takes_the_fast_path() -> None:
    one = frame(Opcode.TEXT, b"x" * 10)
    assert single_text_frame(one) == 2
    assert single_text_frame(frame(Opcode.TEXT, b"x" * 200)) == 4
    assert single_text_frame(one + one) == -1
    assert single_text_frame(one[:-1]) == -1
    assert single_text_frame(frame(Opcode.TEXT, b"x", fin=False)) == -1
    assert single_text_frame(frame(Opcode.PING, b"x")) == -1
    assert single_text_frame(frame(Opcode.TEXT, b"x" * 70000)) == -1
    assert single_text_frame(b"\x81") == -1


# -------------------------------------------------------------------- the watcher, no network
class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def test_a_watcher_records_every_location_update_however_the_bytes_arrive() -> None:
    async def scenario() -> tuple[Watcher, FakeTransport, Counter[str]]:
        errors: Counter[str] = Counter()
        session = Session(0, "RIDER-1", "ORD-1", "token", 5.6, -0.18, tracking_id=TID)
        key = b"dGhlIHNhbXBsZSBub25jZQ=="
        ws = Watcher(session, key, errors)
        transport = FakeTransport()
        ws.connection_made(transport)  # type: ignore[arg-type]
        hello = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
        ws.data_received(hello + frame(Opcode.TEXT, message("initial_state", 1))[:7])
        assert not ws.ready.done()
        ws.data_received(frame(Opcode.TEXT, message("initial_state", 1))[7:])
        assert ws.ready.done()
        ws.data_received(frame(Opcode.TEXT, message("location_update", 2)))  # the fast path
        both = frame(Opcode.TEXT, message("location_update", 3)) + frame(
            Opcode.TEXT, message("location_update", 4))
        ws.data_received(both[:50])
        ws.data_received(both[50:])
        ws.data_received(frame(Opcode.PING, b"hi"))
        ws.data_received(frame(Opcode.TEXT, message("location_update", 4)))  # a repeat
        ws.data_received(frame(Opcode.TEXT, b'{"type":"error","message":"nope"}'))
        ws.data_received(frame(Opcode.CLOSE, (1008).to_bytes(2, "big")))
        return ws, transport, errors

    ws, transport, errors = asyncio.run(scenario())
    assert list(ws.seqs) == [2, 3, 4, 4]
    assert len(ws.times) == 4
    assert ws.out_of_order == 1
    assert errors == Counter({"ws:message:error": 1})
    assert ws.close_code == 1008
    assert transport.closed
    pong, close = transport.written
    assert pong[0] == 0x80 | OP_PONG
    assert apply_mask(pong[6:], pong[2:6]) == b"hi"
    assert close[0] == 0x80 | OP_CLOSE
    assert apply_mask(close[6:], close[2:6]) == (1008).to_bytes(2, "big")


# -------------------------------------------------------------------- percentile
def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([7.0], 99) == 7
    assert percentile([], 50) is None
    with pytest.raises(ValueError, match="between"):
        percentile(values, 101)


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1),
       st.floats(min_value=0, max_value=100))
def test_a_percentile_is_a_member_with_at_least_that_share_at_or_below_it(
    values: list[float], p: float,
) -> None:
    ordered = sorted(values)
    q = percentile(ordered, p)
    assert q in ordered
    assert sum(1 for v in ordered if v <= q) >= p / 100 * len(ordered)


# -------------------------------------------------------------------- CPU time
def test_utime_and_stime_are_read_past_a_command_name_with_spaces_and_parens() -> None:
    fields = ["S", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "250", "50", "99", "98"]
    stat = "1234 (ray::Shard (x) 1) " + " ".join(fields) + "\n"
    assert stat_cpu_split(stat) == (250, 50)
    assert stat_cpu_ticks(stat) == 300


def test_this_process_cpu_time_agrees_with_os_times() -> None:
    sum(i * i for i in range(200_000))  # some CPU to read
    ticks = os.sysconf("SC_CLK_TCK")
    before = os.times()
    mine = cpu_seconds(os.getpid(), ticks)
    after = os.times()
    assert mine is not None
    assert before.user + before.system - 0.02 <= mine <= after.user + after.system + 0.02


def test_a_process_that_is_gone_has_no_cpu_time() -> None:
    assert cpu_seconds(2**22 + 12345, 100) is None  # above any pid_max


def test_machine_busy_leaves_out_idle_and_iowait() -> None:
    stat = "cpu  100 10 50 800 40 0 5 20 7 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
    assert machine_ticks(stat) == (185, 1025)


def test_a_window_subtracts_the_edges_and_counts_processes_that_came_and_went() -> None:
    a = CpuSample(10.0, 5.0, 1.0, {1: 5.0, 2: 1.0, 3: 2.0}, 0.5, (100, 1000))
    b = CpuSample(30.0, 9.0, 2.5, {1: 9.0, 2: 3.0}, 2.5, (600, 5000))
    w = CpuWindow.between(a, b, joined={4: 0.5})
    assert w.seconds == 20
    assert w.api_s == 4
    assert w.api_sys_s == 1.5
    assert w.tree_s == 4 + 2 + 0.5
    assert w.gen_s == 2
    assert w.tree_processes == 3
    assert w.tree_changed == 2
    assert w.machine_busy_pct == 12.5
    with pytest.raises(RuntimeError, match="gone"):
        CpuWindow.between(a, CpuSample(30.0, None, None, {}, 2.5, (600, 5000)), {})


# -------------------------------------------------------------------- the command
def test_by_default_two_configurations_of_a_thousand_sockets() -> None:
    configs = configs_from(parse_args([]))
    assert configs == [
        Config(sessions=100, watchers_per_session=10, rate=500, seconds=20, warmup=3,
               http_conns=16),
        Config(sessions=10, watchers_per_session=100, rate=500, seconds=20, warmup=3,
               http_conns=16),
    ]
    assert [c.sockets for c in configs] == [1000, 1000]
    small = configs_from(parse_args(["--watchers-per-session", "4", "--sessions", "5"]))
    assert [(c.sessions, c.watchers_per_session) for c in small] == [(5, 4)]


@pytest.mark.parametrize(
    "argv",
    [
        ["--url", "http://10.0.0.1:8500", "--secret", "s", "--pid", "1"],
        ["--url", "http://example.com:8500", "--secret", "s", "--pid", "1"],
        ["--url", "http://127.0.0.1:8500"],
        ["--secret", "s"],
        ["--watchers-per-session", "0"],
        ["--watchers-per-session", "2000"],
        ["--rate", "0"],
    ],
)
def test_bad_command_lines_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_only_loopback_is_a_target() -> None:
    assert check_loopback("http://127.0.0.1:8500") == ("127.0.0.1", 8500)
    assert check_loopback("http://localhost:9") == ("127.0.0.1", 9)
    for url in ["https://127.0.0.1:1", "http://127.0.0.2:1", "http://[::1]:1"]:
        with pytest.raises(ValueError, match="no other host"):
            check_loopback(url)
    with pytest.raises(ValueError, match="give the port"):
        check_loopback("http://127.0.0.1")


def test_a_post_is_one_well_formed_request() -> None:
    head = post_head("127.0.0.1", 8500, "/tracking/update/TRK-1", "tok")
    raw = post_request(head, b'{"lat":1.0,"lng":2.0}')
    assert raw == (b"POST /tracking/update/TRK-1 HTTP/1.1\r\nHost: 127.0.0.1:8500\r\n"
                   b"Authorization: Bearer tok\r\nContent-Type: application/json\r\n"
                   b'Content-Length: 21\r\n\r\n{"lat":1.0,"lng":2.0}')
