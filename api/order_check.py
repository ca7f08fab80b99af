"""The optional start check (`TRACKING_START_CHECK_ORDER`): before a session starts, ask the order
service whether the order exists and names the rider.

`GET {TRACKING_ORDER_SERVICE_URL}/orders/{order_id}` (the id percent-encoded as one path segment)
with the service token the outbound calls carry. The answer must be 2xx JSON with a `rider_id`
field (extra fields are ignored). Without the check, any rider may start tracking any order id it
can guess, and walk it to DELIVERED, which the order service then hears of.
"""

from __future__ import annotations

import logging
import time

import httpx

from engine.domain.errors import Forbidden, InvalidInput, Unavailable
from engine.domain.integrations import order_path
from engine.tokens import mint_token

log = logging.getLogger(__name__)

SERVICE_ROLE = "service"
SERVICE_SUB = "tracking-service"
TOKEN_TTL_S = 3600


class OrderCheck:
    """Asks the order service whether an order names a rider; see the module docstring."""

    def __init__(self, base_url: str, service_secret: str, timeout_s: float) -> None:
        self.base_url = base_url
        self.secret = service_secret
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), follow_redirects=False)
        self._token: tuple[str, float] | None = None

    def _bearer(self) -> str:
        now = time.time()
        if self._token is None or now >= self._token[1]:
            token = mint_token(self.secret, SERVICE_ROLE, SERVICE_SUB, TOKEN_TTL_S, now=now)
            self._token = (token, now + TOKEN_TTL_S / 2)
        return self._token[0]

    async def check(self, order_id: str, rider_id: str) -> None:
        """Return when the order names `rider_id`: Forbidden when it names another rider,
        InvalidInput when the order service does not know it, Unavailable when it cannot say."""
        url = self.base_url + order_path(order_id)
        try:
            resp = await self.client.get(url, headers={"Authorization": f"Bearer {self._bearer()}"})
        except httpx.HTTPError as e:
            log.warning("order check of %s failed: %s", order_id, type(e).__name__)
            raise Unavailable("the order service could not confirm the order; retry") from e
        if resp.status_code == 404:
            raise InvalidInput(f"Order {order_id} is not known to the order service")
        if not 200 <= resp.status_code < 300:
            raise Unavailable(
                f"the order service could not confirm the order (HTTP {resp.status_code}); retry"
            )
        try:
            named = resp.json().get("rider_id")
        except (ValueError, AttributeError):
            named = None
        if not isinstance(named, str):
            raise Unavailable("the order service's answer names no rider_id; retry later")
        if named != rider_id:
            raise Forbidden(f"Order {order_id} is assigned to another rider")

    async def close(self) -> None:
        await self.client.aclose()
