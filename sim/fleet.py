"""One simulator process: drives its share of the run's deliveries and their watchers."""

from __future__ import annotations

import asyncio
import random
import resource
import time
from collections.abc import Callable
from typing import Any

import httpx

from sim.context import Ctx, RateLimiter, SessionTrack, SliceConfig
from sim.plan import plan_delivery
from sim.rider import ride, start_session
from sim.stats import Metrics, percentile
from sim.watcher import watch

Progress = Callable[[dict[str, Any]], None]


async def run_slice(cfg: SliceConfig, progress: Progress | None = None) -> Metrics:
    """Run the deliveries in `cfg.indices` to completion (or the deadline); return the metrics."""
    # For session starts, history and resyncs; riders post updates on their own connection.
    limits = httpx.Limits(max_connections=64, keepalive_expiry=2.0)
    timeout = httpx.Timeout(cfg.request_timeout_s)
    async with httpx.AsyncClient(base_url=cfg.base_url, limits=limits, timeout=timeout) as http:
        ctx = Ctx(cfg, http, limiter=RateLimiter(cfg.connect_rate_per_s))
        samplers = [
            asyncio.create_task(_sample_sockets(ctx)),
            asyncio.create_task(_sample_loop_lag(ctx)),
        ]
        if progress is not None:
            samplers.append(asyncio.create_task(_report_progress(ctx, progress)))
        try:
            n = len(cfg.indices)
            tasks = [
                asyncio.create_task(_delivery(ctx, i, k * cfg.start_spread_s / max(1, n)))
                for k, i in enumerate(cfg.indices)
            ]
            await asyncio.gather(*tasks)
        finally:
            for s in samplers:
                s.cancel()
            await asyncio.gather(*samplers, return_exceptions=True)
        ctx.metrics.open_per_s[int(ctx.now())] = ctx.open_sockets
        # Peak resident memory of this simulator process (KiB on Linux), summed over processes.
        ctx.metrics.counts["sim_max_rss_kb"] += resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if progress is not None:
            progress(_snapshot(ctx))
        return ctx.metrics


async def _delivery(ctx: Ctx, index: int, start_after_s: float) -> None:
    cfg = ctx.cfg
    await asyncio.sleep(start_after_s)
    plan = plan_delivery(cfg.seed, index, cfg.plan)
    track = await start_session(ctx, plan)
    if track is None:
        return
    # Which transport each rider uses is part of the seeded run, like its route.
    use_ws = random.Random(f"transport:{cfg.seed}:{index}").random() >= cfg.http_ratio
    track.watchers_pending = cfg.watchers_per_delivery
    if not cfg.watchers_per_delivery:
        track.ready.set()
    roles = cfg.roles or ("public",)
    watchers = [
        asyncio.create_task(watch(ctx, track, roles[n % len(roles)], n))
        for n in range(cfg.watchers_per_delivery)
    ]
    # Like a customer who opens the app once the order is assigned, watchers are in before
    # the rider moves, so every update is one they should see.
    try:
        await asyncio.wait_for(track.ready.wait(), cfg.watchers_ready_timeout_s)
    except TimeoutError:
        ctx.metrics.error("watchers_not_ready", track.tracking_id)
    await ride(ctx, plan, track, use_ws)
    await _finish_watchers(ctx, track, watchers)
    await _check_accepted(ctx, track)
    ctx.metrics.sessions.append(_outcome(ctx, track))


async def _check_accepted(ctx: Ctx, track: SessionTrack) -> None:
    """Nothing the server acknowledged may be lost: every acknowledged update is in the
    session's history, with the location (and status) the rider sent, whatever crashed."""
    m = ctx.metrics
    items: dict[int, dict[str, Any]] = {}
    since: int | None = 0
    try:
        while since is not None:
            r = await ctx.http.get(f"/tracking/{track.tracking_id}/history",
                                   params={"since_seq": since, "limit": 1000})
            if r.status_code != 200:
                m.error(f"accepted_check_{r.status_code}", track.tracking_id)
                return
            page = r.json()
            items.update((i["seq"], i) for i in page.get("items") or [])
            since = page.get("next_since_seq")
    except httpx.HTTPError as e:
        m.error(f"accepted_check_{type(e).__name__}", track.tracking_id)
        return
    for seq, (lat, lng, status) in track.acked.items():
        m.counts["accepted_checked"] += 1
        got = items.get(seq)
        if got is None or (got.get("lat"), got.get("lng")) != (lat, lng) or (
            status is not None and got.get("status") != status
        ):
            m.counts["accepted_lost"] += 1
            m.violation(f"{track.tracking_id}: acknowledged seq {seq} is not in the history as"
                        f" sent ({got!r})")


async def _finish_watchers(
    ctx: Ctx, track: SessionTrack, watchers: list[asyncio.Task[None]]
) -> None:
    """Watchers end on DELIVERED; one that has not seen it by `tail_grace_s` after the rider
    finished (the rider gave up, or the message is lost) is stopped, its tail counted lost."""
    if not watchers:
        return
    _, pending = await asyncio.wait(watchers, timeout=ctx.cfg.tail_grace_s)
    if pending:
        track.stopping = True
        for ws in list(track.sockets):
            await ws.close()
    await asyncio.gather(*watchers)


def _outcome(ctx: Ctx, track: SessionTrack) -> dict[str, Any]:
    return {
        "index": track.index,
        "tracking_id": track.tracking_id,
        "order_id": track.order_id,
        "rider_id": track.rider_id,
        "phone": track.phone,
        "final_seq": track.final_seq,
        "statuses": track.statuses,
        "delivered": track.delivered,
        "approach_status": track.approach_seen or track.approach_guess,
    }


async def _sample_sockets(ctx: Ctx) -> None:
    last = -1
    while True:
        sec = int(ctx.now())
        # A busy loop may oversleep whole seconds: fill them rather than leave holes of zero.
        for s in range(last + 1, sec + 1):
            ctx.metrics.open_per_s[s] = ctx.open_sockets
        last = sec
        await asyncio.sleep(1.0 - ctx.now() % 1.0)


async def _sample_loop_lag(ctx: Ctx, period_s: float = 0.1) -> None:
    """How late this event loop wakes up: when it is high, measured latencies include it."""
    while True:
        t = time.monotonic()
        await asyncio.sleep(period_s)
        ctx.metrics.loop_lag_s.append(max(0.0, time.monotonic() - t - period_s))


async def _report_progress(ctx: Ctx, progress: Progress) -> None:
    while True:
        await asyncio.sleep(1.0)
        progress(_snapshot(ctx))


def _snapshot(ctx: Ctx) -> dict[str, Any]:
    m = ctx.metrics
    recent = sorted(m.latency_s[-2000:])
    return {
        "started": m.counts["deliveries_started"],
        "completed": m.counts["deliveries_completed"],
        "open": ctx.open_sockets,
        "sent": m.counts["updates_sent"],
        "acked": m.counts["updates_acked"],
        "received": len(m.latency_s) + m.counts["latency_unmatched"],
        "errors": sum(m.errors.values()),
        "error_kinds": dict(m.errors.most_common(3)),
        "p99_ms": round(percentile(recent, 99) * 1000, 1) if recent else None,
    }
