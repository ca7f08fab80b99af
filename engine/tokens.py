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


SHARE_SCOPE = "share"


def mint_share_token(secret: str, tracking_id: str, expires_at: float, now: float) -> str:
    """A share link's token: scope `share`, the session in `tid`, no role (it is no user)."""
    claims = {"scope": SHARE_SCOPE, "tid": tracking_id, "sub": f"share:{tracking_id}",
              "iat": int(now), "exp": int(expires_at)}  # fmt: skip
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
