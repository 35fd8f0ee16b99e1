"""The breaker's state machine, driven as the completion hook drives it (real loop, real time)."""

from __future__ import annotations

import asyncio

from balancer.breaker import Breaker

from support import eventually


async def make(threshold: int = 3, reset: float = 0.2) -> tuple[Breaker, list[str]]:
    changes: list[str] = []
    breaker = Breaker(
        "app1",
        threshold,
        reset,
        loop=asyncio.get_running_loop(),
        on_change=lambda: changes.append(breaker.state),
    )
    return breaker, changes


async def test_consecutive_failures_open_it_and_a_success_resets_the_count() -> None:
    breaker, _ = await make()
    for ok in (False, False, True, False, False):
        breaker.record(ok)
    assert breaker.state == "closed" and breaker.consecutive_failures == 2
    breaker.record(False)
    assert breaker.state == "open" and not breaker.admits_new
    assert repr(breaker) == "<Breaker app1 open failures=3>"
    breaker.close()


async def test_half_open_admits_one_trial_and_its_success_closes() -> None:
    breaker, changes = await make(threshold=1)
    breaker.record(False)
    await eventually(lambda: breaker.state == "half_open", timeout=2)
    assert breaker.admits_new
    assert breaker.begin() is True  # the trial
    assert not breaker.admits_new  # nobody else meanwhile
    assert breaker.begin() is False
    breaker.record(True)
    assert breaker.state == "closed" and breaker.admits_new
    assert changes[:2] == ["open", "half_open"] and changes[-1] == "closed"


async def test_failed_trial_opens_again_and_a_cancelled_one_lets_another_try() -> None:
    breaker, _ = await make(threshold=1)
    breaker.record(False)
    await eventually(lambda: breaker.state == "half_open", timeout=2)
    breaker.begin()
    breaker.abandon_trial()
    assert breaker.admits_new and breaker.state == "half_open"
    breaker.begin()
    breaker.record(False)
    assert breaker.state == "open"
    await eventually(lambda: breaker.state == "half_open", timeout=2)
    breaker.close()
