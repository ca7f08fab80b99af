"""The outbox dispatcher: delivers the calls journaled in every shard file's outbox.

Shards write the calls a change owes (API.md "Integrations") into their store in the same
transaction as the change; this loop POSTs them. Per-session order comes from the store: only the
oldest pending call of a session is ever due (`OutboxStore.due_heads`), so while a session's head
waits out its backoff, its later calls wait too. An attempt is marked in the store only after it
finished, so a crash between the POST and the mark sends it again: delivery is at least once, and
receivers deduplicate by `Idempotency-Key`.

Store calls run on one worker thread: the stores' connections are never used concurrently, and
the dispatcher's event loop never waits on a disk (in the local runtime it is the API's loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import httpx
import orjson

from engine.clock import Clock, system_clock
from engine.domain.integrations import NOTIFICATION, ORDER
from engine.domain.outbox_policy import Backoff, Outcome, decide, describe
from engine.settings import Settings
from engine.store import StoreSpec, open_outboxes
from engine.store.base import OutboxMark, OutboxRow, OutboxStore
from engine.tokens import mint_token

log = logging.getLogger(__name__)
SERVICE_ROLE = "service"

T = TypeVar("T")

SERVICE_SUB = "tracking-service"
MAX_IN_FLIGHT = 64
POLL_S = 0.15
ERROR_PAUSE_S = 2.0
TOKEN_TTL_S = 3600
PRUNE_EVERY_S = 60.0
DONE_RETENTION_S = 3600.0
ERROR_TEXT_CHARS = 200


class Outbox(Protocol):
    """What the API reads from the outbox, wherever the dispatcher runs."""

    async def counts(self) -> dict[str, int]:
        """pending / done / dead calls and retries so far, over every shard's outbox."""

    async def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        """The newest dead letters (newest first), at most `limit`."""

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Mark:
    shard: int
    mark: OutboxMark


class Dispatcher:
    """Delivers every shard file's outbox; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock = system_clock,
        secret: str | None = None,
        rng: random.Random | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        # The service token has a secret of its own: a receiver that can verify it must not be
        # able to mint the users' tokens.
        self.secret = secret if secret is not None else settings.resolved_service_secret()
        self.rng = rng if rng is not None else random.Random()
        self.backoff = backoff if backoff is not None else Backoff()
        self._urls = {ORDER: settings.order_service_url,
                      NOTIFICATION: settings.notification_service_url}
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-db")
        self._stores: list[OutboxStore] | None = None
        self._in_flight: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._finished: list[_Mark] = []
        self._wake = asyncio.Event()
        self._client: httpx.AsyncClient | None = None
        self._token: tuple[str, float] | None = None  # (token, re-mint after)
        self._failing: set[str] = set()
        self._next_prune = 0.0

    # -- the loop -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Deliver forever (until cancelled)."""
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.settings.outbox_timeout_s),
            limits=httpx.Limits(max_connections=MAX_IN_FLIGHT),
            follow_redirects=False,
        )
        try:
            while True:
                try:
                    progressed = await self.step()
                except Exception:
                    log.exception("outbox round failed; trying again in %.0f s", ERROR_PAUSE_S)
                    await asyncio.sleep(ERROR_PAUSE_S)
                    continue
                if not progressed:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
                    # lands while it is timing out, and the dispatcher would never stop.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(POLL_S):
                            await self._wake.wait()
        finally:
            tasks = list(self._in_flight.values())
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._in_flight.clear()
            await self._client.aclose()
            self._client = None

    async def step(self) -> bool:
        """One round: record finished attempts, start due ones. True when something finished."""
        self._wake.clear()
        finished, self._finished = self._finished, []
        if finished:
            try:
                await self._in_db(self._apply_marks, finished)
            finally:
                # Even when the marks failed to commit: the rows are still pending, so they are
                # simply sent again (at least once).
                for m in finished:
                    self._in_flight.pop((m.shard, m.mark.row_id), None)
        now = self.clock()
        busy = [0] * self.settings.shards
        for shard, _ in self._in_flight:
            busy[shard] += 1
        for shard, row in await self._in_db(self._due, now, busy):
            if len(self._in_flight) >= MAX_IN_FLIGHT:
                break
            key = (shard, row.id)
            base = self._urls.get(row.target)
            if key in self._in_flight or base is None:
                continue  # no URL: the row stays pending, nothing is sent
            self._in_flight[key] = asyncio.create_task(self._deliver(shard, row, base))
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY_S
            await self._in_db(self._prune, now - DONE_RETENTION_S)
        return bool(finished)

    async def _deliver(self, shard: int, row: OutboxRow, base: str) -> None:
        attempts = row.attempts + 1
        status: int | None
        error: str | None
        try:
            request = self._request(base + row.path, row)
        except (httpx.InvalidURL, ValueError, UnicodeError) as e:
            # It would fail the same way every time: a dead letter now, not a retry forever.
            status, error = None, f"the request cannot be built: {e}"[:ERROR_TEXT_CHARS]
            outcome = Outcome.DEAD
        else:
            try:
                status, error = await self._send(request)
            except Exception as e:  # a bug or a transport surprise: keep the row, retry later
                status, error = None, type(e).__name__
            outcome = decide(status, attempts, self.settings.outbox_max_attempts)
        now = self.clock()
        next_at = now + self.backoff.delay(attempts, self.rng) if outcome is Outcome.RETRY else now
        self._note(row, outcome, status, error, attempts)
        reason = None if outcome is Outcome.DONE else describe(status, error)
        self._finished.append(_Mark(shard, OutboxMark(row.id, outcome, now, next_at, reason)))
        self._wake.set()

    def _request(self, url: str, row: OutboxRow) -> httpx.Request:
        assert self._client is not None
        headers = {
            "Idempotency-Key": row.idempotency_key,
            "Authorization": f"Bearer {self._bearer()}",
            "Content-Type": "application/json",
        }
        return self._client.build_request("POST", url, content=row.body, headers=headers)

    async def _send(self, request: httpx.Request) -> tuple[int | None, str | None]:
        assert self._client is not None
        try:
            resp = await self._client.send(request)
        except httpx.TimeoutException:
            return None, f"timeout after {self.settings.outbox_timeout_s:g} s"
        except httpx.HTTPError as e:
            return None, f"{type(e).__name__}: {e}"[:ERROR_TEXT_CHARS]
        if 200 <= resp.status_code < 300:
            return resp.status_code, None
        # The receiver's own explanation is kept with the row for the operator (dead letters
        # are superadmin-only); it is never logged, as it may echo the body (a phone number).
        return resp.status_code, " ".join(resp.text.split())[:ERROR_TEXT_CHARS] or None

    def _bearer(self) -> str:
        now = self.clock()
        if self._token is None or now >= self._token[1]:
            token = mint_token(self.secret, SERVICE_ROLE, SERVICE_SUB, TOKEN_TTL_S, now=now)
            self._token = (token, now + TOKEN_TTL_S / 2)
        return self._token[0]

    def _note(
        self, row: OutboxRow, outcome: Outcome, status: int | None, error: str | None,
        attempts: int,
    ) -> None:
        # Logs name the call by tracking id and idempotency key only: no body, no token.
        target = row.target
        if outcome is Outcome.DONE:
            if target in self._failing:
                self._failing.discard(target)
                log.info("%s service answers again", target)
        elif outcome is Outcome.RETRY:
            if target not in self._failing:
                self._failing.add(target)
                reason = describe(status) if status is not None else describe(None, error)
                log.warning("%s service call failed (%s); retrying with backoff", target, reason)
        else:
            log.error(
                "outbox dead letter: %s %s tracking_id=%s idempotency_key=%s attempts=%d (%s)",
                target, row.path, row.tracking_id, row.idempotency_key, attempts,
                describe(status) if status is not None else describe(None, error),
            )

    # -- reads for the API --------------------------------------------------------------------
    async def counts(self) -> dict[str, int]:
        """pending / done / dead calls and retries so far, summed over the shard files."""
        return await self._in_db(self._counts)

    async def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        """The newest dead letters of every shard file (newest first), at most `limit`."""
        return await self._in_db(self._dead_letters, limit)

    async def close(self) -> None:
        await self._in_db(self._close_stores)
        self._db.shutdown(wait=False)

    # -- store work, on the db thread ---------------------------------------------------------
    async def _in_db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    def _open(self) -> list[OutboxStore]:
        if self._stores is None:
            self._stores = open_outboxes(StoreSpec.from_settings(self.settings))
        return self._stores

    def _due(self, now: float, busy: list[int]) -> list[tuple[int, OutboxRow]]:
        per_shard = [
            [(i, row) for row in store.due_heads(now, MAX_IN_FLIGHT + busy[i])]
            for i, store in enumerate(self._open())
        ]
        # Interleave shards so one shard's backlog cannot take every free slot.
        merged = itertools.chain.from_iterable(itertools.zip_longest(*per_shard))
        return [x for x in merged if x is not None]

    def _apply_marks(self, marks: list[_Mark]) -> None:
        stores = self._open()
        by_shard: dict[int, list[OutboxMark]] = {}
        for m in marks:
            by_shard.setdefault(m.shard, []).append(m.mark)
        for shard, group in by_shard.items():
            try:
                stores[shard].mark(group)  # one transaction (one fsync) per store per round
            except Exception:
                log.exception("outbox marks of shard %d not saved; those calls will be resent",
                              shard)

    def _prune(self, older_than: float) -> None:
        for store in self._open():
            store.prune_done(older_than)

    def _counts(self) -> dict[str, int]:
        out = {"pending": 0, "done": 0, "dead": 0, "retries": 0}
        for store in self._open():
            for k, v in store.counts().items():
                out[k] = out.get(k, 0) + v
        return out

    def _dead_letters(self, limit: int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for i, store in enumerate(self._open()):
            for d in store.dead_letters(limit):
                try:
                    body: Any = orjson.loads(d["body"])
                except orjson.JSONDecodeError:
                    body = d["body"]
                items.append({**d, "shard": i, "body": body})
        items.sort(key=lambda d: (d["finished_at"] or 0, d["created_at"]), reverse=True)
        return items[:limit]

    def _close_stores(self) -> None:
        for store in self._stores or []:
            store.close()
        self._stores = None


# The settings the dispatcher reads (directly, or through StoreSpec.from_settings): all that the
# outbox dispatcher actor is sent. A setting added later is not sent until it is named here;
# tests/unit/test_dispatcher_settings.py makes every new setting take a side.
DISPATCHER_SETTINGS = frozenset({
    "data_dir", "store_url", "shards", "journal", "order_service_url",
    "notification_service_url", "outbox_max_attempts", "outbox_timeout_s", "service_secret",
})


def dispatcher_settings(settings: Settings) -> str:
    """What a dispatcher in another process is sent (JSON): only the settings it uses, the
    service secret resolved here (every node then signs with the same one), never the users'
    JWT secret."""
    used = settings.model_copy(update={"service_secret": settings.resolved_service_secret()})
    return used.model_dump_json(include=set(DISPATCHER_SETTINGS))
