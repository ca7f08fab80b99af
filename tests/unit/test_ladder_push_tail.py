"""The locust watcher's end of stream: a lost last push is a failure, not a silent success."""

from __future__ import annotations

import gc

from loadtests.pool import LiveDelivery
from loadtests.push import LOST_TAIL, Acks, PushCursor


def watching(*sends: int, initial: int = 1) -> PushCursor:
    """A watcher that got `initial` in its initial_state, of a delivery whose rider sent `sends`
    (seq n at time 10 + n)."""
    d = LiveDelivery("TRK-tail")
    for seq in sends:
        d.record_send(seq, 10.0 + seq)
    return PushCursor(d, initial)


def test_acknowledgements_keep_the_highest_seq_per_delivery() -> None:
    acks = Acks()
    a, b = LiveDelivery("TRK-a"), LiveDelivery("TRK-b")
    assert acks.last(a) is None
    acks.record(a, 3)
    acks.record(a, 2)  # a late answer for an earlier request does not move it back
    acks.record(b, 7)
    assert (acks.last(a), acks.last(b)) == (3, 7)


def test_acknowledgements_are_forgotten_with_their_delivery() -> None:
    acks = Acks()
    d = LiveDelivery("TRK-gone")
    acks.record(d, 4)
    del d
    gc.collect()
    assert len(acks._last) == 0


def test_a_stream_that_ends_with_every_acknowledged_push_lost_nothing() -> None:
    cursor = watching(2, 3)
    cursor.location_update({"seq": 2}, 12.5)
    cursor.location_update({"seq": 3}, 13.5)
    assert cursor.lost_tail(3) is None
    assert cursor.lost_tail(None) is None  # nothing acknowledged yet: nothing owed


def test_a_stream_that_ends_before_the_last_acknowledged_push_lost_its_tail() -> None:
    cursor = watching(2, 3, 4)
    cursor.location_update({"seq": 2}, 12.5)
    problem = cursor.lost_tail(4)
    assert problem is not None
    assert problem.name == LOST_TAIL
    # Failure messages carry no numbers, so locust groups them into one entry.
    assert not any(c.isdigit() for c in problem.message)


def test_the_delivering_change_is_owed_even_before_its_acknowledgement() -> None:
    # The push can beat the rider's HTTP answer: the DELIVERED status_change's seq is the end.
    cursor = watching(2, 3)
    cursor.location_update({"seq": 2}, 12.5)
    outcomes, keep = cursor.message(
        {"type": "status_change", "data": {"status": "DELIVERED", "seq": 3}}, 13.5)
    assert (outcomes, keep) == ([], False)
    problem = cursor.lost_tail(2)
    assert problem is not None
    assert problem.name == LOST_TAIL
    cursor.location_update({"seq": 3}, 13.6)
    assert cursor.lost_tail(2) is None


def test_a_finished_delivery_waits_for_a_fresh_push_but_not_for_an_overdue_one() -> None:
    cursor = watching(2, 3)  # seq 3 sent at 13.0
    cursor.location_update({"seq": 2}, 12.5)
    assert not cursor.tail_settled(3, now=20.0, patience_s=10.0)
    assert cursor.tail_settled(3, now=23.5, patience_s=10.0)
    assert cursor.lost_tail(3) is not None
    assert cursor.tail_settled(2, now=20.0, patience_s=10.0)  # already seen
    assert cursor.tail_settled(None, now=20.0, patience_s=10.0)
