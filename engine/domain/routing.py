"""Placing sessions on shards (pure).

A session lives on the shard of its *order*: `shard_of(order_id)`. Its tracking id is drawn at
random until `shard_of(tracking_id)` names that same shard (about `n_shards` draws; the id keeps
over 110 random bits), so routing by tracking id stays O(1) with no directory, and the check that
an order has at most one live session is local to one shard. Finding a rider's newest session is
the one query that asks every shard (one batched call each); it is rare next to updates.
"""

from __future__ import annotations

import secrets
import zlib
from collections.abc import Callable

TRACKING_ID_PREFIX = "TRK-"
RANDOM_BYTES = 15  # 120 bits -> 20 url-safe characters


def shard_of(key: str, n_shards: int) -> int:
    """A stable shard index for `key` (the same in every process, unlike `hash`)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % n_shards


def new_tracking_id(
    shard: int, n_shards: int, token: Callable[[int], str] = secrets.token_urlsafe
) -> str:
    """A fresh unguessable tracking id that routes to `shard`."""
    while True:
        tid = TRACKING_ID_PREFIX + token(RANDOM_BYTES)
        if shard_of(tid, n_shards) == shard:
            return tid
