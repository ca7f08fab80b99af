"""Where the time goes: the API process's CPU per accepted update and per fanned-out frame.

    python -m loadtests.api_cpu                          # 100 x 10 then 10 x 100 watchers
    python -m loadtests.api_cpu --watchers-per-session 10 --sockets 1000 --rate 300
    python -m loadtests.api_cpu --python ../old/.venv/bin/python --cwd ../old   # another checkout
    python -m loadtests.api_cpu --url http://127.0.0.1:8500 --secret S --pid PID  # a running one

Each configuration (by default 100 sessions x 10 watchers, then 10 sessions x 100 watchers:
1,000 sockets each) runs on a freshly started server of its own (unless --url): it starts its
sessions over HTTP, connects every watcher (each gets its `initial_state`), reads the API
process's idle CPU for `--idle` s, then posts location updates on an open-loop schedule: update
k is planned at t0 + k/rate for session k mod sessions, sent on the first free keep-alive
connection (so a server that falls behind shows up as latency from the planned time, not as a
lower offered rate; nothing is sent after the window, and what its schedule could not send is
reported as unsent). After `--warmup` s the measured window of `--seconds` s begins; at its two
edges the CPU time (utime + stime, /proc/PID/stat) of the `tracking serve` process (the API
process: uvicorn serves in it with --workers 1), of its whole process tree (Ray's raylet and
shard workers included) and of this generator is read. Per configuration the report gives:

- accepted updates/s (200 responses that came back inside the window) and location_update
  frames received by the watchers/s (inside the window);
- API-process CPU ms per accepted update and us per received frame (the same CPU, divided
  by either count), the tree's CPU ms per update, the generator's CPU %;
- loss: every accepted update of the run (warm-up included) owes one frame to every watcher
  of its session; loss = owed - received after a bounded drain (matched by (tracking_id,
  seq): the update's response carries the view's `seq`, and so does each frame);
- fan-out latency p50/p99 from the planned send time to the watcher's receipt, for the
  updates planned inside the window (those left unsent are counted apart).

On loopback the kernel's TCP receive work for a watcher's socket mostly runs in the sending
process's system call, so the API process's system time (reported apart) includes part of
what a real network would do elsewhere. Generator and server share the machine: read the
generator's CPU % and the machine's busy % (and the load average) next to every figure.

The generator is built to cost little next to the server: a raw HTTP/1.1 keep-alive client
(httptools), a receive-only RFC 6455 client that parses frames in `data_received` and finds a
frame's `seq` by a bytes search rather than decoding its JSON, uvloop, and no cyclic GC during
the run. Traffic goes to 127.0.0.1 only; every loop is bounded in count and time. The JSON
(`--out`) records the command line and the server checkout's commit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import hashlib
import json
import math
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

from harness import ServerProcess, descendants, mint

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK_NAMES = {"127.0.0.1", "localhost"}
LOOPBACK = "127.0.0.1"
BASE_LAT, BASE_LNG = 5.6037, -0.1869  # Accra, as in the contract's example
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_MESSAGE = 1 << 20  # the server's own ws_max_size; a view is a few hundred bytes
MAX_HANDSHAKE = 16 * 1024

LOCATION_PREFIX = b'{"type":"location_update"'
_SEQ = re.compile(rb'"seq"\s*:\s*(\d+)')


# ------------------------------------------------------------------------------ pure parts
class ProtocolError(Exception):
    """The server broke RFC 6455 (or sent something this receive-only client refuses)."""


class FrameParser:
    """Incremental parser of a server's WebSocket frames (RFC 6455 5.2: unmasked, no extensions).

    `feed(data)` returns the complete messages in `data` (with what was left over before) as
    (opcode, payload): text and binary messages reassembled from fragments, control frames as
    they come (they may sit between fragments). A partial frame waits for the next feed."""

    __slots__ = ("_frag", "_frag_op", "_frag_size", "_rest", "max_size")

    def __init__(self, max_size: int = MAX_MESSAGE) -> None:
        self.max_size = max_size
        self._rest = b""
        self._frag: list[bytes] | None = None
        self._frag_op = 0
        self._frag_size = 0

    @property
    def idle(self) -> bool:
        """Between messages: no partial frame held back, no fragmented message under way."""
        return not self._rest and self._frag is None

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._rest + data if self._rest else bytes(data)
        out: list[tuple[int, bytes]] = []
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if b0 & 0x70:
                raise ProtocolError("reserved bits set (no extension was negotiated)")
            if b1 & 0x80:
                raise ProtocolError("a masked frame from the server")
            length = b1 & 0x7F
            head = pos + 2
            if length == 126:
                if n - head < 2:
                    break
                length = int.from_bytes(buf[head:head + 2], "big")
                head += 2
            elif length == 127:
                if n - head < 8:
                    break
                length = int.from_bytes(buf[head:head + 8], "big")
                head += 8
            if length > self.max_size:
                raise ProtocolError(f"a frame of {length} bytes (limit {self.max_size})")
            if n - head < length:
                break
            payload = buf[head:head + length]
            pos = head + length
            op = b0 & 0x0F
            fin = b0 & 0x80
            if op >= OP_CLOSE:
                if not fin or length > 125:
                    raise ProtocolError("a fragmented or oversized control frame")
                if op not in (OP_CLOSE, OP_PING, OP_PONG):
                    raise ProtocolError(f"unknown control opcode {op:#x}")
                out.append((op, payload))
            elif op == OP_CONT:
                if self._frag is None:
                    raise ProtocolError("a continuation frame outside a fragmented message")
                self._frag.append(payload)
                self._frag_size += length
                if self._frag_size > self.max_size:
                    raise ProtocolError(f"a message over {self.max_size} bytes")
                if fin:
                    out.append((self._frag_op, b"".join(self._frag)))
                    self._frag = None
            elif op in (OP_TEXT, OP_BINARY):
                if self._frag is not None:
                    raise ProtocolError("a new message inside a fragmented one")
                if fin:
                    out.append((op, payload))
                else:
                    self._frag, self._frag_op, self._frag_size = [payload], op, length
            else:
                raise ProtocolError(f"unknown data opcode {op:#x}")
        self._rest = buf[pos:] if pos < n else b""
        return out


def client_frame(op: int, payload: bytes, mask: bytes) -> bytes:
    """One final client frame: masked with the 4-byte `mask`, as RFC 6455 5.3 requires."""
    if len(mask) != 4:
        raise ValueError("a WebSocket mask is 4 bytes")
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | op, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | op, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | op, 0x80 | 127)) + n.to_bytes(8, "big")
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big") if n else 0
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big") if n else b""
    return head + mask + masked


def accept_key(key: bytes) -> str:
    """The Sec-WebSocket-Accept a server must answer to Sec-WebSocket-Key `key`."""
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()


def check_handshake(head: bytes, key: bytes) -> None:
    """Raise ProtocolError unless `head` (status line and headers, without the blank line)
    is a 101 that accepts `key` and negotiated no extension."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or parts[1] != "101":
        raise ProtocolError(f"handshake answered {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("sec-websocket-accept") != accept_key(key):
        raise ProtocolError("handshake: wrong Sec-WebSocket-Accept")
    if headers.get("sec-websocket-extensions"):
        raise ProtocolError("handshake: an extension was negotiated")


def view_seq(payload: bytes, start: int = 0) -> int | None:
    """The `seq` in a view's JSON (an update's response body, or a message carrying a view),
    found by a bytes search from `start`: the view has one `seq` and no nested object has."""
    m = _SEQ.search(payload, start)
    return int(m.group(1)) if m else None


def location_seq(buf: bytes, quoted_id: bytes, start: int = 0) -> int | None:
    """The `seq` of a `location_update` message (in `buf` from `start` to its end) for the
    session whose id, in double quotes, is `quoted_id`; None for anything else.

    The servers this measures write the message compactly, type first
    (`{"type":"location_update","data":{...}}`): a prefix test, a search for the id and one
    for `"seq":` instead of decoding the JSON, which is what a frame costs the generator.
    `start` lets a caller look inside a frame without copying its payload out."""
    if not buf.startswith(LOCATION_PREFIX, start):
        return None
    if buf.find(quoted_id, start) < 0:
        return None
    return view_seq(buf, start)


def single_text_frame(data: bytes) -> int:
    """Where the payload starts when `data` is exactly one final, unmasked text frame of under
    64 KiB (what a watcher's socket delivers almost every time), else -1."""
    n = len(data)
    if n < 2 or data[0] != 0x80 | OP_TEXT:
        return -1
    length = data[1]
    if length < 126:
        head = 2
    elif length == 126 and n >= 4:
        length = (data[2] << 8) | data[3]
        head = 4
    else:
        return -1
    return head if head + length == n else -1


def message_type(payload: bytes) -> str:
    """A message's `type` by decoding it (the slow path, for anything but a location_update)."""
    try:
        msg = json.loads(payload)
    except ValueError:
        return "not-json"
    kind = msg.get("type") if isinstance(msg, dict) else None
    return kind if isinstance(kind, str) else "no-type"


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in [0, 100]) of already sorted `values`; None when empty."""
    if not 0 <= p <= 100:
        raise ValueError("a percentile is between 0 and 100")
    if not values:
        return None
    rank = max(1, math.ceil(p / 100 * len(values)))
    return values[rank - 1]


def stat_cpu_split(stat: str) -> tuple[int, int]:
    """(utime, stime) in clock ticks from the text of /proc/PID/stat (all the process's threads).

    The command name (field 2) is in parentheses and may hold spaces or parentheses itself,
    so the fields are counted from the last ')': utime and stime are fields 14 and 15."""
    rest = stat.rsplit(")", 1)[1].split()
    return int(rest[11]), int(rest[12])


def stat_cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks) from the text of /proc/PID/stat."""
    user, system = stat_cpu_split(stat)
    return user + system


def cpu_split_seconds(pid: int, ticks_per_s: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds a live process has used; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            user, system = stat_cpu_split(f.read())
    except (OSError, IndexError, ValueError):
        return None
    return user / ticks_per_s, system / ticks_per_s


def cpu_seconds(pid: int, ticks_per_s: int) -> float | None:
    """CPU time (user + system, all threads) a live process has used; None if it is gone."""
    split = cpu_split_seconds(pid, ticks_per_s)
    return None if split is None else split[0] + split[1]


def machine_ticks(stat: str) -> tuple[int, int]:
    """(busy, total) jiffies over all cores from the first line of /proc/stat (busy: all but
    idle and iowait, as psutil.cpu_percent counts it; steal and other jobs included)."""
    fields = [int(x) for x in stat.split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])  # guest time is already inside user/nice
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return total - idle, total


def summarize_ms(values: Iterable[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": _round(percentile(ordered, 50), 2),
        "p99": _round(percentile(ordered, 99), 2),
        "max": _round(ordered[-1] if ordered else None, 2),
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _div(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def check_loopback(url: str) -> tuple[str, int]:
    """(host, port) of an http URL on this machine's loopback; anything else is refused."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK_NAMES:
        raise ValueError(f"{url!r}: only http://127.0.0.1:PORT is measured (no other host)")
    if parts.port is None:
        raise ValueError(f"{url!r}: give the port")
    return LOOPBACK, parts.port


# ------------------------------------------------------------------------------ CPU windows
@dataclass(frozen=True)
class CpuSample:
    at: float  # time.monotonic()
    api_s: float | None
    api_sys_s: float | None  # the part of api_s spent in the kernel
    tree_s: dict[int, float]
    gen_s: float
    machine: tuple[int, int]


class CpuProbe:
    """Reads the API process, its process tree and this generator at the window's edges.

    The tree's members are listed before the run (listing walks all of /proc); at the end a
    process that joined the tree meanwhile counts with all its CPU, one that left is lost."""

    def __init__(self, api_pid: int) -> None:
        self.api_pid = api_pid
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.tree = [api_pid, *descendants(api_pid)]

    def sample(self) -> CpuSample:
        at = time.monotonic()
        tree: dict[int, float] = {}
        api_sys = None
        for pid in self.tree:
            split = cpu_split_seconds(pid, self.ticks)
            if split is not None:
                tree[pid] = split[0] + split[1]
                if pid == self.api_pid:
                    api_sys = split[1]
        with open("/proc/stat") as f:
            machine = machine_ticks(f.read())
        return CpuSample(at, tree.get(self.api_pid), api_sys, tree, time.process_time(),
                         machine)

    def joined(self) -> dict[int, float]:
        """Processes in the tree now that were not when it was listed, with their CPU."""
        known = set(self.tree)
        out: dict[int, float] = {}
        for pid in descendants(self.api_pid):
            if pid not in known:
                cpu = cpu_seconds(pid, self.ticks)
                if cpu is not None:
                    out[pid] = cpu
        return out


@dataclass(frozen=True)
class CpuWindow:
    seconds: float
    api_s: float
    api_sys_s: float
    tree_s: float
    gen_s: float
    tree_processes: int
    tree_changed: int  # processes that joined or left the tree during the window
    machine_busy_pct: float | None  # of all cores

    @staticmethod
    def between(a: CpuSample, b: CpuSample, joined: dict[int, float]) -> CpuWindow:
        if a.api_s is None or b.api_s is None or a.api_sys_s is None or b.api_sys_s is None:
            raise RuntimeError("the API process was gone at the window's edge")
        tree = sum(b.tree_s[p] - a.tree_s[p] for p in a.tree_s if p in b.tree_s)
        left = sum(1 for p in a.tree_s if p not in b.tree_s)
        busy = b.machine[0] - a.machine[0]
        total = b.machine[1] - a.machine[1]
        return CpuWindow(
            seconds=b.at - a.at,
            api_s=b.api_s - a.api_s,
            api_sys_s=b.api_sys_s - a.api_sys_s,
            tree_s=tree + sum(joined.values()),
            gen_s=b.gen_s - a.gen_s,
            tree_processes=len(b.tree_s) + len(joined),
            tree_changed=left + len(joined),
            machine_busy_pct=busy / total * 100 if total > 0 else None,
        )


# ------------------------------------------------------------------------------ HTTP client
class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time; httptools parses replies."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(ConnectionError(f"bad HTTP response: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionResetError("connection closed before the response"))

    def on_message_begin(self) -> None:
        self.body = []

    def on_body(self, chunk: bytes) -> None:
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        if not self.parser.should_keep_alive():
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), b"".join(self.body)))

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class HttpClient:
    """A single keep-alive connection to host:port, reopened when the server closed it."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.conn: HttpConnection | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        conn = self.conn
        if conn is None or conn.closed:
            opened = await asyncio.wait_for(
                loop.create_connection(HttpConnection, self.host, self.port), self.timeout_s)
            conn = self.conn = opened[1]
        assert conn.transport is not None
        waiter: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        conn.waiter = waiter
        conn.transport.write(raw)
        try:
            return await asyncio.wait_for(waiter, self.timeout_s)
        except BaseException:
            conn._fail(ConnectionAbortedError("request abandoned"))
            self.conn = None
            raise

    def close(self) -> None:
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.close()
        self.conn = None


def post_head(host: str, port: int, path: str, token: str) -> bytes:
    """Everything of a JSON POST before its Content-Length value."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: "
    ).encode()


def post_request(head: bytes, body: bytes) -> bytes:
    return b"%b%d\r\n\r\n%b" % (head, len(body), body)


# ------------------------------------------------------------------------------ watchers
@dataclass(eq=False)
class Session:
    index: int
    rider_id: str
    order_id: str
    token: str
    drop_lat: float
    drop_lng: float
    tracking_id: str = ""
    update_head: bytes = b""
    watchers: list[Watcher] = field(default_factory=list)


class Watcher(asyncio.Protocol):
    """A receive-only WebSocket client of one session: records (seq, receipt time) of each
    location_update, answers pings, counts everything else."""

    def __init__(self, session: Session, key: bytes, errors: Counter[str]) -> None:
        loop = asyncio.get_running_loop()
        self.session = session
        self.tid = session.tracking_id.encode()
        self.quoted_id = b'"%b"' % self.tid
        self.key = key
        self.errors = errors
        self.transport: asyncio.Transport | None = None
        self.handshake = b""
        self.upgraded = False
        self.parser = FrameParser()
        self.ready: asyncio.Future[None] = loop.create_future()  # initial_state received
        self.closed: asyncio.Future[None] = loop.create_future()
        self.seqs: array[int] = array("q")
        self.times: array[float] = array("d")
        self.last_seq = -1
        self.out_of_order = 0
        self.close_code: int | None = None
        self.close_sent = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_code is None:
            self.close_code = 1006
        self._settle(ConnectionResetError("connection closed before initial_state"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _settle(self, exc: Exception) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
            self.ready.exception()  # retrieved: whoever awaits it sees it; nobody else warns

    def send(self, op: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(op, payload, os.urandom(4)))

    def data_received(self, data: bytes) -> None:
        t = time.monotonic()
        if not self.upgraded:
            self.handshake += data
            end = self.handshake.find(b"\r\n\r\n")
            if end < 0:
                if len(self.handshake) > MAX_HANDSHAKE:
                    self._abort(ProtocolError("handshake response too long"))
                return
            try:
                check_handshake(self.handshake[:end], self.key)
            except ProtocolError as e:
                self._abort(e)
                return
            data, self.handshake, self.upgraded = self.handshake[end + 4:], b"", True
            if not data:
                return
        elif self.parser.idle:  # the common case: one whole location_update, read in place
            head = single_text_frame(data)
            if head >= 0:
                seq = location_seq(data, self.quoted_id, head)
                if seq is not None:
                    if seq <= self.last_seq:
                        self.out_of_order += 1
                    self.last_seq = seq
                    self.seqs.append(seq)
                    self.times.append(t)
                    return
        try:
            messages = self.parser.feed(data)
        except ProtocolError as e:
            self._abort(e)
            return
        for op, payload in messages:
            if op == OP_TEXT:
                seq = location_seq(payload, self.quoted_id)
                if seq is None:
                    self._other(payload)
                    continue
                if seq <= self.last_seq:
                    self.out_of_order += 1
                self.last_seq = seq
                self.seqs.append(seq)
                self.times.append(t)
            elif op == OP_PING:
                self.send(OP_PONG, payload)
            elif op == OP_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if not self.close_sent:
                    self.close_sent = True
                    self.send(OP_CLOSE, payload[:2])
                if self.transport is not None:
                    self.transport.close()
                return
            elif op == OP_BINARY:
                self.errors["ws:binary_message"] += 1

    def _other(self, payload: bytes) -> None:
        kind = message_type(payload)
        if kind == "initial_state" and not self.ready.done():
            seq = view_seq(payload)
            self.last_seq = seq if seq is not None else -1
            self.ready.set_result(None)
        else:
            self.errors[f"ws:message:{kind[:40]}"] += 1

    def _abort(self, exc: Exception) -> None:
        self.errors[f"ws:protocol:{str(exc)[:60]}"] += 1
        self._settle(exc)
        if self.transport is not None:
            self.transport.abort()

    async def close(self, timeout_s: float) -> None:
        if self.transport is None or self.closed.done():
            return
        if not self.close_sent:
            self.close_sent = True
            self.send(OP_CLOSE, (1000).to_bytes(2, "big"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), timeout_s)
        if not self.closed.done():
            self.transport.abort()


async def open_watcher(session: Session, port: int, timeout_s: float,
                       errors: Counter[str]) -> Watcher:
    """Connect, upgrade, and wait for the session's initial_state."""
    loop = asyncio.get_running_loop()
    key = base64.b64encode(os.urandom(16))
    _, ws = await asyncio.wait_for(
        loop.create_connection(lambda: Watcher(session, key, errors), LOOPBACK, port), timeout_s)
    assert ws.transport is not None
    ws.transport.write(
        b"GET /ws/tracking/%b HTTP/1.1\r\nHost: %b:%d\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: %b\r\nSec-WebSocket-Version: 13\r\n\r\n"
        % (ws.tid, LOOPBACK.encode(), port, key)
    )
    try:
        await asyncio.wait_for(asyncio.shield(ws.ready), timeout_s)
    except BaseException:
        ws.transport.abort()
        raise
    return ws


# ------------------------------------------------------------------------------ one configuration
@dataclass(frozen=True)
class Config:
    sessions: int
    watchers_per_session: int
    rate: float  # offered updates/s
    seconds: float  # measured window
    warmup: float
    http_conns: int

    @property
    def sockets(self) -> int:
        return self.sessions * self.watchers_per_session

    @property
    def label(self) -> str:
        return f"{self.sessions} x {self.watchers_per_session}"


@dataclass(frozen=True)
class Limits:
    request_timeout_s: float = 10.0
    setup_timeout_s: float = 180.0
    drain_s: float = 5.0
    connect_concurrency: int = 64
    idle_s: float = 2.0


@dataclass(frozen=True)
class Target:
    port: int
    secret: str
    pid: int  # the API process (`tracking serve`)


def _gather_errors(results: Sequence[object], errors: Counter[str], what: str) -> None:
    for r in results:
        if isinstance(r, BaseException):
            errors[f"{what}:{type(r).__name__}"] += 1


async def _bounded(items: Sequence[Any], concurrency: int, deadline: float,
                   job: Callable[[Any], Any]) -> list[object]:
    """Run `job(item)` for each item, `concurrency` at a time, none started after `deadline`;
    results (or exceptions) in order."""
    sem = asyncio.Semaphore(concurrency)

    async def one(item: Any) -> object:
        async with sem:
            if time.monotonic() > deadline:
                raise TimeoutError("set-up deadline passed")
            return await job(item)

    return list(await asyncio.gather(*(one(i) for i in items), return_exceptions=True))


class Run:
    """Set-up, the open-loop schedule with its measured window, the drain, and the figures."""

    def __init__(self, target: Target, cfg: Config, limits: Limits) -> None:
        self.target, self.cfg, self.limits = target, cfg, limits
        self.errors: Counter[str] = Counter()
        run_id = secrets.token_hex(4)
        self.sessions = []
        for i in range(cfg.sessions):
            rider = f"RIDER-cpu-{run_id}-{i}"
            self.sessions.append(Session(
                index=i, rider_id=rider, order_id=f"ORD-cpu-{run_id}-{i}",
                token=mint(target.secret, "rider", rider),
                drop_lat=round(BASE_LAT + (i % 100) * 0.0005, 6),
                drop_lng=round(BASE_LNG + (i // 100) * 0.0005, 6),
            ))
        self.clients = [HttpClient(LOOPBACK, target.port, limits.request_timeout_s)
                        for _ in range(cfg.http_conns)]
        self.watchers: list[Watcher] = []

    # -- set-up ------------------------------------------------------------------------------
    async def setup(self) -> None:
        deadline = time.monotonic() + self.limits.setup_timeout_s
        free = list(self.clients)

        async def start(s: Session) -> None:
            client = free.pop()
            try:
                body = json.dumps({"order_id": s.order_id, "rider_id": s.rider_id,
                                   "dropoff_lat": s.drop_lat, "dropoff_lng": s.drop_lng})
                head = post_head(LOOPBACK, self.target.port, "/tracking/start", s.token)
                status, reply = await client.request(post_request(head, body.encode()))
            finally:
                free.append(client)
            if status != 201:
                raise RuntimeError(f"start answered {status}: {reply[:200]!r}")
            s.tracking_id = json.loads(reply)["tracking_id"]
            s.update_head = post_head(LOOPBACK, self.target.port,
                                      f"/tracking/update/{s.tracking_id}", s.token)

        started = await _bounded(self.sessions, len(self.clients), deadline, start)
        _gather_errors(started, self.errors, "setup:start")
        failed = [r for r in started if isinstance(r, BaseException)]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(started)} sessions did not start: "
                               f"{failed[0]!r}")

        slots = [s for s in self.sessions for _ in range(self.cfg.watchers_per_session)]

        async def connect(s: Session) -> Watcher:
            return await open_watcher(s, self.target.port, self.limits.request_timeout_s,
                                      self.errors)

        opened = await _bounded(slots, self.limits.connect_concurrency, deadline, connect)
        _gather_errors(opened, self.errors, "setup:watch")
        for r in opened:
            if isinstance(r, Watcher):
                r.session.watchers.append(r)
                self.watchers.append(r)
        if len(self.watchers) < len(slots):
            await self.close()
            raise RuntimeError(f"{len(slots) - len(self.watchers)} of {len(slots)} watchers did "
                               f"not connect: {dict(self.errors)}")

    async def close(self) -> None:
        await asyncio.gather(*(w.close(2.0) for w in self.watchers))
        for c in self.clients:
            c.close()

    # -- the schedule ------------------------------------------------------------------------
    async def load(self) -> dict[str, Any]:
        cfg, limits = self.cfg, self.limits
        n_total = round((cfg.warmup + cfg.seconds) * cfg.rate)
        interval = 1.0 / cfg.rate
        sessions = self.sessions
        n_sessions = len(sessions)
        sent = array("d", bytes(8 * n_total))
        done = array("d", bytes(8 * n_total))
        seqs = array("q", [-1]) * n_total
        accepted = bytearray(n_total)
        probe = CpuProbe(self.target.pid)
        next_k = 0
        loop = asyncio.get_running_loop()
        t0 = t_m0 = t_m1 = 0.0  # set once the collector is frozen, just before the senders start

        def body(k: int, s: Session) -> bytes:
            step = k // n_sessions
            lat = s.drop_lat + 0.002 + (step % 400) * 0.00001
            lng = s.drop_lng + 0.002 + (step // 400 % 400) * 0.00001
            return b'{"lat":%.6f,"lng":%.6f}' % (lat, lng)

        async def sender(client: HttpClient) -> None:
            nonlocal next_k
            # Nothing is sent after the window: a server behind its schedule leaves updates unsent
            # (counted) rather than stretching the run.
            while next_k < n_total and time.monotonic() < t_m1:
                k = next_k
                next_k = k + 1
                planned = t0 + k * interval
                wait = planned - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                s = sessions[k % n_sessions]
                request = post_request(s.update_head, body(k, s))
                sent[k] = time.monotonic()
                try:
                    status, reply = await client.request(request)
                except (OSError, TimeoutError) as e:
                    self.errors[f"update:{type(e).__name__}"] += 1
                    continue
                done[k] = time.monotonic()
                if status != 200:
                    self.errors[f"update:http_{status}"] += 1
                    continue
                accepted[k] = 1
                seq = view_seq(reply)
                if seq is None:
                    self.errors["update:no_seq_in_view"] += 1
                else:
                    seqs[k] = seq

        async def window() -> tuple[CpuSample, CpuSample, dict[int, float]]:
            await asyncio.sleep(max(0.0, t_m0 - time.monotonic()))
            first = probe.sample()
            await asyncio.sleep(max(0.0, t_m1 - time.monotonic()))
            last = probe.sample()
            return first, last, probe.joined()

        frames_before = self.frames_received()
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            t0 = time.monotonic() + 0.2
            t_m0 = t0 + cfg.warmup
            t_m1 = t_m0 + cfg.seconds
            cpu_task = loop.create_task(window())
            senders = [loop.create_task(sender(c)) for c in self.clients]
            # Bounded: the schedule, then the one request each sender may have in flight.
            budget = cfg.warmup + cfg.seconds + limits.request_timeout_s + 5
            _, late = await asyncio.wait([*senders, cpu_task], timeout=budget)
            for task in late:
                task.cancel()
                self.errors["run:task_over_budget"] += 1
            if cpu_task in late:
                raise RuntimeError("the measured window did not close in time")
            first, last, joined = cpu_task.result()
            n_accepted = sum(accepted)
            owed = frames_before + n_accepted * cfg.watchers_per_session
            drain_end = time.monotonic() + limits.drain_s
            while self.frames_received() < owed and time.monotonic() < drain_end:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # a poll: counting frames costs less than an event each
        finally:
            gc.enable()
            gc.unfreeze()
        cpu = CpuWindow.between(first, last, joined)
        return self.figures(cpu, t0, interval, t_m0, t_m1, sent, done, seqs, accepted)

    async def idle_cpu_pct(self, seconds: float) -> float | None:
        """The API process's CPU % with every socket open and no update: the background
        (timers, health pings, Ray's own threads) that every per-update figure also carries."""
        if seconds <= 0:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        a, t_a = cpu_seconds(self.target.pid, ticks), time.monotonic()
        await asyncio.sleep(seconds)
        b, t_b = cpu_seconds(self.target.pid, ticks), time.monotonic()
        if a is None or b is None:
            return None
        return (b - a) / (t_b - t_a) * 100

    def frames_received(self) -> int:
        return sum(len(w.seqs) for w in self.watchers)

    # -- the figures -------------------------------------------------------------------------
    def figures(self, cpu: CpuWindow, t0: float, interval: float, t_m0: float, t_m1: float,
                sent: array[float], done: array[float], seqs: array[int],
                accepted: bytearray) -> dict[str, Any]:
        cfg = self.cfg
        n_sessions = len(self.sessions)
        n_total = len(seqs)
        measured = range(math.ceil((t_m0 - t0) / interval), math.ceil((t_m1 - t0) / interval))
        measured = range(measured.start, min(measured.stop, n_total))
        # (session, seq) -> update k, for every accepted update of the run (warm-up included):
        # each owes one frame to every watcher of its session
        by_seq: list[dict[int, int]] = [{} for _ in range(n_sessions)]
        owed = 0
        for k in range(n_total):
            if accepted[k]:
                owed += len(self.sessions[k % n_sessions].watchers)
                if seqs[k] >= 0:
                    by_seq[k % n_sessions][seqs[k]] = k
        in_window = sum(1 for k in range(n_total) if accepted[k] and t_m0 <= done[k] < t_m1)
        http_ms = [(done[k] - sent[k]) * 1000 for k in measured if accepted[k]]
        send_lag_ms = [(sent[k] - (t0 + k * interval)) * 1000 for k in measured if sent[k]]
        fanout_ms: list[float] = []  # frames of the updates planned inside the window
        frames_in_window = 0
        received = 0
        unmatched = 0
        for w in self.watchers:
            mine = by_seq[w.session.index]
            seen: set[int] = set()
            for seq, t in zip(w.seqs, w.times, strict=True):
                if t_m0 <= t < t_m1:
                    frames_in_window += 1
                k_or_none = mine.get(seq)
                if k_or_none is None:
                    unmatched += 1  # an update whose response never came, or a stray seq
                    continue
                if seq in seen:
                    continue
                seen.add(seq)
                received += 1
                if k_or_none in measured:
                    fanout_ms.append((t - (t0 + k_or_none * interval)) * 1000)
        window_s = cpu.seconds
        api_ms_per_update = _div(cpu.api_s * 1000, in_window)
        return {
            "config": {**asdict(cfg), "sockets": cfg.sockets},
            "window_s": round(window_s, 3),
            "offered_per_s": round(len(measured) / cfg.seconds, 1),
            "accepted_per_s": round(in_window / window_s, 1),
            "frames_per_s": round(frames_in_window / window_s, 1),
            "api_cpu_s": round(cpu.api_s, 3),
            "api_sys_cpu_s": round(cpu.api_sys_s, 3),
            "api_sys_cpu_pct": round(cpu.api_sys_s / window_s * 100, 1),
            "tree_cpu_s": round(cpu.tree_s, 3),
            "gen_cpu_s": round(cpu.gen_s, 3),
            "api_cpu_pct": round(cpu.api_s / window_s * 100, 1),
            "api_cpu_ms_per_update": _round(api_ms_per_update, 3),
            "api_cpu_us_per_frame": _round(_div(cpu.api_s * 1e6, frames_in_window), 1),
            "tree_cpu_pct": round(cpu.tree_s / window_s * 100, 1),
            "tree_cpu_ms_per_update": _round(_div(cpu.tree_s * 1000, in_window), 3),
            "tree_processes": cpu.tree_processes,
            "tree_changed": cpu.tree_changed,
            "gen_cpu_pct": round(cpu.gen_s / window_s * 100, 1),
            "machine_busy_pct": _round(cpu.machine_busy_pct, 1),
            "updates_planned_in_window": len(measured),
            "updates_accepted_in_window": in_window,
            "frames_received_in_window": frames_in_window,
            "measured_updates_accepted": sum(1 for k in measured if accepted[k]),
            # planned inside the window but never sent: the server was behind its schedule
            "measured_updates_unsent": sum(1 for k in measured if not sent[k]),
            # sent but not accepted (an error status, a timeout, a dropped connection)
            "updates_failed": sum(1 for k in range(n_total) if sent[k] and not accepted[k]),
            "updates_accepted": sum(accepted),  # the whole run, warm-up included
            "expected_frames": owed,  # owed for `updates_accepted`
            "received_frames": received,
            "loss": owed - received,
            "frames_unmatched": unmatched,
            "fanout_from_schedule_ms": summarize_ms(fanout_ms),
            "update_http_ms": summarize_ms(http_ms),
            "send_lag_ms": summarize_ms(send_lag_ms),
            "out_of_order": sum(w.out_of_order for w in self.watchers),
            "watchers_closed": sum(1 for w in self.watchers if w.closed.done()),
            "sessions": n_sessions,
            "watchers": len(self.watchers),
            "errors": dict(self.errors),
        }


async def run_config(target: Target, cfg: Config, limits: Limits) -> dict[str, Any]:
    run = Run(target, cfg, limits)
    await run.setup()
    try:
        idle = await run.idle_cpu_pct(limits.idle_s)
        result = await run.load()
    finally:
        await run.close()
    result["api_idle_cpu_pct"] = _round(idle, 1)
    accepted = result["updates_accepted_in_window"]
    net = None if idle is None else result["api_cpu_s"] - idle / 100 * result["window_s"]
    result["api_cpu_ms_per_update_above_idle"] = (
        None if net is None else _round(_div(net * 1000, accepted), 3))
    return result


def run_on_loop(target: Target, cfg: Config, limits: Limits, uvloop_ok: bool) -> dict[str, Any]:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if uvloop_ok:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(run_config(target, cfg, limits))
        result["event_loop"] = "uvloop" if factory is not None else "asyncio"
        return result


# ------------------------------------------------------------------------------ the command
def parse_counts(text: str) -> list[int]:
    counts = [int(x) for x in text.split(",") if x.strip()]
    if not counts or any(c <= 0 for c in counts):
        raise ValueError(f"{text!r}: positive counts, comma separated")
    return counts


def configs_from(args: argparse.Namespace) -> list[Config]:
    out = []
    for wps in parse_counts(args.watchers_per_session):
        sessions = args.sessions or args.sockets // wps
        if sessions <= 0:
            raise ValueError(f"--sockets {args.sockets} is fewer than {wps} watchers per session")
        out.append(Config(sessions=sessions, watchers_per_session=wps, rate=args.rate,
                          seconds=args.seconds, warmup=args.warmup, http_conns=args.http_conns))
    return out


def checkout_of(cwd: str | None, pid: int | None) -> dict[str, Any]:
    """The server's checkout: its commit, and whether its working tree differs from it."""
    root = cwd
    if root is None and pid is not None:
        with contextlib.suppress(OSError):
            root = os.readlink(f"/proc/{pid}/cwd")
    root = str(Path(root or REPO_ROOT).resolve())

    def git(*cmd: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", root, *cmd], capture_output=True, text=True,
                                  timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain")
    return {
        "dir": root,
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": None if status is None else bool(status),
        # tells two runs on different uncommitted trees of one commit apart
        "changes_sha1": _changes_digest(root, git) if status else None,
    }


def _changes_digest(root: str, git: Callable[..., str | None]) -> str:
    """A digest of what differs from HEAD: the diff of tracked files and the untracked files."""
    digest = hashlib.sha1((git("diff", "HEAD") or "").encode())
    for name in sorted((git("ls-files", "--others", "--exclude-standard") or "").splitlines()):
        digest.update(name.encode() + b"\0")
        with contextlib.suppress(OSError):
            path = Path(root, name)
            if path.stat().st_size <= 16 << 20:
                digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.api_cpu",
        description="API-process CPU per accepted update and per fanned-out WebSocket frame",
    )
    p.add_argument("--watchers-per-session", default="10,100",
                   help="one configuration per count, comma separated (default 10,100)")
    p.add_argument("--sockets", type=int, default=1000,
                   help="watchers per configuration: sessions = sockets / watchers per session")
    p.add_argument("--sessions", type=int, default=0,
                   help="a fixed session count for every configuration (overrides --sockets)")
    p.add_argument("--rate", type=float, default=500.0, help="offered updates/s (open loop)")
    p.add_argument("--seconds", type=float, default=20.0, help="measured window, s")
    p.add_argument("--warmup", type=float, default=3.0, help="load before the window, s")
    p.add_argument("--http-conns", type=int, default=16, help="keep-alive connections")
    p.add_argument("--timeout", type=float, default=10.0, help="per request / connect, s")
    p.add_argument("--setup-timeout", type=float, default=180.0,
                   help="starting the sessions and connecting the watchers, s")
    p.add_argument("--drain", type=float, default=5.0,
                   help="after the last response, wait at most this for owed frames, s")
    p.add_argument("--connect-concurrency", type=int, default=64)
    p.add_argument("--idle", type=float, default=2.0,
                   help="before the load, measure the API process idle this long, s (0: skip)")
    p.add_argument("--python", default=sys.executable,
                   help="the server's interpreter (another checkout's venv)")
    p.add_argument("--cwd", default=None, help="the server's checkout (its working directory)")
    p.add_argument("--startup-timeout", type=float, default=120.0)
    p.add_argument("--url", default="", help="measure this running server (loopback only)")
    p.add_argument("--secret", default="", help="with --url: its TRACKING_JWT_SECRET")
    p.add_argument("--pid", type=int, default=0, help="with --url: its `tracking serve` pid")
    p.add_argument("--no-uvloop", action="store_true")
    p.add_argument("--out", default="", help="JSON report (default out/api-cpu-<time>.json)")
    args = p.parse_args(argv)
    if args.url and not (args.secret and args.pid):
        p.error("--url needs --secret and --pid")
    if not args.url and (args.secret or args.pid):
        p.error("--secret and --pid go with --url")
    if args.rate <= 0 or args.seconds <= 0 or args.warmup < 0 or args.http_conns <= 0:
        p.error("--rate, --seconds and --http-conns must be positive, --warmup not negative")
    if args.url:
        try:
            check_loopback(args.url)
        except ValueError as e:
            p.error(str(e))
    try:
        configs_from(args)
    except ValueError as e:
        p.error(str(e))
    return args


def measure(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    """One configuration: on a server of its own (fresh, stopped after) or on --url's."""
    limits = Limits(request_timeout_s=args.timeout, setup_timeout_s=args.setup_timeout,
                    drain_s=args.drain, connect_concurrency=args.connect_concurrency,
                    idle_s=args.idle)
    load_before = os.getloadavg()
    if args.url:
        _, port = check_loopback(args.url)
        result = run_on_loop(Target(port, args.secret, args.pid), cfg, limits, not args.no_uvloop)
        result["server"] = {"pid": args.pid, "url": args.url, **checkout_of(args.cwd, args.pid)}
    else:
        srv = ServerProcess(host=LOOPBACK, workers=1, python=args.python, cwd=args.cwd,
                            startup_timeout_s=args.startup_timeout)
        with srv:
            assert srv.proc is not None
            target = Target(srv.port, srv.secret, srv.proc.pid)
            result = run_on_loop(target, cfg, limits, not args.no_uvloop)
            result["server"] = {"pid": srv.proc.pid, "python": args.python,
                                **checkout_of(args.cwd, None)}
    result["loadavg_before"] = [round(x, 2) for x in load_before]
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


COLUMNS: list[tuple[str, Callable[[dict[str, Any]], object]]] = [
    ("sessions x watchers", lambda r: f"{r['sessions']} x {r['config']['watchers_per_session']}"),
    ("offered/s", lambda r: r["offered_per_s"]),
    ("accepted/s", lambda r: r["accepted_per_s"]),
    ("frames/s", lambda r: r["frames_per_s"]),
    ("API ms/upd", lambda r: r["api_cpu_ms_per_update"]),
    ("API us/frame", lambda r: r["api_cpu_us_per_frame"]),
    ("API CPU% (sys)", lambda r: f"{r['api_cpu_pct']} ({r['api_sys_cpu_pct']})"),
    ("API idle%", lambda r: r["api_idle_cpu_pct"]),
    ("tree ms/upd", lambda r: r["tree_cpu_ms_per_update"]),
    ("tree CPU%", lambda r: r["tree_cpu_pct"]),
    ("gen CPU%", lambda r: r["gen_cpu_pct"]),
    ("unsent", lambda r: r["measured_updates_unsent"]),
    ("loss", lambda r: f"{r['loss']}/{r['expected_frames']}"),
    ("fan-out p50 ms", lambda r: r["fanout_from_schedule_ms"]["p50"]),
    ("p99 ms", lambda r: r["fanout_from_schedule_ms"]["p99"]),
    ("load 1m", lambda r: f"{r['loadavg_before'][0]}->{r['loadavg_after'][0]}"),
]


def render_table(results: Sequence[dict[str, Any]]) -> str:
    rows = [[name for name, _ in COLUMNS]]
    rows += [["-" if (v := get(r)) is None else str(v) for _, get in COLUMNS] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [" | ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True))
             for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw_argv)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    command = (sys.orig_argv if argv is None
               else [sys.executable, "-m", "loadtests.api_cpu", *raw_argv])
    out = Path(args.out or f"out/api-cpu-{time.strftime('%Y%m%d-%H%M%S')}.json")
    results: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    for cfg in configs_from(args):
        print(f"api_cpu: {cfg.label} at {cfg.rate:g} updates/s, {cfg.warmup:g} s warm-up + "
              f"{cfg.seconds:g} s measured ...", file=sys.stderr, flush=True)
        try:
            result = measure(args, cfg)
        except (RuntimeError, OSError, TimeoutError) as e:
            print(f"api_cpu: {cfg.label} failed: {e}", file=sys.stderr, flush=True)
            failures.append({"config": cfg.label, "error": str(e)[:2000]})
            continue
        results.append(result)
        if result["errors"]:
            print(f"api_cpu: {cfg.label} errors: {result['errors']}", file=sys.stderr, flush=True)
    report = {
        "command": shlex.join(command),
        "cwd": os.getcwd(),
        "argv": raw_argv,
        "started": started,
        "host": {"cpus": os.cpu_count(), "clock_ticks_per_s": os.sysconf("SC_CLK_TCK")},
        "results": results,
        "failures": failures,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if results:
        print(render_table(results))
    print(f"report: {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
