"""Bearer JWTs: HS256 only, with sub, role and exp; anything else is Unauthenticated."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest

from api.auth import ALGORITHM, USER_ROLES, Principal, Role, decode_token, mint_token, require_roles
from engine.domain.errors import Forbidden, Unauthenticated

SECRET = "unit-test-secret-" + "k" * 64  # long enough for HS512 too, so pyjwt does not warn
FAR_FUTURE = 4_102_444_800  # 2100-01-01: exp that the test cannot outlive
USER_ROLE_NAMES = ["rider", "merchant", "customer", "superadmin"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(claims).encode())
    return f"{head}.{body}.{b64(signature)}"


def claims(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "RIDER-789", "role": "rider", "exp": FAR_FUTURE}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def hs256(c: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(c, secret, algorithm="HS256")


def refused(token: str, secret: str = SECRET) -> str:
    with pytest.raises(Unauthenticated) as info:
        decode_token(secret, token)
    return info.value.detail


def test_user_roles_are_the_contracts() -> None:
    assert ALGORITHM == "HS256"
    assert sorted(r.value for r in USER_ROLES) == sorted(USER_ROLE_NAMES)


@pytest.mark.parametrize("role", USER_ROLE_NAMES)
def test_mint_decode_round_trip(role: str) -> None:
    token = mint_token(SECRET, role, "USER-1", ttl_s=3600)
    assert decode_token(SECRET, token) == Principal(sub="USER-1", role=Role(role))


def test_minted_claims() -> None:
    token = mint_token(SECRET, "merchant", "M-1", ttl_s=90, now=1_704_067_800.7)
    raw = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert raw == {"sub": "M-1", "role": "merchant", "iat": 1_704_067_800, "exp": 1_704_067_890}
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_only_superadmin_is_admin() -> None:
    assert Principal("a", Role.SUPERADMIN).is_admin
    for role in (Role.RIDER, Role.MERCHANT, Role.CUSTOMER, Role.SERVICE):
        assert not Principal("a", role).is_admin


def test_a_hand_signed_hs256_token_is_accepted() -> None:
    # Independent of pyjwt's encoder: what any HS256 library would produce.
    header, body = {"alg": "HS256", "typ": "JWT"}, claims(sub="X", role="customer")
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}"
    sig = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    assert decode_token(SECRET, f"{signing_input}.{b64(sig)}") == Principal("X", Role.CUSTOMER)


def test_wrong_secret_is_refused() -> None:
    refused(hs256(claims(), secret="another-secret-" + "z" * 64))


def test_tampered_claims_are_refused() -> None:
    head, _, sig = hs256(claims()).split(".")
    forged = b64(json.dumps(claims(role="superadmin")).encode())
    refused(f"{head}.{forged}.{sig}")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(alg: str) -> None:
    refused(hand_made({"alg": alg, "typ": "JWT"}, claims(role="superadmin")))


def test_alg_none_from_pyjwt_is_refused() -> None:
    refused(jwt.encode(claims(role="superadmin"), None, algorithm="none"))


def test_hs512_with_the_right_secret_is_refused() -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS512")
    assert "HS256" in refused(token)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256", "HS384"])
def test_other_algorithms_are_refused(alg: str) -> None:
    # An RS-style token whose "signature" is an HMAC with the secret (the classic key confusion).
    header = {"alg": alg, "typ": "JWT"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims()).encode())}"
    sig = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    refused(f"{signing_input}.{b64(sig)}")


def test_expired_is_refused() -> None:
    assert "expired" in refused(mint_token(SECRET, "rider", "R", ttl_s=60, now=1_000_000)).lower()
    assert "expired" in refused(hs256(claims(exp=1))).lower()


@pytest.mark.parametrize("missing", ["sub", "role", "exp"])
def test_missing_claims_are_refused_naming_them(missing: str) -> None:
    c = claims()
    del c[missing]
    assert missing in refused(hs256(c))


@pytest.mark.parametrize(
    "role", ["admin", "service", "Rider", "", "SUPERADMIN", 1, None, ["rider"]]
)
def test_unknown_roles_are_refused(role: object) -> None:
    c = claims()
    c["role"] = role
    refused(hs256(c))


@pytest.mark.parametrize("sub", [123, 1.5, True, ["RIDER-1"], {"id": "x"}, "", None])
def test_bad_subjects_are_refused(sub: object) -> None:
    c = claims()
    c["sub"] = sub
    refused(hs256(c))


@pytest.mark.parametrize("exp", ["tomorrow", None, [1]])
def test_malformed_exp_is_refused(exp: object) -> None:
    c = claims()
    c["exp"] = exp
    refused(hs256(c))


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b", "a.b.c", "Bearer x.y.z", "....", hs256(claims()) + "x"]
)
def test_garbage_is_refused(token: str) -> None:
    refused(token)


def test_require_roles() -> None:
    check = require_roles(Role.SUPERADMIN, Role.MERCHANT).dependency
    admin = Principal("a", Role.SUPERADMIN)
    merchant = Principal("m", Role.MERCHANT)
    assert asyncio.run(check(admin)) is admin
    assert asyncio.run(check(merchant)) is merchant
    for role in (Role.RIDER, Role.CUSTOMER):
        with pytest.raises(Forbidden):
            asyncio.run(check(Principal("x", role)))
