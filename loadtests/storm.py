"""A connection storm on one API process, with live updates on (issue 12, point 4: 10,000
watchers connect at >= 1,000 per second, no handshake dropped, fan-out p99 < 100 ms).

    python -m loadtests.storm                           # 10,000 watchers at 1,000/s, 100 sessions
    python -m loadtests.storm --connect-rate 400        # the same storm, slower
    python -m loadtests.storm --url http://127.0.0.1:8500 --secret S --pid PID   # a running one

On a `tracking serve` of its own (one API process) unless --url:
1. set-up: --sessions sessions started over HTTP by their riders;
2. updates: location updates at --update-rate/s on an open-loop schedule (update k planned at
   t0 + k/rate for session k mod sessions, with its rider's token), from --lead s before the
   storm to the end of the hold; one late update shows as latency, not as a lower rate;
3. the storm: connection k (to session k mod sessions) planned at ts + k/--connect-rate and
   started then, whatever the earlier ones are doing, at most --max-in-flight at once (one
   that finds the bound full waits, and is counted). It is made when its initial_state
   arrives; else failed by kind: refused, reset, timeout, bad_handshake (no 101),
   closed_early (closed before initial_state), protocol, or the generator's own limits;
4. the hold: every socket open for --hold s after the last connection settled, updates on;
5. the end: updates stop, owed frames are drained (bounded), every socket closes cleanly.

Fan-out latency runs from an update's planned send time to a watcher's receipt of its
location_update, matched by (tracking_id, seq). A watcher owes the frame of every accepted
update of its session newer than the seq its initial_state showed: loss = owed - received.
Latency is reported per --window s (by planned time) and for the storm and the hold. CPU:
the API process per phase and per connection made; the generator's own (above ~85 % of a
core the generator set the pace, and the result says so).

The exit status is 1 when a connection was not made, a frame was lost or a socket dropped
(what the issue asks never to happen); speed is reported, and judged only in the report's
target line. The clients are loadtests/api_cpu.py's (raw keep-alive HTTP, receive-only
WebSocket, uvloop, no cyclic GC during the run). Traffic goes to 127.0.0.1 only; every wait
is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import contextlib
import errno
import gc
import itertools
import json
import math
import os
import resource
import shlex
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from harness import ServerProcess
from loadtests.api_cpu import (
    LOOPBACK,
    Config,
    CpuProbe,
    CpuSample,
    CpuWindow,
    HttpClient,
    Limits,
    ProtocolError,
    Run,
    Session,
    Target,
    Watcher,
    _div,
    _round,
    check_loopback,
    checkout_of,
    post_request,
    summarize_ms,
    view_seq,
)

FD_SLACK = 64  # the generator's other descriptors: HTTP connections, the loop, stdio
SETTLE_SLACK_S = 5.0  # after the last connection's own timeout, before it is cancelled
GENERATOR_BOUND_PCT = 85.0
TARGET_RATE, TARGET_P99_MS = 1000.0, 100.0
_RESET_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED}


# ------------------------------------------------------------------------------ pure parts
def planned_at(t0: float, k: int, rate: float) -> float:
    """When item k of an open-loop schedule of `rate` per second from t0 is due."""
    return t0 + k / rate


def due_count(t0: float, rate: float, now: float, n: int) -> int:
    """How many of the schedule's n items are due at `now` (planned at or before it)."""
    if now < t0:
        return 0
    k = min(n, math.floor((now - t0) * rate) + 1)
    while k > 0 and planned_at(t0, k - 1, rate) > now:  # float edges: a step at most
        k -= 1
    while k < n and planned_at(t0, k, rate) <= now:
        k += 1
    return k


def classify(exc: BaseException, lost: BaseException | None = None) -> str:
    """The kind of a failed connection: `exc` is what the attempt raised, `lost` what its
    socket's connection_lost was given (None: an orderly close; an OSError: a reset)."""
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ProtocolError):
        return "bad_handshake" if str(exc).startswith("handshake") else "protocol"
    if not isinstance(exc, OSError):
        return "other_" + type(exc).__name__
    code = exc.errno
    if code is None:  # the watcher's own: its socket ended before initial_state
        return "reset" if isinstance(lost, OSError) else "closed_early"
    if code == errno.ECONNREFUSED:
        return "refused"
    if code in _RESET_ERRNOS:
        return "reset"
    if code == errno.ETIMEDOUT:
        return "timeout"
    if code in (errno.EMFILE, errno.ENFILE):
        return "generator_fd_limit"
    if code == errno.EADDRNOTAVAIL:
        return "generator_no_ports"
    return "os_" + errno.errorcode.get(code, str(code))


def nofile_plan(soft: int, hard: int, need: int) -> tuple[int, str | None]:
    """The soft RLIMIT_NOFILE to set (the hard limit, or `need` when that is unlimited) and,
    when even that is below `need`, what to tell the user."""
    target = max(soft, need) if hard == resource.RLIM_INFINITY else hard
    if target >= need:
        return target, None
    return target, (f"this generator needs about {need} file descriptors (one per watcher, "
                    f"its HTTP connections and {FD_SLACK} spare) but its hard limit is {hard}: "
                    f"raise it (`ulimit -Hn {need}` as root, or LimitNOFILE in a unit) "
                    "or ask for fewer --watchers")


@dataclass(frozen=True)
class Tally:
    owed: int
    received: int  # distinct owed frames that arrived
    duplicates: int
    unmatched: int  # a seq no accepted update had (its response never came back)
    stale: int  # a frame at or below the seq its initial_state already showed
    frames: list[tuple[int, float]]  # (update k, receipt time) of each frame received

    @property
    def lost(self) -> int:
        return self.owed - self.received


def tally(accepted: Sequence[dict[int, int]],
          watchers: Iterable[tuple[int, int, Sequence[int], Sequence[float]]]) -> Tally:
    """Match frames to updates. `accepted[s]` maps seq -> update k for the accepted updates of
    session s; each watcher is (session, initial seq, seqs received, receipt times) and owes
    a frame for each accepted update of its session newer than its initial seq."""
    ordered = [sorted(a) for a in accepted]
    owed = received = duplicates = unmatched = stale = 0
    frames: list[tuple[int, float]] = []
    for s, initial, seqs, times in watchers:
        mine = accepted[s]
        owed += len(ordered[s]) - bisect.bisect_right(ordered[s], initial)
        seen: set[int] = set()
        for seq, t in zip(seqs, times, strict=True):
            k = mine.get(seq)
            if k is None:
                unmatched += 1
            elif seq <= initial:
                stale += 1
            elif seq in seen:
                duplicates += 1
            else:
                seen.add(seq)
                frames.append((k, t))
        received += len(seen)
    return Tally(owed, received, duplicates, unmatched, stale, frames)


def windows(width: float, end: float, phases: Sequence[tuple[str, float, float]],
            latencies: Iterable[tuple[float, float]],
            counts: dict[str, Iterable[float]]) -> list[dict[str, Any]]:
    """Rows of `width` s from 0 to `end`: the phases each overlaps, how many of each kind of
    event (offsets in `counts`) fell in it, and the latencies ((offset, ms)) summarized. An
    offset outside [0, end) counts in the first or last row."""
    n = max(1, math.ceil(end / width))

    def row(t: float) -> int:
        return min(max(int(t // width), 0), n - 1)

    lat: list[list[float]] = [[] for _ in range(n)]
    for t, ms in latencies:
        lat[row(t)].append(ms)
    tallies = {name: [0] * n for name in counts}
    for name, offsets in counts.items():
        for t in offsets:
            tallies[name][row(t)] += 1
    rows = []
    for i in range(n):
        a, b = i * width, min((i + 1) * width, end)
        names = [p for p, p0, p1 in phases if p0 < b and p1 > a]
        rows.append({"start_s": round(a, 3), "end_s": round(b, 3), "phase": "+".join(names),
                     **{name: c[i] for name, c in tallies.items()},
                     "fanout_ms": summarize_ms(lat[i])})
    return rows


def target_unmet(r: dict[str, Any]) -> list[str]:
    """What keeps a result from issue 12.4's target (an empty list: met)."""
    s, f = r["storm"], r["fanout"]
    out = []
    if s["planned"] < 10_000:
        out.append(f"{s['planned']} watchers planned, not 10,000")
    if s["made"] < s["planned"]:
        out.append(f"{s['planned'] - s['made']} connections not made")
    if (s["achieved_per_s"] or 0) < TARGET_RATE:
        out.append(f"connect rate {s['achieved_per_s']}/s < {TARGET_RATE:g}/s")
    for name in ("storm", "steady"):
        p99 = f[name]["p99"]
        if p99 is None or p99 >= TARGET_P99_MS:
            out.append(f"fan-out p99 {name} {p99} ms")
    if r["loss"]["lost"] or r["dropped"]["count"]:
        out.append(f"{r['loss']['lost']} frames lost, {r['dropped']['count']} sockets dropped")
    return out


def update_body(k: int, s: Session, n_sessions: int) -> bytes:
    """A location ~300 m from the drop-off that moves a little every round of the sessions."""
    step = (k // n_sessions) % 1000
    return b'{"lat":%.6f,"lng":%.6f}' % (s.drop_lat + 0.003 - step * 1e-6, s.drop_lng + 0.001)


def upgrade_request(tid: bytes, port: int, key: bytes) -> bytes:
    return (b"GET /ws/tracking/%b HTTP/1.1\r\nHost: %b:%d\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %b\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (tid, LOOPBACK.encode(), port, key))


# ------------------------------------------------------------------------------ one connection
class StormWatcher(Watcher):
    """api_cpu's watcher, plus when its initial_state arrived and the seq that showed (frames
    read in the same chunk follow at once, so `last_seq` alone is not enough), and what its
    socket's end was given. api_cpu.open_watcher hides its watcher until initial_state; the
    storm needs it to tell a reset from a close, hence `connect_watcher` below."""

    def __init__(self, session: Session, key: bytes, errors: Counter[str]) -> None:
        super().__init__(session, key, errors)
        self.initial_seq = -1
        self.made_at = 0.0
        self.lost: BaseException | None = None
        self.lost_at = 0.0

    def _other(self, payload: bytes) -> None:
        was_ready = self.ready.done()
        super()._other(payload)
        if not was_ready and self.ready.done():
            self.made_at = time.monotonic()
            self.initial_seq = self.last_seq

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost, self.lost_at = exc, time.monotonic()
        super().connection_lost(exc)


@dataclass(frozen=True)
class Outcome:
    watcher: StormWatcher | None
    failure: str | None  # its kind; None: made
    stage: str  # made, or where it failed: connect, handshake, initial_state
    at: float  # when it was made or failed


async def connect_watcher(session: Session, port: int, timeout_s: float,
                          errors: Counter[str]) -> Outcome:
    """Connect, upgrade, wait for initial_state, all within `timeout_s`; never raises but
    for cancellation (the socket is aborted then)."""
    loop = asyncio.get_running_loop()
    key = base64.b64encode(os.urandom(16))
    w: StormWatcher | None = None
    try:
        async with asyncio.timeout(timeout_s):
            _, w = await loop.create_connection(
                lambda: StormWatcher(session, key, errors), LOOPBACK, port)
            assert w.transport is not None
            w.transport.write(upgrade_request(w.tid, port, key))
            await asyncio.shield(w.ready)
    except BaseException as e:
        stage = "connect" if w is None else "initial_state" if w.upgraded else "handshake"
        if w is not None and w.transport is not None:
            w.transport.abort()
        if not isinstance(e, Exception):
            raise
        return Outcome(w, classify(e, None if w is None else w.lost), stage, time.monotonic())
    return Outcome(w, None, "made", w.made_at)


# ------------------------------------------------------------------------------ the run
@dataclass(frozen=True)
class Plan:
    sessions: int = 100
    watchers: int = 10_000
    connect_rate: float = 1000.0
    update_rate: float = 100.0
    lead_s: float = 5.0
    hold_s: float = 20.0
    window_s: float = 5.0
    max_in_flight: int = 4096
    http_conns: int = 32  # enough that an update rarely waits for a free connection


@dataclass(frozen=True)
class Bounds:
    connect_timeout_s: float = 10.0
    request_timeout_s: float = 10.0
    setup_timeout_s: float = 180.0
    drain_s: float = 5.0
    close_timeout_s: float = 10.0


async def _sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.monotonic()))


class Storm:
    """The update stream, the storm, the hold, the close, and what they measured."""

    def __init__(self, target: Target, plan: Plan, bounds: Bounds, log: TextIO) -> None:
        self.target, self.plan, self.bounds, self.log = target, plan, bounds, log
        self.errors: Counter[str] = Counter()
        n = plan.watchers
        self.started = array("d", bytes(8 * n))
        self.settled = array("d", bytes(8 * n))
        self.watchers: list[StormWatcher | None] = [None] * n
        self.failures: dict[int, tuple[str, str]] = {}
        self.in_flight = self.peak_in_flight = self.bound_waits = self.not_started = 0
        self.slot = asyncio.Event()
        longest = (plan.lead_s + n / plan.connect_rate + 2 * bounds.connect_timeout_s
                   + SETTLE_SLACK_S + 1 + plan.hold_s)
        self.n_updates = math.ceil(longest * plan.update_rate) + 1
        self.sent = array("d", bytes(8 * self.n_updates))
        self.answered = array("d", bytes(8 * self.n_updates))
        self.seqs = array("q", [-1]) * self.n_updates
        self.accepted = bytearray(self.n_updates)
        self.next_update = 0
        self.t0 = self.ts = self.te = 0.0
        self.t_stop = math.inf

    # -- the update stream -------------------------------------------------------------------
    async def _sender(self, client: HttpClient, sessions: Sequence[Session]) -> None:
        rate, n_s = self.plan.update_rate, len(sessions)
        while self.next_update < self.n_updates:
            k = self.next_update
            planned = planned_at(self.t0, k, rate)
            if planned >= self.t_stop:
                return
            self.next_update = k + 1
            await _sleep_until(planned)
            if planned >= self.t_stop:
                return
            s = sessions[k % n_s]
            self.sent[k] = time.monotonic()
            try:
                status, reply = await client.request(
                    post_request(s.update_head, update_body(k, s, n_s)))
            except (OSError, TimeoutError) as e:
                self.errors[f"update:{type(e).__name__}"] += 1
                continue
            self.answered[k] = time.monotonic()
            seq = view_seq(reply) if status == 200 else None
            if seq is None:
                self.errors[f"update:http_{status}" if status != 200 else "update:no_seq"] += 1
                continue
            self.accepted[k], self.seqs[k] = 1, seq
        self.errors["update:schedule_exhausted"] += 1

    # -- the storm ---------------------------------------------------------------------------
    async def _connect(self, k: int, session: Session) -> None:
        self.started[k] = time.monotonic()
        try:
            out = await connect_watcher(session, self.target.port,
                                        self.bounds.connect_timeout_s, self.errors)
        except asyncio.CancelledError:
            self.failures[k], self.settled[k] = ("cancelled", "unknown"), time.monotonic()
            raise
        finally:
            self.in_flight -= 1
            self.slot.set()
        self.settled[k] = out.at
        if out.failure is None:
            self.watchers[k] = out.watcher
        else:
            self.failures[k] = (out.failure, out.stage)

    async def _storm(self, sessions: Sequence[Session]) -> None:
        n, rate, bound = self.plan.watchers, self.plan.connect_rate, self.plan.max_in_flight
        last_start = self.ts + n / rate + self.bounds.connect_timeout_s
        tasks: set[asyncio.Task[None]] = set()
        k, waited = 0, -1
        while k < n:
            now = time.monotonic()
            if now > last_start:
                break
            if k >= due_count(self.ts, rate, now, n):
                await asyncio.sleep(planned_at(self.ts, k, rate) - now)
                continue
            if self.in_flight >= bound:
                if waited != k:
                    self.bound_waits, waited = self.bound_waits + 1, k
                self.slot.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.slot.wait(), 0.5)
                continue
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            task = asyncio.create_task(self._connect(k, sessions[k % len(sessions)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
        self.not_started = n - k
        if tasks:
            _, late = await asyncio.wait(list(tasks),
                                         timeout=self.bounds.connect_timeout_s + SETTLE_SLACK_S)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=SETTLE_SLACK_S)

    def made(self) -> list[StormWatcher]:
        return [w for w in self.watchers if w is not None]

    async def _progress(self, deadline: float) -> None:
        n = self.plan.watchers
        while time.monotonic() < deadline:
            await asyncio.sleep(self.plan.window_s)
            made = self.made()
            print(f"storm: t={time.monotonic() - self.t0:5.0f}s connects "
                  f"{sum(1 for t in self.started if t)}/{n} made {len(made)} failed "
                  f"{len(self.failures)} in flight {self.in_flight} | updates {self.next_update} "
                  f"accepted {sum(self.accepted)} | frames {sum(len(w.seqs) for w in made)}",
                  file=self.log, flush=True)

    # -- the whole run -----------------------------------------------------------------------
    async def execute(self) -> dict[str, Any]:
        plan, bounds = self.plan, self.bounds
        run = Run(self.target, Config(sessions=plan.sessions, watchers_per_session=0,
                                      rate=plan.update_rate, seconds=0.0, warmup=0.0,
                                      http_conns=plan.http_conns),
                  Limits(request_timeout_s=bounds.request_timeout_s,
                         setup_timeout_s=bounds.setup_timeout_s))
        await run.setup()  # the sessions, started by their riders; no watcher yet
        probe = CpuProbe(self.target.pid)
        tasks: list[asyncio.Task[None]] = []
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            self.t0 = time.monotonic() + 0.2
            self.ts = self.t0 + plan.lead_s
            senders = [asyncio.create_task(self._sender(c, run.sessions)) for c in run.clients]
            deadline = self.t0 + len(self.sent) / plan.update_rate + bounds.drain_s + 60
            tasks = [*senders, asyncio.create_task(self._progress(deadline))]
            await _sleep_until(self.t0)
            cpu = [probe.sample()]
            await _sleep_until(self.ts)
            cpu.append(probe.sample())
            await self._storm(run.sessions)
            cpu.append(probe.sample())
            self.te = cpu[-1].at
            self.t_stop = self.te + plan.hold_s
            await _sleep_until(self.t_stop)
            cpu.append(probe.sample())
            _, late = await asyncio.wait(senders, timeout=bounds.request_timeout_s + 2)
            self.errors["update:sender_over_budget"] += len(late)
            joined = probe.joined()
            dropped = [w for w in self.made() if w.closed.done()]
            drained = await self._drain()
            closed = await self._close()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._close()
            await run.close()
            gc.enable()
            gc.unfreeze()
        if not self.errors["update:sender_over_budget"]:
            del self.errors["update:sender_over_budget"]
        return self.figures(run.sessions, cpu, joined, dropped, drained, closed)

    def _accepted_by_session(self, n_sessions: int) -> list[dict[int, int]]:
        by_seq: list[dict[int, int]] = [{} for _ in range(n_sessions)]
        for k in range(self.next_update):
            if self.accepted[k]:
                by_seq[k % n_sessions][self.seqs[k]] = k
        return by_seq

    async def _drain(self) -> float:
        """Wait (bounded) until the open watchers hold as many frames as they are owed."""
        live = [w for w in self.made() if not w.closed.done()]
        by_seq = self._accepted_by_session(self.plan.sessions)
        owed = tally(by_seq, ((w.session.index, w.initial_seq, [], []) for w in live)).owed
        t = time.monotonic()
        end = t + self.bounds.drain_s
        while sum(len(w.seqs) for w in live) < owed and time.monotonic() < end:  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # a poll: cheaper than an event per frame
        return time.monotonic() - t

    async def _close(self) -> dict[str, int]:
        live = [w for w in self.made() if not w.closed.done()]
        await asyncio.gather(*(w.close(self.bounds.close_timeout_s) for w in live))
        return {"closed": len(live), "cleanly": sum(1 for w in live if w.close_code == 1000)}

    # -- the figures -------------------------------------------------------------------------
    def figures(self, sessions: Sequence[Session], cpu: Sequence[CpuSample],
                joined: dict[int, float], dropped: list[StormWatcher], drained_s: float,
                closed: dict[str, int]) -> dict[str, Any]:
        plan, t0, ts, te, t_stop = self.plan, self.t0, self.ts, self.te, self.t_stop
        n, rate, urate = plan.watchers, plan.connect_rate, plan.update_rate
        made = self.made()
        made_k = [k for k, w in enumerate(self.watchers) if w is not None]
        by_seq = self._accepted_by_session(len(sessions))
        gone = set(map(id, dropped))
        counted = tally(by_seq, ((w.session.index, w.initial_seq, w.seqs, w.times)
                                 for w in made if id(w) not in gone))
        lat = [(planned_at(0.0, k, urate), (t - planned_at(t0, k, urate)) * 1000)
               for k, t in counted.frames]
        # from the actual send: without the wait for a free HTTP connection in this generator
        from_send = [(planned_at(0.0, k, urate), (t - self.sent[k]) * 1000)
                     for k, t in counted.frames]
        phases = [("lead", 0.0, ts - t0), ("storm", ts - t0, te - t0),
                  ("hold", te - t0, t_stop - t0)]

        def phase_ms(a: float, b: float,
                     of: list[tuple[float, float]] = lat) -> dict[str, float | None]:
            return summarize_ms(ms for t, ms in of if a <= t < b)

        def http_ms(a: float, b: float) -> dict[str, float | None]:
            ks = range(math.ceil(a * urate), min(self.next_update, math.ceil(b * urate)))
            return summarize_ms((self.answered[k] - self.sent[k]) * 1000 for k in ks
                                if self.accepted[k])

        rows = windows(plan.window_s, t_stop - t0, phases, lat, {
            "updates": (planned_at(0.0, k, urate) for k in range(self.next_update)
                        if self.accepted[k]),
            "made": (self.settled[k] - t0 for k in made_k),
            "failed": (self.settled[k] - t0 for k in self.failures),
            "dropped": (w.lost_at - t0 for w in dropped),
        })
        sockets = 0
        for r in rows:
            sockets += r["made"] - r["dropped"]
            r["sockets"] = sockets
        worst = max((r for r in rows if r["fanout_ms"]["n"]),
                    key=lambda r: r["fanout_ms"]["p99"], default=None)
        last_made = max((self.settled[k] for k in made_k), default=ts)
        starts = [self.started[k] for k in range(n) if self.started[k]]
        lead_w, storm_w, hold_w = (CpuWindow.between(a, b, {}) for a, b in itertools.pairwise(cpu))
        whole = CpuWindow.between(cpu[0], cpu[-1], joined)
        lead_rate = _div(lead_w.api_s, lead_w.seconds) or 0.0
        sent = sum(1 for k in range(self.next_update) if self.sent[k])
        result = {
            "storm": {
                "planned": n, "made": len(made), "failed": len(self.failures),
                "not_started": self.not_started,
                "failures": dict(Counter(kind for kind, _ in self.failures.values())),
                "failures_by_stage": dict(Counter(f"{k}@{s}" for k, s in self.failures.values())),
                "planned_per_s": rate,
                "achieved_per_s": _round(_div(len(made), last_made - ts), 1),
                "started_per_s": _round(_div(len(starts), max(starts, default=ts) - ts), 1),
                "seconds": round(te - ts, 3),
                "connect_ms": summarize_ms((self.settled[k] - planned_at(ts, k, rate)) * 1000
                                           for k in made_k),
                "start_lag_ms": summarize_ms((self.started[k] - planned_at(ts, k, rate)) * 1000
                                             for k in range(n) if self.started[k]),
                "bound": plan.max_in_flight, "bound_waits": self.bound_waits,
                "peak_in_flight": self.peak_in_flight,
            },
            "updates": {
                "planned": min(self.next_update, math.ceil((t_stop - t0) * urate)),
                "sent": sent, "accepted": sum(self.accepted),
                "failed": sent - sum(self.accepted),
                "http_ms": {name: http_ms(a, b) for name, a, b in phases},
                "send_lag_ms": summarize_ms((self.sent[k] - planned_at(t0, k, urate)) * 1000
                                            for k in range(self.next_update) if self.sent[k]),
            },
            "fanout": {"overall": summarize_ms(ms for _, ms in lat),
                       "storm": phase_ms(ts - t0, te - t0),
                       "steady": phase_ms(te - t0, t_stop - t0),
                       "worst_window": None if worst is None else {
                           "start_s": worst["start_s"], "phase": worst["phase"],
                           **worst["fanout_ms"]},
                       "from_send": {"storm": phase_ms(ts - t0, te - t0, from_send),
                                     "steady": phase_ms(te - t0, t_stop - t0, from_send)}},
            "windows": rows,
            "loss": {"owed": counted.owed, "received": counted.received, "lost": counted.lost,
                     "duplicates": counted.duplicates, "unmatched": counted.unmatched,
                     "stale": counted.stale, "drain_s": round(drained_s, 3),
                     "out_of_order": sum(w.out_of_order for w in made)},
            "dropped": {"count": len(dropped),
                        "close_codes": dict(Counter(str(w.close_code) for w in dropped))},
            "close": closed,
            "cpu": {
                "lead": _cpu(lead_w), "storm": _cpu(storm_w), "hold": _cpu(hold_w),
                "whole": {**_cpu(whole), "tree_cpu_pct": round(whole.tree_s / whole.seconds * 100,
                                                               1)},
                "api_ms_per_connection_storm": _round(_div(storm_w.api_s * 1000, len(made)), 3),
                "api_ms_per_connection_storm_above_lead": _round(_div(
                    (storm_w.api_s - lead_rate * storm_w.seconds) * 1000, len(made)), 3),
                "api_ms_per_connection_whole": _round(_div(whole.api_s * 1000, len(made)), 3),
            },
            "generator_bound": storm_w.gen_s / storm_w.seconds * 100 > GENERATOR_BOUND_PCT,
            "errors": dict(self.errors),
        }
        return result


def _cpu(w: CpuWindow) -> dict[str, float | None]:
    return {"seconds": round(w.seconds, 3), "api_cpu_s": round(w.api_s, 3),
            "api_cpu_pct": round(w.api_s / w.seconds * 100, 1),
            "api_sys_cpu_pct": round(w.api_sys_s / w.seconds * 100, 1),
            "gen_cpu_pct": round(w.gen_s / w.seconds * 100, 1),
            "machine_busy_pct": _round(w.machine_busy_pct, 1)}


# ------------------------------------------------------------------------------ the command
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    d, b = Plan(), Bounds()
    p = argparse.ArgumentParser(
        prog="python -m loadtests.storm",
        description="A connection storm on one API process, with live updates on")
    p.add_argument("--sessions", type=int, default=d.sessions, help="sessions the watchers share")
    p.add_argument("--watchers", type=int, default=d.watchers, help="connections in the storm")
    p.add_argument("--connect-rate", type=float, default=d.connect_rate,
                   help="planned connections/s (open loop)")
    p.add_argument("--update-rate", type=float, default=d.update_rate,
                   help="location updates/s, round-robin over the sessions (open loop)")
    p.add_argument("--lead", type=float, default=d.lead_s, help="updates before the storm, s")
    p.add_argument("--hold", type=float, default=d.hold_s,
                   help="every socket open, updates on, after the storm, s")
    p.add_argument("--window", type=float, default=d.window_s, help="rows of the table, s")
    p.add_argument("--max-in-flight", type=int, default=d.max_in_flight,
                   help="connections under way at once (a connection due beyond it waits)")
    p.add_argument("--http-conns", type=int, default=d.http_conns, help="update connections")
    p.add_argument("--connect-timeout", type=float, default=b.connect_timeout_s,
                   help="connect + upgrade + initial_state, s")
    p.add_argument("--timeout", type=float, default=b.request_timeout_s, help="per request, s")
    p.add_argument("--setup-timeout", type=float, default=b.setup_timeout_s)
    p.add_argument("--drain", type=float, default=b.drain_s,
                   help="after the last update, wait at most this for owed frames, s")
    p.add_argument("--close-timeout", type=float, default=b.close_timeout_s)
    p.add_argument("--python", default=sys.executable, help="the server's interpreter")
    p.add_argument("--cwd", default=None, help="the server's checkout (its working directory)")
    p.add_argument("--startup-timeout", type=float, default=120.0)
    p.add_argument("--url", default="", help="storm this running server (loopback only)")
    p.add_argument("--secret", default="", help="with --url: its TRACKING_JWT_SECRET")
    p.add_argument("--pid", type=int, default=0, help="with --url: its `tracking serve` pid")
    p.add_argument("--no-uvloop", action="store_true")
    p.add_argument("--out", default="", help="JSON report (default out/storm-<time>.json)")
    args = p.parse_args(argv)
    if args.url and not (args.secret and args.pid):
        p.error("--url needs --secret and --pid")
    if not args.url and (args.secret or args.pid):
        p.error("--secret and --pid go with --url")
    if min(args.sessions, args.watchers, args.max_in_flight, args.http_conns) <= 0:
        p.error("--sessions, --watchers, --max-in-flight and --http-conns must be positive")
    if min(args.connect_rate, args.update_rate, args.window, args.connect_timeout,
           args.timeout, args.close_timeout) <= 0 or min(args.lead, args.hold, args.drain) < 0:
        p.error("rates, --window and timeouts must be positive; --lead, --hold, --drain "
                "not negative")
    if args.url:
        try:
            check_loopback(args.url)
        except ValueError as e:
            p.error(str(e))
    return args


def plan_of(args: argparse.Namespace) -> tuple[Plan, Bounds]:
    return (Plan(sessions=args.sessions, watchers=args.watchers, connect_rate=args.connect_rate,
                 update_rate=args.update_rate, lead_s=args.lead, hold_s=args.hold,
                 window_s=args.window, max_in_flight=args.max_in_flight,
                 http_conns=args.http_conns),
            Bounds(connect_timeout_s=args.connect_timeout, request_timeout_s=args.timeout,
                   setup_timeout_s=args.setup_timeout, drain_s=args.drain,
                   close_timeout_s=args.close_timeout))


def raise_nofile(need: int) -> tuple[int, int, str | None]:
    """Raise this process's soft fd limit to its hard limit: (soft, hard, problem or None)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target, problem = nofile_plan(soft, hard, need)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target, hard, problem


def process_nofile(pid: int) -> int | None:
    """A process's soft limit of open files, from /proc/PID/limits."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                value = line.split()[3]
                return -1 if value == "unlimited" else int(value)
    return None


def _read(path: str) -> str | None:
    with contextlib.suppress(OSError):
        return Path(path).read_text().strip()
    return None


def host_facts(watchers: int) -> dict[str, Any]:
    lo_hi = (_read("/proc/sys/net/ipv4/ip_local_port_range") or "0 0").split()
    ports = int(lo_hi[-1]) - int(lo_hi[0]) + 1
    return {"cpus": os.cpu_count(), "somaxconn": _read("/proc/sys/net/core/somaxconn"),
            "tcp_max_syn_backlog": _read("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
            "ephemeral_ports": ports, "ephemeral_ports_short": ports < watchers + FD_SLACK}


def storm_on_loop(target: Target, plan: Plan, bounds: Bounds, uvloop_ok: bool,
                  log: TextIO) -> dict[str, Any]:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if uvloop_ok:
        with contextlib.suppress(ImportError):
            import uvloop

            factory = uvloop.new_event_loop

    async def go() -> dict[str, Any]:
        return await Storm(target, plan, bounds, log).execute()

    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(go())
    result["event_loop"] = "uvloop" if factory is not None else "asyncio"
    return result


def check_server_nofile(pid: int, need: int, log: TextIO) -> int | None:
    limit = process_nofile(pid)
    if limit is not None and 0 <= limit < need:
        print(f"storm: the server (pid {pid}) may open only {limit} files; {need} sockets will "
              "hit that limit: expect refused or reset connections", file=log, flush=True)
    return limit


def measure(args: argparse.Namespace, plan: Plan, bounds: Bounds,
            log: TextIO) -> dict[str, Any]:
    need = plan.watchers + FD_SLACK
    if args.url:
        _, port = check_loopback(args.url)
        limit = check_server_nofile(args.pid, need, log)
        result = storm_on_loop(Target(port, args.secret, args.pid), plan, bounds,
                               not args.no_uvloop, log)
        result["server"] = {"pid": args.pid, "url": args.url, "nofile": limit,
                            **checkout_of(args.cwd, args.pid)}
        return result
    # The server inherits this process's fd limit, raised already.
    srv = ServerProcess(host=LOOPBACK, workers=1, python=args.python, cwd=args.cwd,
                        startup_timeout_s=args.startup_timeout)
    with srv:
        assert srv.proc is not None
        limit = check_server_nofile(srv.proc.pid, need, log)
        result = storm_on_loop(Target(srv.port, srv.secret, srv.proc.pid), plan, bounds,
                               not args.no_uvloop, log)
        result["server"] = {"pid": srv.proc.pid, "python": args.python, "nofile": limit,
                            **checkout_of(args.cwd, None)}
    return result


def _ms(s: dict[str, Any] | None) -> str:
    if not s or not s.get("n"):
        return "-"
    return f"p50 {s['p50']}  p99 {s['p99']}  max {s['max']}  (n {s['n']})"


def render(report: dict[str, Any]) -> str:
    r, p = report["result"], report["plan"]
    s, f, c, loss = r["storm"], r["fanout"], r["cpu"], r["loss"]
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(s["failures"].items())) or "none"
    worst = f["worst_window"]
    worst_text = "-" if worst is None else (
        f"{worst['p99']} ms (t={worst['start_s']:g}s, {worst['phase']})")
    load = report["loadavg_before"][0], report["loadavg_after"][0]
    unmet = report["target_unmet"]
    lines = [
        f"storm: {p['watchers']} watchers over {p['sessions']} sessions planned at "
        f"{p['connect_rate']:g}/s; updates {p['update_rate']:g}/s from {p['lead_s']:g} s "
        f"before; hold {p['hold_s']:g} s; server {report['server'].get('commit')}",
        f"  connects planned/made/failed  {s['planned']} / {s['made']} / {s['failed']}  "
        f"(failures: {kinds}; not started {s['not_started']}; bound {s['bound']} waits "
        f"{s['bound_waits']}, peak in flight {s['peak_in_flight']})",
        f"  achieved connect rate         {s['achieved_per_s']}/s over {s['seconds']} s "
        f"(started {s['started_per_s']}/s)",
        f"  connect ms (planned->initial) {_ms(s['connect_ms'])}",
        f"  fan-out p99 ms                storm {f['storm']['p99']}  steady {f['steady']['p99']}"
        f"  worst {p['window_s']:g} s window {worst_text}",
        f"  fan-out overall ms            {_ms(f['overall'])}",
        f"  fan-out p99 ms from the send  storm {f['from_send']['storm']['p99']}  steady "
        f"{f['from_send']['steady']['p99']}  (updates sent late: send lag p99 "
        f"{r['updates']['send_lag_ms']['p99']} ms)",
        f"  update POST ms (storm)        {_ms(r['updates']['http_ms']['storm'])}",
        f"  loss                          {loss['lost']} of {loss['owed']} owed (dup "
        f"{loss['duplicates']}, unmatched {loss['unmatched']}, stale {loss['stale']}, out of "
        f"order {loss['out_of_order']}); updates accepted {r['updates']['accepted']}/"
        f"{r['updates']['planned']}",
        f"  sockets dropped / closed      {r['dropped']['count']} dropped; "
        f"{r['close']['cleanly']}/{r['close']['closed']} closed cleanly",
        f"  API CPU                       storm {c['storm']['api_cpu_pct']} % (sys "
        f"{c['storm']['api_sys_cpu_pct']} %) = {c['api_ms_per_connection_storm']} ms/connection "
        f"({c['api_ms_per_connection_storm_above_lead']} above the lead's rate); hold "
        f"{c['hold']['api_cpu_pct']} %; whole run {c['whole']['api_cpu_pct']} % = "
        f"{c['api_ms_per_connection_whole']} ms/connection",
        f"  generator CPU                 storm {c['storm']['gen_cpu_pct']} %, whole "
        f"{c['whole']['gen_cpu_pct']} %"
        + ("  ** generator-bound: the generator, not the server, set the pace **"
           if r["generator_bound"] else ""),
        f"  machine                       busy {c['storm']['machine_busy_pct']} % in the storm;"
        f" load 1m {load[0]} -> {load[1]} on {report['host']['cpus']} cores",
        "  issue 12.4 target             " + ("met" if not unmet else
                                             "not met: " + "; ".join(unmet)),
        "",
    ]
    head = ("t (s)", "phase", "made", "failed", "sockets", "updates", "frames", "p50 ms",
            "p99 ms", "max ms")
    rows = [head] + [(f"{w['start_s']:g}-{w['end_s']:g}", w["phase"], *(
        str(w[k]) for k in ("made", "failed", "sockets", "updates")), str(w["fanout_ms"]["n"]),
        *("-" if w["fanout_ms"][k] is None else str(w["fanout_ms"][k])
          for k in ("p50", "p99", "max"))) for w in r["windows"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines += ["  ".join(cell.rjust(wd) for cell, wd in zip(row, widths, strict=True))
              for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw_argv)
    plan, bounds = plan_of(args)
    log = sys.stderr
    soft, hard, problem = raise_nofile(plan.watchers + plan.http_conns + FD_SLACK)
    if problem:
        print(f"storm: {problem}", file=log)
        return 2
    command = (sys.orig_argv if argv is None
               else [sys.executable, "-m", "loadtests.storm", *raw_argv])
    out = Path(args.out or f"out/storm-{time.strftime('%Y%m%d-%H%M%S')}.json")
    report: dict[str, Any] = {
        "command": shlex.join(command), "cwd": os.getcwd(), "argv": raw_argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {**host_facts(plan.watchers), "nofile": [soft, hard]},
        "plan": asdict(plan), "bounds": asdict(bounds),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    if report["host"]["ephemeral_ports_short"]:
        print(f"storm: only {report['host']['ephemeral_ports']} ephemeral ports for "
              f"{plan.watchers} connections to one address", file=log)
    print(f"storm: {plan.watchers} watchers at {plan.connect_rate:g}/s over {plan.sessions} "
          f"sessions, updates {plan.update_rate:g}/s ...", file=log, flush=True)
    code = 0
    try:
        result = measure(args, plan, bounds, log)
    except (RuntimeError, OSError, TimeoutError) as e:
        print(f"storm: failed: {e}", file=log)
        report["failure"] = str(e)[:2000]
        code = 1
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    if not code:
        report["server"] = result.pop("server")
        report["result"] = result
        report["target_unmet"] = target_unmet(result)
        bad = (result["storm"]["made"] < plan.watchers or result["loss"]["lost"]
               or result["dropped"]["count"])
        code = 1 if bad else 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if "result" in report:
        print(render(report))
    print(f"report: {out}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
