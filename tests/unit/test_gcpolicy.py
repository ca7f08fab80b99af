"""When the API process freezes its long-lived objects (api/gcpolicy.py)."""

from __future__ import annotations

from api.gcpolicy import GcPolicy


class Sockets:
    def __init__(self) -> None:
        self.open = 0
        self.freezes: list[int] = []


def policy(s: Sockets, every: int = 500) -> GcPolicy:
    return GcPolicy(lambda: s.open, every, freeze=lambda: s.freezes.append(s.open))


def test_freezes_every_so_many_new_sockets() -> None:
    s = Sockets()
    p = policy(s)
    p.freeze()
    for n in range(0, 2001, 100):
        s.open = n
        p.check()
    assert s.freezes == [0, 500, 1000, 1500, 2000]


def test_growth_counts_from_the_lowest_point() -> None:
    s = Sockets()
    p = policy(s)
    s.open = 1000
    p.freeze()
    for n in (900, 400, 600, 899):  # closing sockets is not growth
        s.open = n
        p.check()
    assert s.freezes == [1000]
    s.open = 900  # 500 more than the low point of 400
    p.check()
    assert s.freezes == [1000, 900]


def test_a_steady_number_of_sockets_never_freezes_again() -> None:
    s = Sockets()
    p = policy(s)
    s.open = 10_000
    p.freeze()
    for _ in range(100):
        p.check()
    assert s.freezes == [10_000]
