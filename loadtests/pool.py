"""Live deliveries shared by the riders and watchers of one locust process.

Push latency is measured inside one process: a rider notes, before it sends an update,
the time and the `seq` that update will get (the rider is the session's only writer, so
it is its last seen `seq` + 1); a watcher of the same delivery looks the received
`seq` up and subtracts. Both clocks are the same `time.perf_counter` of one process, so
no clock sync is involved; the figure is "rider starts the HTTP request" to "watcher
has the frame", which is what a customer experiences. Watchers therefore only watch
deliveries that riders of their own process drive.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# Enough to cover any push still in flight; older sends can no longer be matched.
REMEMBERED_SENDS = 256


@dataclass(eq=False)
class LiveDelivery:
    """One delivery a rider of this process drives, and when it sent each change."""

    tracking_id: str
    sent_at: dict[int, float] = field(default_factory=dict)
    watchers: int = 0
    finished: bool = False
    last_sent_seq: int = 0
    last_sent_at: float | None = None

    def record_send(self, seq: int, at: float) -> None:
        """The rider is about to send the change that will carry `seq`."""
        self.sent_at.pop(seq, None)  # re-insert so the dict stays in send order
        self.sent_at[seq] = at
        self.last_sent_seq = max(self.last_sent_seq, seq)
        self.last_sent_at = at
        while len(self.sent_at) > REMEMBERED_SENDS:
            del self.sent_at[next(iter(self.sent_at))]

    def send_time(self, seq: int) -> float | None:
        return self.sent_at.get(seq)


class DeliveryPool:
    """The live deliveries of this process, handed out to watchers evenly."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._live: dict[str, LiveDelivery] = {}
        self.started = 0
        self.finished = 0
        self.watching = 0
        self.peak_watching = 0
        self.watch_sessions = 0

    def seed(self, seed: int) -> None:
        self._rng.seed(seed)

    def open(self, tracking_id: str) -> LiveDelivery:
        delivery = LiveDelivery(tracking_id)
        self._live[tracking_id] = delivery
        self.started += 1
        return delivery

    def finish(self, delivery: LiveDelivery) -> None:
        """Delivered or abandoned: no new watchers, and present ones may leave."""
        if not delivery.finished:
            delivery.finished = True
            self.finished += 1
        self._live.pop(delivery.tracking_id, None)

    def live_count(self) -> int:
        return len(self._live)

    def any_live(self) -> LiveDelivery | None:
        if not self._live:
            return None
        return self._live[self._rng.choice(list(self._live))]

    def pick(self) -> LiveDelivery | None:
        """A live delivery with the fewest watchers (ties broken at random)."""
        if not self._live:
            return None
        fewest = min(d.watchers for d in self._live.values())
        candidates = [d for d in self._live.values() if d.watchers == fewest]
        return self._rng.choice(candidates)

    def attach(self, delivery: LiveDelivery) -> None:
        delivery.watchers += 1
        self.watching += 1
        self.watch_sessions += 1
        self.peak_watching = max(self.peak_watching, self.watching)

    def detach(self, delivery: LiveDelivery) -> None:
        delivery.watchers -= 1
        self.watching -= 1


# The one pool of a locust process: its riders fill it, its watchers draw from it.
SHARED = DeliveryPool(random.Random(0))
