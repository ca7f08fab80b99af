"""The watcher's stream checks catch what the contract forbids, and pass a correct stream."""

from __future__ import annotations

from typing import Any

import pytest

from sim.checks import StreamCheck, check_history
from sim.geo import contract_eta_s, haversine_km

DROP = {"lat": 5.6037, "lng": -0.1869}


def view(seq: int, status: str, lat: float | None = 5.62, **extra: Any) -> dict[str, Any]:
    loc = None if lat is None else {"lat": lat, "lng": -0.1869, "timestamp": 1704067850}
    if status == "DELIVERED":
        eta: int | None = 0
    elif lat is None:
        eta = None
    else:
        eta = contract_eta_s(haversine_km(lat, -0.1869, DROP["lat"], DROP["lng"]), 30)
    return {
        "tracking_id": "TRK-x", "seq": seq, "status": status, "current_location": loc,
        "dropoff": DROP, "eta_seconds": eta, **extra,
    }  # fmt: skip


def good_stream() -> list[dict[str, Any]]:
    """seq 1 start; 2 location; 3 PICKED_UP; 4 IN_TRANSIT; 5, 6 moving; 7 DELIVERED."""
    msgs: list[dict[str, Any]] = [{"type": "initial_state", "data": view(1, "ASSIGNED", None)}]
    steps = [
        (2, "ASSIGNED", 5.63), (3, "PICKED_UP", 5.63), (4, "IN_TRANSIT", 5.63),
        (5, "IN_TRANSIT", 5.62), (6, "IN_TRANSIT", 5.61), (7, "DELIVERED", 5.6037),
    ]  # fmt: skip
    status = "ASSIGNED"
    for seq, st, lat in steps:
        msgs.append({"type": "location_update", "data": view(seq, st, lat)})
        if st != status:
            change = view(seq, st, lat, previous_status=status)
            msgs.append({"type": "status_change", "data": change})
            status = st
    return msgs


def run(msgs: list[dict[str, Any]], final_seq: int | None = 7) -> StreamCheck:
    check = StreamCheck("TRK-x")
    for m in msgs:
        check.feed(m)
    check.finish(final_seq)
    return check


def test_a_correct_stream_passes() -> None:
    check = run(good_stream())
    assert check.problems == 0, check.violations
    assert check.delivered
    assert (check.first_seq, check.last_seq, check.received, check.status_changes) == (1, 7, 6, 3)


def test_a_gap_is_caught() -> None:
    msgs = [
        m for m in good_stream() if not (m["type"] == "location_update" and m["data"]["seq"] == 5)
    ]
    check = run(msgs)
    assert check.gaps == 1
    assert any("gap" in v for v in check.violations)


def test_a_gap_marked_as_conflated_is_not_loss() -> None:
    msgs = [
        m for m in good_stream() if not (m["type"] == "location_update" and m["data"]["seq"] == 5)
    ]
    for m in msgs:
        if m["data"]["seq"] == 6:
            m["data"]["conflated"] = True
    check = run(msgs)
    assert (check.gaps, check.conflated, check.problems) == (0, 1, 0)


def test_a_lost_tail_is_caught_at_finish() -> None:
    msgs = good_stream()[:-3]  # stream stops after seq 5
    check = StreamCheck("TRK-x")
    for m in msgs:
        check.feed(m)
    assert check.finish(final_seq=7) == 2
    assert check.gaps == 2
    assert not check.delivered


def test_a_reordering_is_caught() -> None:
    msgs = good_stream()
    i5 = next(i for i, m in enumerate(msgs) if m["data"]["seq"] == 5)
    msgs[i5], msgs[i5 + 1] = msgs[i5 + 1], msgs[i5]  # 6 before 5
    check = run(msgs)
    assert check.out_of_order == 1


def test_a_duplicate_is_caught() -> None:
    msgs = good_stream()
    i5 = next(i for i, m in enumerate(msgs) if m["data"]["seq"] == 5)
    msgs.insert(i5 + 1, msgs[i5])
    assert run(msgs).duplicates == 1


def test_a_skipped_status_is_caught() -> None:
    msgs = [m for m in good_stream() if m["data"]["status"] != "PICKED_UP"]
    for m in msgs:  # renumber so that only the status sequence is wrong
        if m["data"]["seq"] > 3:
            m["data"]["seq"] -= 1
        if m["data"].get("previous_status") == "PICKED_UP":
            m["data"]["previous_status"] = "ASSIGNED"
    check = run(msgs, final_seq=6)
    assert check.gaps == 0
    assert check.status_errors >= 1
    assert any("ASSIGNED->IN_TRANSIT" in v for v in check.violations)


def test_a_backwards_status_is_caught() -> None:
    msgs = good_stream()
    for m in msgs:
        if m["data"]["seq"] == 5:
            m["data"]["status"] = "PICKED_UP"
    assert run(msgs).status_errors >= 1


def test_a_missing_status_change_is_caught() -> None:
    msgs = [
        m for m in good_stream() if not (m["type"] == "status_change" and m["data"]["seq"] == 3)
    ]
    check = run(msgs)
    assert check.status_errors == 1
    assert any("no status_change ASSIGNED->PICKED_UP" in v for v in check.violations)


def test_a_status_change_before_its_location_update_is_caught() -> None:
    msgs = good_stream()
    i = next(i for i, m in enumerate(msgs) if m["type"] == "status_change")
    msgs[i - 1], msgs[i] = msgs[i], msgs[i - 1]
    assert run(msgs).status_errors >= 1


def test_a_stream_that_does_not_end_delivered_is_not_delivered() -> None:
    check = run(good_stream()[:-1])  # the DELIVERED status_change never came
    assert not check.delivered
    assert check.status_errors == 1


def test_messages_before_initial_state_are_caught() -> None:
    assert run(good_stream()[1:], final_seq=None).protocol_errors >= 1


def test_a_wrong_eta_is_caught() -> None:
    msgs = good_stream()
    msgs[3]["data"]["eta_seconds"] += 120
    assert run(msgs).eta_errors == 1


def test_a_growing_eta_in_transit_is_caught() -> None:
    msgs = good_stream()
    for m in msgs:
        if m["data"]["seq"] == 6:  # move the rider away from the dropoff
            m["data"].update(view(6, "IN_TRANSIT", 5.70))
    check = run(msgs)
    assert any("eta grew" in v for v in check.violations)


def test_the_customers_phone_in_a_view_is_caught() -> None:
    msgs = good_stream()
    msgs[0]["data"]["phone"] = "+233240000000"
    assert run(msgs).phone_leaks == 1


def test_error_messages_and_unknown_types_are_protocol_errors() -> None:
    msgs = good_stream()
    msgs.insert(2, {"type": "error", "message": "boom"})
    msgs.insert(3, {"type": "surprise", "data": {}})
    assert run(msgs).protocol_errors == 2


@pytest.mark.parametrize("cut", [2, 5])
def test_reconnect_resumes_from_a_fresh_initial_state(cut: int) -> None:
    msgs = good_stream()
    check = StreamCheck("TRK-x")
    for m in msgs[:cut]:
        check.feed(m)
    check.reconnected()
    seen = check.last_seq
    assert seen is not None
    later = [m for m in msgs[cut:] if m["data"]["seq"] > seen + 1]
    snapshot = dict(later[0]["data"])
    snapshot["seq"] -= 1  # the state when the watcher came back
    check.feed({"type": "initial_state", "data": view(snapshot["seq"], "ASSIGNED", 5.63)})
    for m in later:
        check.feed(m)
    check.finish(7)
    assert check.gaps == 0
    assert check.out_of_order == 0


def _items(seqs: list[int], changes: dict[int, tuple[str, str]]) -> list[dict[str, Any]]:
    out = []
    status = "ASSIGNED"
    for s in seqs:
        prev = None
        if s in changes:
            prev, status = changes[s]
        out.append({"seq": s, "status": status, "previous_status": prev, "lat": 5.6, "lng": -0.18})
    return out


def test_history_that_covers_the_window_passes() -> None:
    items = _items([4, 5, 6, 7], {5: ("ASSIGNED", "PICKED_UP")})
    assert check_history(items, 3, 7) == []


def test_history_with_a_hole_or_disorder_or_bad_step_is_caught() -> None:
    assert check_history(_items([4, 6, 7], {}), 3, 7) == ["history misses seqs [5]"]
    assert "not strictly increasing" in check_history(_items([4, 6, 5, 7], {}), 3, 7)[0]
    bad = check_history(_items([4, 5], {5: ("ASSIGNED", "IN_TRANSIT")}), 3, 5)
    assert bad == ["history seq 5: status ASSIGNED->IN_TRANSIT"]
