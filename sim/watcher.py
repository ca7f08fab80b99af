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
                    raw = await ws.recv()
                    got = time.monotonic()
                    msg: dict[str, Any] = orjson.loads(raw)
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
