"""Routing: a stable shard per key, and unguessable tracking ids drawn to land on a given shard."""

from __future__ import annotations

import base64
import collections
import os
import random
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.domain.routing import RANDOM_BYTES, TRACKING_ID_PREFIX, new_tracking_id, shard_of

ROOT = Path(__file__).resolve().parents[2]
URL_SAFE_ID = re.compile(r"^TRK-[A-Za-z0-9_-]{20,}$")


def seeded_token(seed: int) -> Callable[[int], str]:
    rng = random.Random(seed)

    def token(nbytes: int) -> str:
        return base64.urlsafe_b64encode(rng.randbytes(nbytes)).rstrip(b"=").decode()

    return token


# Hypothesis' per-example deadline is a wall-clock assertion; tests check behaviour only.
@settings(deadline=None)
@given(st.text(max_size=50), st.integers(min_value=1, max_value=256))
def test_shard_of_is_in_range_and_stable(key: str, n: int) -> None:
    first = shard_of(key, n)
    assert 0 <= first < n
    assert all(shard_of(key, n) == first for _ in range(3))


def test_shard_of_is_the_same_in_another_process() -> None:
    # Unlike hash(), the placement must agree between API processes and shard actors.
    keys = ["ORD-1", "ORD-12345", "TRK-abcdefghijklmnopqrst", "ünïcødé", ""]
    code = (
        "import sys; from engine.domain.routing import shard_of; "
        "print([shard_of(k, n) for k in sys.argv[1:] for n in (2, 7, 64)])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *keys],
        check=True, capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    ).stdout  # fmt: skip
    assert out.strip() == str([shard_of(k, n) for k in keys for n in (2, 7, 64)])


def test_shard_of_handles_lone_surrogates() -> None:
    assert 0 <= shard_of("ORD-\udcff", 4) < 4


def test_shard_of_spreads_keys_evenly() -> None:
    n = 8
    counts = collections.Counter(shard_of(f"ORD-{i}", n) for i in range(8000))
    assert set(counts) == set(range(n))
    assert all(800 <= c <= 1200 for c in counts.values())


@pytest.mark.parametrize("n_shards", [1, 2, 3, 8, 16])
def test_new_tracking_id_lands_on_the_requested_shard(n_shards: int) -> None:
    for shard in range(n_shards):
        for _ in range(5):
            tid = new_tracking_id(shard, n_shards)
            assert shard_of(tid, n_shards) == shard


def test_new_tracking_id_shape() -> None:
    for _ in range(200):
        tid = new_tracking_id(1, 4)
        assert tid.startswith(TRACKING_ID_PREFIX)
        assert URL_SAFE_ID.match(tid), tid


def test_at_least_96_random_bits() -> None:
    assert RANDOM_BYTES * 8 >= 96


def test_ids_do_not_repeat() -> None:
    ids = [new_tracking_id(0, 2) for _ in range(2000)]
    assert len(set(ids)) == len(ids)


def test_the_token_source_is_injectable_and_deterministic() -> None:
    a = [new_tracking_id(s, 4, seeded_token(7)) for s in range(4)]
    b = [new_tracking_id(s, 4, seeded_token(7)) for s in range(4)]
    assert a == b
    assert [shard_of(t, 4) for t in a] == [0, 1, 2, 3]
    assert all(URL_SAFE_ID.match(t) for t in a)


def test_the_token_is_asked_for_the_configured_number_of_bytes() -> None:
    asked: list[int] = []

    def token(nbytes: int) -> str:
        asked.append(nbytes)
        return "x" * 20

    assert new_tracking_id(0, 1, token) == "TRK-" + "x" * 20
    assert asked == [RANDOM_BYTES]
