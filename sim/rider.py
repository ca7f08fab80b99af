"""A simulated rider: starts its session, then reports its plan over HTTP or its WebSocket."""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from sim.context import Ctx, SessionTrack
from sim.phone import Noise, Send, schedule
from sim.plan import STATUSES, DeliveryPlan, Update


class Refused(Exception):
    """The server refused an update (the `detail`/`message` says why); `code` is HTTP or 'ws'."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class Uncertain(Exception):
    """The update may or may not have been applied (transport failure, timeout)."""


class Reporter(Protocol):
    async def send(self, body: dict[str, Any]) -> dict[str, Any]: ...
    async def send_batch(self, fixes: list[dict[str, Any]]) -> dict[str, Any]: ...
    async def close(self) -> None: ...


class HttpReporter:
    """Reports over HTTP on the rider's own connection, as a phone does. (One client per rider
    also keeps httpcore's pool small: it scans every pooled connection on each request.)"""

    def __init__(self, ctx: Ctx, tracking_id: str, headers: dict[str, str]) -> None:
        self._url, self._headers = f"/tracking/update/{tracking_id}", headers
        self._http = httpx.AsyncClient(
            base_url=ctx.cfg.base_url,
            timeout=ctx.cfg.request_timeout_s,
            verify=_ssl_context(),
            # Drop idle connections before uvicorn's 5 s keep-alive timeout would, so a
            # POST never goes out on a connection the server is closing at that moment.
            limits=httpx.Limits(max_connections=1, keepalive_expiry=2.0),
        )

    async def send(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            r = await self._http.post(self._url, json=body, headers=self._headers)
        except httpx.HTTPError as e:
            raise Uncertain(type(e).__name__) from e
        if r.status_code != 200:
            raise Refused(str(r.status_code), _detail(r))
        view: dict[str, Any] = r.json()
        return view

    async def send_batch(self, fixes: list[dict[str, Any]]) -> dict[str, Any]:
        """POST .../batch: {"view", "fixes": [{kept, seq, filtered, late}]}."""
        try:
            r = await self._http.post(self._url + "/batch", json={"fixes": fixes},
                                      headers=self._headers)  # fmt: skip
        except httpx.HTTPError as e:
            raise Uncertain(type(e).__name__) from e
        if r.status_code != 200:
            raise Refused(str(r.status_code), _detail(r))
        answer: dict[str, Any] = r.json()
        return answer

    async def close(self) -> None:
        await self._http.aclose()


class WsReporter:
    """Reports over the session's WebSocket; the ack is the rider's own copy of the broadcast."""

    def __init__(self, ctx: Ctx, track: SessionTrack, ws: ClientConnection) -> None:
        self._ctx, self._track, self._ws = ctx, track, ws
        self._broken = False

    @classmethod
    async def open(cls, ctx: Ctx, track: SessionTrack) -> WsReporter:
        return cls(ctx, track, await cls._connect(ctx, track))

    @staticmethod
    async def _connect(ctx: Ctx, track: SessionTrack) -> ClientConnection:
        tok = ctx.token("rider", track.rider_id)
        url = f"{ctx.cfg.ws_url}/ws/tracking/{track.tracking_id}" + (f"?token={tok}" if tok else "")
        ws = await connect(url, compression=None, ping_interval=None, open_timeout=30)
        first = orjson.loads(await asyncio.wait_for(ws.recv(), ctx.cfg.request_timeout_s))
        if first.get("type") != "initial_state":
            await ws.close()
            raise Refused("ws", f"first message {first.get('type')!r}")
        return ws

    async def send(self, body: dict[str, Any]) -> dict[str, Any]:
        """The view that acknowledges `body`: the broadcast carrying its seq, or (a dropped fix)
        the fix_filtered answer that echoes it."""
        want = self._track.acked_seq + 1
        msg = {"type": "location_update", "location": body}
        return await self._exchange(msg, lambda kind, m: (
            (kind == "location_update" and (m.get("data") or {}).get("seq", 0) >= want)
            or (kind == "fix_filtered" and _same_fix(m.get("fix"), body))
        ))

    async def send_batch(self, fixes: list[dict[str, Any]]) -> dict[str, Any]:
        msg = {"type": "location_batch", "fixes": fixes}
        return await self._exchange(msg, lambda kind, m: kind == "location_batch_result")

    async def _exchange(
        self, out: dict[str, Any], answers: Callable[[str, dict[str, Any]], bool]
    ) -> dict[str, Any]:
        try:
            if self._broken:  # as a rider app does: a new socket after a failed one
                await self._ws.close()
                self._ws = await self._connect(self._ctx, self._track)
                self._broken = False
            await self._ws.send(orjson.dumps(out).decode())
            async with asyncio.timeout(self._ctx.cfg.request_timeout_s):
                while True:
                    msg = orjson.loads(await self._ws.recv())
                    kind = msg.get("type")
                    if kind == "error":
                        raise Refused("ws", str(msg.get("message")))
                    if answers(kind, msg):
                        data: dict[str, Any] = msg.get("data") or {}
                        return data
        except (OSError, TimeoutError, WebSocketException) as e:
            self._broken = True
            raise Uncertain(type(e).__name__) from e

    async def close(self) -> None:
        await self._ws.close()


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One per process: building one loads the CA bundle, ~50 ms a rider otherwise."""
    return ssl.create_default_context()


def _detail(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail"))
    except ValueError:
        return r.text[:200]


async def start_session(ctx: Ctx, plan: DeliveryPlan) -> SessionTrack | None:
    run = ctx.cfg.run_id
    rider_id, order_id = f"RIDER-{run}-{plan.index}", f"ORD-{run}-{plan.index}"
    body: dict[str, Any] = {
        "order_id": order_id,
        "rider_id": rider_id,
        "dropoff_lat": plan.dropoff[0],
        "dropoff_lng": plan.dropoff[1],
    }
    if plan.phone:
        body["phone"] = plan.phone
    m = ctx.metrics
    try:
        r = await ctx.http.post("/tracking/start", json=body, headers=ctx.auth("rider", rider_id))
    except httpx.HTTPError as e:
        m.error(f"start_{type(e).__name__}", order_id)
        return None
    if r.status_code != 201:
        m.error(f"start_{r.status_code}", f"{order_id}: {_detail(r)}")
        return None
    view = r.json()
    if not isinstance(view.get("seq"), int):
        m.error("start_no_seq", f"{order_id}: the view carries no int seq")
        return None
    track = SessionTrack(plan.index, view["tracking_id"], order_id, rider_id, plan.phone)
    track.acked_seq = view["seq"]
    m.counts["deliveries_started"] += 1
    return track


async def ride(ctx: Ctx, plan: DeliveryPlan, track: SessionTrack, use_ws: bool) -> None:
    """Follow the plan in compressed time, one update in flight; record acks and refusals."""
    m, cfg = ctx.metrics, ctx.cfg
    reporter: Reporter
    try:
        if use_ws:
            reporter = await WsReporter.open(ctx, track)
        else:
            reporter = HttpReporter(ctx, track.tracking_id, ctx.auth("rider", track.rider_id))
    except (OSError, TimeoutError, WebSocketException, Refused) as e:
        m.error(f"rider_ws_{type(e).__name__}", track.tracking_id)
        track.final_seq = track.acked_seq
        track.done.set()
        return
    transport = "ws" if use_ws else "http"
    delivered = False
    noise = cfg.noise
    if plan.index in cfg.offline:
        noise = Noise(noise.jump_ratio, noise.duplicate_ratio, noise.late_ratio,
                      cfg.offline_after, cfg.offline_fixes)  # fmt: skip
    sends = schedule(plan, cfg.seed, noise)
    try:
        if plan.index in cfg.invalid:  # ASSIGNED -> IN_TRANSIT skips PICKED_UP
            await _send_invalid(ctx, reporter, plan.updates[0], "IN_TRANSIT", "PICKED_UP")
        started = time.monotonic()
        # The phone's clock: simulated time, ending the trip now (never in the future).
        clock0 = time.time() - plan.duration_s if cfg.device_time else None
        for send in sends:
            delay = started + send.t_s / cfg.speedup - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if ctx.now() > cfg.deadline_s:
                m.error("rider_deadline", track.tracking_id)
                break
            m.counts[f"phone_{send.kind}"] += 1
            if send.kind == "batch":
                assert clock0 is not None, "offline buffering needs device_time"
                await _send_batch(ctx, reporter, track, send, transport, clock0)
            else:
                [u] = send.fixes
                at = None if clock0 is None else clock0 + u.t_s
                await _send(ctx, reporter, track, u, transport, at, send)
            if track.delivered:
                delivered = True
        if delivered and plan.index in cfg.invalid:  # anything after DELIVERED is refused
            await _send_invalid(ctx, reporter, plan.updates[-1], "IN_TRANSIT", "")
    finally:
        await reporter.close()
        track.final_seq = track.acked_seq
        track.done.set()
    if delivered:
        m.counts["deliveries_completed"] += 1


async def _send(
    ctx: Ctx, reporter: Reporter, track: SessionTrack, u: Update, via: str,
    recorded_at: float | None = None, send: Send | None = None,
) -> bool:
    """Send one update; after a failure that leaves it unknown whether the server applied it,
    look at the session and send again if not (as a rider app retries), up to 3 times. While
    the server's processes are being killed (`survive_outages`), keep retrying what a
    restarting server refuses or drops, with backoff, for up to `outage_retry_s`."""
    m, cfg = ctx.metrics, ctx.cfg
    body = u.body(recorded_at)
    want = track.acked_seq + 1
    m.counts["updates_sent"] += 1
    m.counts[f"updates_sent_{via}"] += 1
    resynced = False
    give_up_at = time.monotonic() + cfg.outage_retry_s if cfg.survive_outages else None
    pause = 0.2
    attempt = 0
    view: dict[str, Any] | None = None
    sent = time.monotonic()
    while view is None:
        sent = time.monotonic()
        track.sent_at[want] = sent
        m.sent_per_s[int(ctx.now())] += 1
        if attempt:
            m.counts["update_retries"] += 1
        attempt += 1
        try:
            view = await reporter.send(body)
        except Refused as e:
            if give_up_at is None or not _transient(e) or time.monotonic() >= give_up_at:
                del track.sent_at[want]
                m.error(f"update_refused_{e.code}", f"{track.tracking_id} seq {want}: {e.detail}")
                return False
            # A shard that died mid-batch answers 503 whether or not it had journaled it.
            m.counts["transient_failures"] += 1
            view, resynced = await _applied_after_outage(ctx, track, want, give_up_at)
        except Uncertain as e:
            if give_up_at is not None:
                m.counts["transient_failures"] += 1
                view, resynced = await _applied_after_outage(ctx, track, want, give_up_at)
            else:
                m.error(f"update_uncertain_{e}",
                        f"{track.tracking_id} seq {want} t={ctx.now():.0f}s")
                current = await _current_view(ctx, track)
                if current is not None and current.get("seq", 0) >= want:
                    view, resynced = current, True  # it was applied; the watchers saw it
                    continue
                if attempt >= 3:
                    break
        if view is None and give_up_at is not None:
            if time.monotonic() >= give_up_at:
                m.error("update_gave_up", f"{track.tracking_id} seq {want} t={ctx.now():.0f}s")
                break
            await asyncio.sleep(pause)
            pause = min(2.0, pause * 2)
    if view is None:
        del track.sent_at[want]
        return False
    if not resynced:
        m.ack_s.append(time.monotonic() - sent)
        if via == "ws":
            m.ack_ws_s.append(time.monotonic() - sent)
    m.counts["updates_acked"] += 1
    seq = view.get("seq")
    reason = view.get("filtered")
    if reason is not None:
        m.counts["fixes_filtered"] += 1
        m.counts[f"fixes_filtered_{reason}"] += 1
        if send is None or not send.dropped:
            m.error("fix_filtered_unexpectedly", f"{track.tracking_id}: {reason} {body}")
        if seq == want - 1:  # nothing changed: no seq was used
            track.sent_at.pop(want, None)
            return True
    elif send is not None and send.dropped:
        m.counts["noise_kept"] += 1
        m.error("noise_kept", f"{track.tracking_id}: a {send.kind} fix was kept: {body}")
    _note_approach(track, view, exact=True)
    if seq != want and isinstance(seq, int):
        m.error("ack_seq_mismatch", f"{track.tracking_id}: expected seq {want}, ack says {seq}")
        track.sent_at[seq] = track.sent_at.pop(want)
    if isinstance(seq, int):
        track.acked_seq = max(track.acked_seq, seq)
        track.acked[seq] = (u.lat, u.lng, u.status)
    if u.status is not None:
        if view.get("status") == u.status:
            track.statuses.append(u.status)
            track.delivered = u.status == "DELIVERED"
        else:
            m.error(
                "ack_wrong_status",
                f"{track.tracking_id}: sent {u.status}, got {view.get('status')}",
            )
    return True


async def _send_batch(
    ctx: Ctx, reporter: Reporter, track: SessionTrack, send: Send, via: str, clock0: float
) -> None:
    """Send a phone's buffered fixes as one batch; re-send it whole after a failure that leaves
    its fate unknown (what was applied comes back as duplicates)."""
    m = ctx.metrics
    fixes = [u.body(clock0 + u.t_s) for u in send.fixes]
    want = track.acked_seq + 1
    m.counts["batches_sent"] += 1
    m.counts["batch_fixes"] += len(fixes)
    m.counts["updates_sent"] += len(fixes)
    m.counts[f"updates_sent_{via}"] += len(fixes)
    sent = time.monotonic()
    for k in range(len(fixes)):  # if all are kept; trimmed to the seqs they got
        track.sent_at[want + k] = sent
    answer: dict[str, Any] | None = None
    for attempt in range(3):
        if attempt:
            m.counts["update_retries"] += 1
        try:
            answer = await reporter.send_batch(fixes)
            break
        except Refused as e:
            m.error(f"batch_refused_{e.code}", f"{track.tracking_id}: {e.detail}")
            break
        except Uncertain as e:
            m.error(f"batch_uncertain_{e}", track.tracking_id)
    view = (answer or {}).get("view")
    if answer is None or not isinstance(view, dict):
        for k in range(len(fixes)):
            track.sent_at.pop(want + k, None)
        return
    m.ack_s.append(time.monotonic() - sent)
    results = answer.get("fixes") or []
    used = {r.get("seq") for r in results}
    for k in range(len(fixes)):
        if want + k not in used:
            track.sent_at.pop(want + k, None)
    for u, r in zip(send.fixes, results, strict=False):
        if r.get("filtered"):
            m.counts["fixes_filtered"] += 1
            m.counts[f"fixes_filtered_{r['filtered']}"] += 1
        if r.get("late"):
            m.counts["batch_late"] += 1
        if r.get("kept") and isinstance(r.get("seq"), int):
            track.acked[r["seq"]] = (u.lat, u.lng, u.status)
    m.counts["updates_acked"] += sum(1 for r in results if r.get("kept"))
    _steps_to(track, view.get("status"))
    _note_approach(track, view, exact=False)
    if isinstance(view.get("seq"), int):
        track.acked_seq = max(track.acked_seq, view["seq"])


def _same_fix(echo: object, body: dict[str, Any]) -> bool:
    return isinstance(echo, dict) and all(
        echo.get(k) == body.get(k) for k in ("lat", "lng", "recorded_at")
    )


def _steps_to(track: SessionTrack, status: object) -> None:
    """Record the status steps up to `status` (a batch may take several; the machine is linear)."""
    if status not in STATUSES:
        return
    have = track.statuses[-1] if track.statuses else "ASSIGNED"
    for s in STATUSES[STATUSES.index(have) + 1 : STATUSES.index(str(status)) + 1]:
        track.statuses.append(s)
    track.delivered = track.delivered or status == "DELIVERED"


def _note_approach(track: SessionTrack, view: dict[str, Any], exact: bool) -> None:
    """The first answer showing a milestone: a single fix's is the view of the change that
    fired it (exact); a batch's is its last (a guess, which the watchers correct)."""
    status = view.get("status")
    if track.approach_guess is None and view.get("proximity") in ("approaching", "arrived"):
        track.approach_guess = str(status) if exact or status else None


async def _applied_after_outage(
    ctx: Ctx, track: SessionTrack, want: int, give_up_at: float
) -> tuple[dict[str, Any] | None, bool]:
    """After a failed send while the server's processes are being killed: wait until the
    session can be read again, then say whether the update was applied after all (its view,
    True) or not (None: send it again). Never resend blind: that would apply it twice."""
    pause = 0.2
    while True:
        current = await _current_view(ctx, track, quiet=True)
        if current is not None:
            if current.get("seq", 0) >= want:
                return current, True
            return None, False
        if time.monotonic() >= give_up_at:
            return None, False
        await asyncio.sleep(pause)
        pause = min(2.0, pause * 2)


def _transient(e: Refused) -> bool:
    """A refusal a restarting server gives, that the same update may get past later."""
    return e.code in ("503", "429") or (e.code == "ws" and "retry" in e.detail.lower())


async def _send_invalid(ctx: Ctx, reporter: Reporter, u: Update, status: str, allowed: str) -> None:
    m = ctx.metrics
    m.counts["invalid_sent"] += 1
    try:
        await reporter.send({"lat": u.lat, "lng": u.lng, "status": status})
    except Refused as e:
        if e.code in ("409", "ws") and allowed in e.detail:
            m.counts["invalid_rejected"] += 1
        else:
            m.error("invalid_wrong_refusal", f"{e.code}: {e.detail!r} (should name {allowed!r})")
        return
    except Uncertain as e:
        m.error(f"invalid_uncertain_{e}")
        return
    m.error("invalid_accepted", f"{status} was accepted")


async def _current_view(
    ctx: Ctx, track: SessionTrack, quiet: bool = False
) -> dict[str, Any] | None:
    """After an uncertain send: the session as the server has it now, if it answers (`quiet`:
    while the server restarts, not answering is expected, and not an error)."""
    try:
        r = await ctx.http.get(f"/tracking/{track.tracking_id}")
    except httpx.HTTPError as e:
        if not quiet:
            ctx.metrics.error(f"resync_{type(e).__name__}", track.tracking_id)
        return None
    if r.status_code != 200 or not isinstance(r.json().get("seq"), int):
        if not quiet:
            ctx.metrics.error(f"resync_{r.status_code}", track.tracking_id)
        return None
    view: dict[str, Any] = r.json()
    return view
