"""Bearer JWTs (HS256 pinned) turned into a principal, and the permission rules of API.md."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine.domain.errors import Forbidden, Unauthenticated
from engine.tokens import ALGORITHM, SHARE_SCOPE, mint_share_token, mint_token


class Role(StrEnum):
    RIDER = "rider"
    MERCHANT = "merchant"
    CUSTOMER = "customer"
    SUPERADMIN = "superadmin"
    SERVICE = "service"  # what this service presents to the order/notification services


USER_ROLES = frozenset({Role.RIDER, Role.MERCHANT, Role.CUSTOMER, Role.SUPERADMIN})


@dataclass(frozen=True, slots=True)
class Principal:
    sub: str
    role: Role
    expires_at: float = field(default=math.inf, compare=False)  # the token's `exp`

    @property
    def is_admin(self) -> bool:
        return self.role is Role.SUPERADMIN


def decode_token(secret: str, token: str) -> Principal:
    """Verify signature (HS256 only), expiry and claims; Unauthenticated says what is wrong."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM],
            options={"require": ["sub", "role", "exp"]},
        )
    except jwt.ExpiredSignatureError as e:
        raise Unauthenticated("Token has expired") from e
    except jwt.MissingRequiredClaimError as e:
        if _is_share_token(token):
            raise Unauthenticated(SHARE_ONLY) from e
        raise Unauthenticated(f"Token is missing the {e.claim!r} claim") from e
    except jwt.InvalidAlgorithmError as e:
        raise Unauthenticated("Token must be signed with HS256") from e
    except jwt.InvalidTokenError as e:
        raise Unauthenticated(f"Invalid token: {e}") from e
    sub, role = claims.get("sub"), claims.get("role")
    if not isinstance(sub, str) or not sub:
        raise Unauthenticated("Token 'sub' claim must be a non-empty string")
    if not isinstance(role, str) or role not in {r.value for r in USER_ROLES}:
        raise Unauthenticated(f"Token role must be one of {sorted(r.value for r in USER_ROLES)}")
    exp = claims.get("exp")
    expires_at = float(exp) if isinstance(exp, int | float) else math.inf
    return Principal(sub=sub, role=Role(role), expires_at=expires_at)


SHARE_ONLY = "A share link's token only opens its own session's view and WebSocket"


@dataclass(frozen=True, slots=True)
class ShareGrant:
    """A share link's token: read-only access to one session's view, history and WebSocket
    until `expires_at`. Not a principal: it passes no role check anywhere else."""

    tracking_id: str
    expires_at: float


def _is_share_token(token: str) -> bool:
    """Whether the token claims the share scope (unverified: only to pick the check to run)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return False
    return isinstance(claims, dict) and claims.get("scope") == SHARE_SCOPE


def decode_share(secret: str, token: str) -> ShareGrant:
    """Verify a share token (HS256, expiry, scope); Unauthenticated says what is wrong."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["tid", "scope", "exp"]}
        )
    except jwt.ExpiredSignatureError as e:
        raise Unauthenticated("This share link has expired") from e
    except jwt.InvalidTokenError as e:
        raise Unauthenticated(f"Invalid share link token: {e}") from e
    tid, exp = claims.get("tid"), claims.get("exp")
    if claims.get("scope") != SHARE_SCOPE or not isinstance(tid, str) or not tid:
        raise Unauthenticated("Invalid share link token: wrong scope or session")
    return ShareGrant(tid, float(exp) if isinstance(exp, int | float) else math.inf)


class TokenVerifier:
    """Verifies bearer tokens and remembers the ones that verified.

    A token's signature check gives the same answer every time for one secret, so a token that
    verified once is taken again without the HMAC and the JSON parsing (about 40 us each with
    PyJWT) until its `exp`, which is checked on every use. Only successes are remembered, at
    most `size` of them (the oldest go first)."""

    def __init__(
        self, secret: str, clock: Callable[[], float] = time.time, size: int = 65536
    ) -> None:
        self.secret = secret
        self.clock = clock
        self.size = size
        self._known: dict[str, Principal] = {}
        self._shares: dict[str, ShareGrant] = {}

    def verify(self, token: str) -> Principal:
        """The token's principal; Unauthenticated says what is wrong with it."""
        known = self._known.get(token)
        if known is not None:
            if self.clock() < known.expires_at:
                return known
            del self._known[token]
            raise Unauthenticated("Token has expired")
        principal = decode_token(self.secret, token)
        if len(self._known) >= self.size:
            del self._known[next(iter(self._known))]
        self._known[token] = principal
        return principal


    def verify_reader(self, token: str, tracking_id: str) -> Principal | ShareGrant:
        """A token that may read session `tracking_id`: any valid user token, or a share
        link's token for that session (Unauthenticated once expired, Forbidden for another)."""
        grant = self._shares.get(token)
        if grant is None:
            if token in self._known or not _is_share_token(token):
                return self.verify(token)
            grant = decode_share(self.secret, token)
            if len(self._shares) >= self.size:
                del self._shares[next(iter(self._shares))]
            self._shares[token] = grant
        if self.clock() >= grant.expires_at:
            del self._shares[token]
            raise Unauthenticated("This share link has expired")
        if grant.tracking_id != tracking_id:
            raise Forbidden("This share link is for another tracking session")
        return grant

    def share(self, tracking_id: str, expires_at: float) -> str:
        """A share link's token for one session, valid until `expires_at`."""
        return mint_share_token(self.secret, tracking_id, expires_at, self.clock())


_bearer = HTTPBearer(auto_error=False)


def _tokens(request: Request) -> TokenVerifier:
    tokens: TokenVerifier = request.app.state.tokens
    return tokens


# The dependencies are `async def` although they never await: FastAPI runs a plain `def`
# dependency in a worker thread, and three thread hops per request (and the GIL traffic with
# Ray's threads) were the largest cost of a location update in a profile under load.
async def optional_principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal | None:
    """The caller, if a token was sent; a present but invalid token is refused."""
    if request.headers.get("authorization") and creds is None:
        raise Unauthenticated("Authorization header must be 'Bearer <token>'")
    if creds is None:
        return None
    principal = _tokens(request).verify(creds.credentials)
    request.state.principal = principal  # for the request log line
    return principal


async def required_principal(
    principal: Annotated[Principal | None, Depends(optional_principal)],
) -> Principal:
    """The caller; 401 when no token was sent."""
    if principal is None:
        raise Unauthenticated("A bearer token is required (Authorization: Bearer <token>)")
    return principal


def require_roles(*roles: Role) -> Any:
    """A dependency admitting only the given roles (403 for the others)."""

    async def check(principal: Annotated[Principal, Depends(required_principal)]) -> Principal:
        if principal.role not in roles:
            allowed = ", ".join(r.value for r in roles)
            raise Forbidden(f"This action needs the role {allowed}; token has {principal.role}")
        return principal

    return Depends(check)


async def optional_reader(
    request: Request,
    tracking_id: str,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal | ShareGrant | None:
    """For the public reads of one session: no token, a user's, or that session's share link
    token; any other token present is refused."""
    if request.headers.get("authorization") and creds is None:
        raise Unauthenticated("Authorization header must be 'Bearer <token>'")
    if creds is None:
        return None
    reader = _tokens(request).verify_reader(creds.credentials, tracking_id)
    if isinstance(reader, Principal):
        request.state.principal = reader
    return reader


CurrentPrincipal = Annotated[Principal, Depends(required_principal)]
MaybePrincipal = Annotated[Principal | None, Depends(optional_principal)]
MaybeReader = Annotated[Principal | ShareGrant | None, Depends(optional_reader)]

__all__ = ["ALGORITHM", "Principal", "Role", "ShareGrant", "decode_token", "mint_token"]
