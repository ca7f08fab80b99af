"""What the outbox dispatcher does with an attempt's outcome, and when it tries again (pure).

Retries use exponential backoff with full jitter (the delay before attempt n+1 is drawn
uniformly from [0, min(cap, base * 2**(n-1))]), so a receiver coming back after an outage is
not hit by every session at the same instant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

BASE_S = 0.5
CAP_S = 60.0
# 408 and 429 ask the caller to come back later; parking a payment release because the
# receiver throttled us would lose it, so these are retried like 5xx.
RETRYABLE_4XX = frozenset({408, 429})
_MAX_EXPONENT = 30  # 0.5 * 2**30 s is far past any cap; avoids float overflow on long outages


class Outcome(StrEnum):
    DONE = "done"
    RETRY = "retry"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Full-jitter exponential backoff."""

    base_s: float = BASE_S
    cap_s: float = CAP_S

    def ceiling(self, failures: int) -> float:
        """The longest wait after the `failures`-th failed attempt (1 for the first)."""
        exponent = min(max(failures, 1) - 1, _MAX_EXPONENT)
        return min(self.cap_s, self.base_s * float(2.0**exponent))

    def delay(self, failures: int, rng: random.Random) -> float:
        return rng.uniform(0.0, self.ceiling(failures))


def classify(status: int | None) -> Outcome:
    """The outcome of one attempt: `status` is the HTTP status, None when nothing came back
    (connection refused or dropped, timeout)."""
    if status is None:
        return Outcome.RETRY
    if 200 <= status < 300:
        return Outcome.DONE
    if status in RETRYABLE_4XX:
        return Outcome.RETRY
    if 300 <= status < 500:
        # 4xx: the receiver refuses this call and will keep refusing it. 3xx: we do not follow
        # redirects for a POST carrying a bearer token, so it is a misconfigured URL.
        return Outcome.DEAD
    return Outcome.RETRY


def decide(status: int | None, attempts: int, max_attempts: int) -> Outcome:
    """`classify`, with the attempt cap: `attempts` counts this one; `max_attempts` 0 is no cap."""
    outcome = classify(status)
    if outcome is Outcome.RETRY and max_attempts > 0 and attempts >= max_attempts:
        return Outcome.DEAD
    return outcome


def describe(status: int | None, error: str | None = None) -> str:
    """A short reason to store with a retry or dead letter (never the body or the token)."""
    if status is None:
        return error or "no answer"
    return f"HTTP {status}" + (f": {error}" if error else "")
