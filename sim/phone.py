"""What a rider's phone sends, planned up front from the delivery's fixes and a seed.

A clean phone sends each fix of the plan as it is taken. A noisy one (the `qa-quality` scenario)
behaves as phones do in the field, each fault injected at a seeded rate on fixes that carry no
status change:
- a GPS *jump*: a fix kilometres away, taken between two real ones (the server must drop it as
  too fast);
- a *duplicate*: the same fix sent twice (dropped as a duplicate);
- a *late* fix: one overtaken by the next (kept into the history only);
- an *offline* spell (fault `rider_offline`): fixes buffered while the phone has no network,
  sent as one batch, oldest first, once it is back.
With device times on, each fix carries `recorded_at`: its time on the simulated clock, shifted so
the trip ends when the rider starts riding it (compressed trips are then never in the future).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from sim.plan import DeliveryPlan, Update

KINDS = ("fix", "jump", "duplicate", "late", "batch")
DROPPED = ("jump", "duplicate")  # kinds the server must drop
_QUIET_START = 2  # no noise before the server knows where the rider is
_JUMP_KM = (3.0, 8.0)


@dataclass(frozen=True)
class Noise:
    jump_ratio: float = 0.0
    duplicate_ratio: float = 0.0
    late_ratio: float = 0.0
    offline_after: int | None = None  # buffer fixes from this index of the plan ...
    offline_fixes: int = 0  # ... this many of them

    def __post_init__(self) -> None:
        total = self.jump_ratio + self.duplicate_ratio + self.late_ratio
        if min(self.jump_ratio, self.duplicate_ratio, self.late_ratio) < 0 or total > 0.5:
            raise ValueError("noise ratios must be >= 0 and add up to at most 0.5")


@dataclass(frozen=True)
class Send:
    """One message the phone sends at simulated time `t_s`: a fix, or a batch of them."""

    t_s: float
    fixes: tuple[Update, ...]
    kind: str

    @property
    def dropped(self) -> bool:
        """The server must drop it (only single fixes are injected noise)."""
        return self.kind in DROPPED


def schedule(plan: DeliveryPlan, seed: int, noise: Noise) -> list[Send]:
    """The phone's sends for `plan`, in the order it makes them."""
    rng = random.Random(f"phone:{seed}:{plan.index}")
    ups = plan.updates
    out: list[Send] = []
    i = 0
    while i < len(ups):
        u = ups[i]
        if noise.offline_after is not None and i == noise.offline_after and noise.offline_fixes:
            buffered = ups[i : i + noise.offline_fixes]
            out.append(Send(buffered[-1].t_s, tuple(buffered), "batch"))
            i += len(buffered)
            continue
        quiet = u.status is not None or i < _QUIET_START
        r = rng.random() if not quiet else 1.0
        nxt = ups[i + 1] if i + 1 < len(ups) else None
        if r < noise.jump_ratio:
            out.append(Send(u.t_s, (_jump(ups[i - 1], u, rng),), "jump"))
            out.append(Send(u.t_s, (u,), "fix"))
        elif r < noise.jump_ratio + noise.duplicate_ratio:
            out.append(Send(u.t_s, (u,), "fix"))
            out.append(Send(u.t_s, (u,), "duplicate"))
        elif (r < noise.jump_ratio + noise.duplicate_ratio + noise.late_ratio
              and nxt is not None and nxt.status is None and not _offline_at(noise, i + 1)):
            out.append(Send(nxt.t_s, (nxt,), "fix"))
            out.append(Send(nxt.t_s, (u,), "late"))
            i += 1
        else:
            out.append(Send(u.t_s, (u,), "fix"))
        i += 1
    return out


def _offline_at(noise: Noise, i: int) -> bool:
    return noise.offline_after is not None and i == noise.offline_after


def _jump(before: Update, at: Update, rng: random.Random) -> Update:
    """A fix kilometres from the rider, taken between `before` and `at`."""
    km = rng.uniform(*_JUMP_KM)
    bearing = rng.uniform(0, 2 * math.pi)
    lat = at.lat + math.degrees(km * math.cos(bearing) / 6371.0)
    lng = at.lng + math.degrees(km * math.sin(bearing) / (6371.0 * math.cos(math.radians(at.lat))))
    return Update(round((before.t_s + at.t_s) / 2, 3), lat, lng)
