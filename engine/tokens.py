"""Minting HS256 bearer tokens (shared by the CLI, the API and the outbox dispatcher)."""

from __future__ import annotations

import time

import jwt

ALGORITHM = "HS256"


def mint_token(secret: str, role: str, sub: str, ttl_s: int, now: float | None = None) -> str:
    """A signed HS256 token with `sub`, `role`, `iat` and `exp`."""
    issued = int(time.time() if now is None else now)
    claims = {"sub": sub, "role": role, "iat": issued, "exp": issued + int(ttl_s)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
