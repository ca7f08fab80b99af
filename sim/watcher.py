"""A simulated watcher (customer, merchant or ops screen) on one session's WebSocket."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from sim.checks import StreamCheck, check_history
from sim.context import Ctx, SessionTrack

ROLE_CLAIMS = {"customer": "customer", "merchant": "merchant", "ops": "superadmin"}
_MAX_QUEUE = 64  # frames buffered per socket before TCP pushes back: bounds memory per watcher


async def _open(ctx: Ctx, url: str) -> ClientConnection:
    if ctx.limiter is not None:
        await ctx.limiter.acquire()
    ctx.connecting += 1
    try:
        return await connect(
            url,
            compression=None,  # permessage-deflate costs ~100 KB per socket on each side
            ping_interval=None,
            max_queue=_MAX_QUEUE,
            open_timeout=60,
            close_timeout=5,
        )
    finally:
        ctx.connecting -= 1


async def watch(ctx: Ctx, track: SessionTrack, role: str, number: int) -> None:
    """Watch until DELIVERED (or the run's deadline); fold what was seen into the metrics."""
    m, cfg = ctx.metrics, ctx.cfg
    claim = ROLE_CLAIMS.get(role)
    tok = ctx.token(claim, f"{role}-{track.index}-{number}") if claim else None
    # Milestone messages too (opt-in: API.md's clients see only the messages it lists).
    url = f"{cfg.ws_url}/ws/tracking/{track.tracking_id}?milestones=true" + (
        f"&token={tok}" if tok else ""
    )
    check = StreamCheck(track.tracking_id, cfg.eta_speed_kmh)
    drop_after = cfg.reconnect_after_messages if number == 0 and track.index in cfg.reconnect else 0
    ready_sent = False
    ws: ClientConnection | None = None
    try:
        m.counts["watchers_planned"] += 1
        try:
            ws = await _open(ctx, url)
        except (OSError, TimeoutError, WebSocketException) as e:
            m.error(f"connect_{type(e).__name__}", track.tracking_id)
            m.counts["connection_failures"] += 1
            return
        ctx.open_sockets += 1
        track.sockets.add(ws)
        m.counts["watchers_connected"] += 1
        remaining = cfg.t0_monotonic + cfg.deadline_s - time.monotonic()
        try:
            # One timeout around the loop: wait_for() per message would cost a task each.
            async with asyncio.timeout(max(0.0, remaining)):
                while not check.delivered:
                    try:
                        raw = await ws.recv()
                    except ConnectionClosed:
                        if not cfg.survive_outages or track.stopping:
                            raise
                        # The server went down under us: come back, catch up from history.
                        ws = await _come_back(ctx, ws, url, check, track)
                        if ws is None:
                            break
                        continue
                    got = time.monotonic()
                    msg: dict[str, Any] = orjson.loads(raw)
                    if cfg.survive_outages and await _bridged(ctx, track, check, msg):
                        continue
                    before = check.received
                    check.feed(msg)
                    if not ready_sent and msg.get("type") == "initial_state":
                        ready_sent = True
                        track.watcher_ready()
                    if msg.get("type") == "location_update" and check.received != before:
                        _count_message(ctx, track, msg, got)  # live, not replayed
                    if track.approach_seen is None and check.approach_status is not None:
                        track.approach_seen = check.approach_status
                    if drop_after and check.received == drop_after:
                        drop_after = 0
                        ws = await _reconnect(ctx, ws, url, check, track)
                        if ws is None:
                            break
        except TimeoutError:
            m.error("watcher_deadline", track.tracking_id)
        except ConnectionClosed as e:
            if track.stopping:
                m.error("watcher_stopped_waiting", f"{track.tracking_id} at seq {check.last_seq}")
            else:
                m.error(f"closed_{e.rcvd.code if e.rcvd else 'abnormal'}", track.tracking_id)
    finally:
        if ws is not None:
            ctx.open_sockets -= 1
            track.sockets.discard(ws)
            await ws.close()
        if not ready_sent:
            track.watcher_ready()
    await track.done.wait()
    _fold(ctx, track, check)


def _count_message(ctx: Ctx, track: SessionTrack, msg: dict[str, Any], got: float) -> None:
    m = ctx.metrics
    m.received_per_s[int(got - ctx.cfg.t0_monotonic)] += 1
    sent = track.sent_at.get(msg["data"]["seq"])
    if sent is None:
        m.counts["latency_unmatched"] += 1
    else:
        m.latency(got - ctx.cfg.t0_monotonic, got - sent)


async def _reconnect(
    ctx: Ctx, ws: ClientConnection, url: str, check: StreamCheck, track: SessionTrack
) -> ClientConnection | None:
    """Fault: drop the socket, stay away a while, come back with `since_seq` (the server
    replays what was missed), or catch up from the history when it cannot."""
    m = ctx.metrics
    track.sockets.discard(ws)
    await ws.close()
    ctx.open_sockets -= 1
    # Dropped right after a location_update: the rest of that change (status change,
    # milestones) may not have been read, so resume from the seq before it.
    since = check.rewind_last()
    await asyncio.sleep(ctx.cfg.reconnect_down_s)
    try:
        new = await _open(ctx, f"{url}&since_seq={since}")
    except (OSError, TimeoutError, WebSocketException) as e:
        m.error(f"reconnect_{type(e).__name__}", track.tracking_id)
        m.counts["connection_failures"] += 1
        return None
    ctx.open_sockets += 1
    track.sockets.add(new)
    m.counts["reconnects"] += 1
    check.reconnected(resume=True)
    first = orjson.loads(await new.recv())
    check.feed(first)
    if first.get("recovered") is True:
        return new  # the replay follows on this socket
    now_seq = (first.get("data") or {}).get("seq")
    if isinstance(now_seq, int) and now_seq > since:
        await _catch_up(ctx, track, since, now_seq)
    return new


async def _come_back(
    ctx: Ctx, ws: ClientConnection, url: str, check: StreamCheck, track: SessionTrack
) -> ClientConnection | None:
    """After the server dropped the socket (it was killed, or restarted): reconnect with
    backoff until it answers or the run's deadline, then catch up from the history."""
    m = ctx.metrics
    track.sockets.discard(ws)
    ctx.open_sockets -= 1
    m.counts["outage_disconnects"] += 1
    pause = 0.2
    while True:
        if ctx.now() > ctx.cfg.deadline_s or track.stopping:
            m.error("outage_no_reconnect", track.tracking_id)
            return None
        try:
            new = await _open(ctx, url)
            first = orjson.loads(await asyncio.wait_for(new.recv(), ctx.cfg.request_timeout_s))
        except (OSError, TimeoutError, WebSocketException):
            await asyncio.sleep(pause)
            pause = min(2.0, pause * 2)
            continue
        if first.get("type") != "initial_state":  # refused (e.g. 1013 while it restarts)
            await new.close()
            await asyncio.sleep(pause)
            pause = min(2.0, pause * 2)
            continue
        break
    ctx.open_sockets += 1
    track.sockets.add(new)
    m.counts["outage_reconnects"] += 1
    seen = check.last_seq or 0
    check.reconnected()
    check.feed(first)
    now_seq = (first.get("data") or {}).get("seq")
    if isinstance(now_seq, int) and now_seq > seen:
        await _catch_up(ctx, track, seen, now_seq)
    return new


async def _bridged(ctx: Ctx, track: SessionTrack, check: StreamCheck, msg: dict[str, Any]) -> bool:
    """Survive mode: a location_update past a seq gap (events lost with a restarted shard) is
    bridged from the history first; one repeating the seq just seen (the gateway re-sends the
    current state after a shard restart) is skipped. True when `msg` was consumed."""
    data = msg.get("data")
    if msg.get("type") != "location_update" or not isinstance(data, dict):
        return False
    seq, last = data.get("seq"), check.last_seq
    if not isinstance(seq, int) or last is None or not check.initial_seen:
        return False
    if seq == last and not check.awaiting_status_change:
        ctx.metrics.counts["resync_repeats"] += 1
        return True
    if seq > last + 1 and not msg.get("conflated"):
        items = await _history(ctx, track, last, seq - 1)
        if items is not None and not check_history(items, last, seq - 1):
            status = items[-1].get("status") if items else check.status
            ctx.metrics.counts["gaps_bridged"] += check.bridge(seq - 1, str(status))
    return False


async def _history(
    ctx: Ctx, track: SessionTrack, since: int, upto: int
) -> list[dict[str, Any]] | None:
    items: list[dict[str, Any]] = []
    cursor: int | None = since
    try:
        while cursor is not None and cursor < upto:
            r = await ctx.http.get(f"/tracking/{track.tracking_id}/history",
                                   params={"since_seq": cursor, "limit": 500})
            if r.status_code != 200:
                return None
            page = r.json()
            items.extend(i for i in page.get("items") or [] if i.get("seq", 0) <= upto)
            cursor = page.get("next_since_seq")
    except httpx.HTTPError:
        return None
    return items


async def _catch_up(ctx: Ctx, track: SessionTrack, seen: int, upto: int) -> None:
    m = ctx.metrics
    items: list[dict[str, Any]] = []
    since: int | None = seen
    try:
        while since is not None and since < upto:
            r = await ctx.http.get(
                f"/tracking/{track.tracking_id}/history", params={"since_seq": since, "limit": 500}
            )
            if r.status_code != 200:
                m.error(f"history_{r.status_code}", track.tracking_id)
                return
            page = r.json()
            items.extend(page.get("items") or [])
            since = page.get("next_since_seq")
    except httpx.HTTPError as e:
        m.error(f"history_{type(e).__name__}", track.tracking_id)
        return
    problems = check_history(items, seen, upto)
    m.counts["history_caught_up"] += 1
    for p in problems:
        m.error("history_mismatch", f"{track.tracking_id}: {p}")


def _fold(ctx: Ctx, track: SessionTrack, check: StreamCheck) -> None:
    m = ctx.metrics
    lost = check.finish(track.final_seq) if check.first_seq is not None else 0
    c = m.counts
    c["messages_received"] += check.received
    c["messages_replayed"] += check.replayed
    c["messages_lost"] += check.gaps
    c["messages_lost_tail"] += lost
    c["messages_conflated"] += check.conflated
    c["messages_expected"] += check.received + check.replayed + check.gaps + check.conflated
    c["resumed"] += check.resumed
    c["flaps"] += check.flaps
    if check.delivered:
        c["milestone_streams"] += 1
        c["approached_once"] += check.approaching == 1
        c["arrived_once"] += check.arrived == 1
    c["status_changes_received"] += check.status_changes
    c["out_of_order"] += check.out_of_order
    c["duplicates"] += check.duplicates
    c["status_errors"] += check.status_errors
    c["eta_errors"] += check.eta_errors
    c["protocol_errors"] += check.protocol_errors
    c["phone_leaks"] += check.phone_leaks
    if check.first_seq is not None:
        c["watchers_saw_delivered" if check.delivered else "watchers_not_delivered"] += 1
    for v in check.violations:
        m.violation(v)
