"""Approaching and arrived: when to tell the customer the rider is about to arrive (pure).

Radar's trips go approaching -> arrived; Uber Direct's courier is "imminent" about a minute away;
HyperTrack's arrival radius is 30 m. Here a delivery is *approaching* once its ETA is at most a
threshold or the rider is within a radius of the dropoff, and *arrived* within the arrival radius.
Each fires at most once per delivery, and arrival implies approach (a rider seen first at the door
fires both, approach first).

GPS jitter must not make either fire early or twice (flap). Two things see to it:
- confirmation: a milestone fires on the `confirm`-th consecutive kept fix inside its zone (one
  fix that jumps into the zone is not enough), or on a single fix inside it that delivers;
- hysteresis: a fix only breaks the run of inside fixes when it is clearly outside, beyond the
  zone plus a band (`band_m`, or a quarter of the zone, whichever is larger); fixes in the band
  neither count nor reset it. Once fired, a milestone stays fired: the state never goes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Milestone(StrEnum):
    APPROACHING = "approaching"
    ARRIVED = "arrived"


@dataclass(frozen=True, slots=True)
class ProximityRules:
    """From settings; a radius or threshold of 0 never matches."""

    approach_eta_s: float = 60.0
    approach_radius_m: float = 300.0
    arrival_radius_m: float = 30.0
    confirm: int = 2
    band_m: float = 20.0
    band_eta_s: float = 15.0


@dataclass(frozen=True, slots=True)
class Proximity:
    """A delivery's progress towards its dropoff: what fired, and the runs of inside fixes that
    have not fired yet."""

    approached: bool = False
    arrived: bool = False
    near_run: int = 0  # consecutive fixes inside the approach zone
    door_run: int = 0  # consecutive fixes inside the arrival zone

    @property
    def milestone(self) -> Milestone | None:
        """What the view shows: the last milestone reached."""
        if self.arrived:
            return Milestone.ARRIVED
        return Milestone.APPROACHING if self.approached else None


START = Proximity()
NO_MILESTONES: tuple[Milestone, ...] = ()


def _run(run: int, inside: bool, away: bool) -> int:
    if inside:
        return run + 1
    return 0 if away else run


def step(
    state: Proximity,
    distance_m: float,
    eta_s: float | None,
    rules: ProximityRules,
    delivers: bool = False,
) -> tuple[Proximity, tuple[Milestone, ...]]:
    """The state after one kept fix at `distance_m` from the dropoff (ETA `eta_s`), and the
    milestones it fires, in order. `delivers`: this fix comes with DELIVERED."""
    if state.arrived:
        return state, NO_MILESTONES
    r_door = rules.arrival_radius_m
    at_door = distance_m <= r_door
    door_run = _run(state.door_run, at_door, distance_m > r_door + max(rules.band_m, r_door / 4))
    arrived = at_door and (door_run >= rules.confirm or delivers)
    approached = state.approached
    near_run = state.near_run
    if not approached:
        r_near, t_near = rules.approach_radius_m, rules.approach_eta_s
        near = distance_m <= r_near or (eta_s is not None and eta_s <= t_near)
        away = distance_m > r_near + max(rules.band_m, r_near / 4) and (
            eta_s is None or eta_s > t_near + max(rules.band_eta_s, t_near / 4)
        )
        near_run = _run(near_run, near, away)
        approached = arrived or (near and (near_run >= rules.confirm or delivers))
    fired: tuple[Milestone, ...] = NO_MILESTONES
    if approached and not state.approached:
        fired = (Milestone.APPROACHING,)
    if arrived:
        fired = (*fired, Milestone.ARRIVED)
    if not fired and (near_run, door_run) == (state.near_run, state.door_run):
        return state, NO_MILESTONES
    return Proximity(approached, arrived, near_run, door_run), fired
