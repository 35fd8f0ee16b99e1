"""The connection gate behind limits.max_connections (SPEC §7)."""

from __future__ import annotations

import asyncio

from balancer.listener import ConnectionGate


async def test_the_gate_waits_at_the_cap_and_opens_below_it() -> None:
    gate = ConnectionGate(2)
    await asyncio.wait_for(gate.below_cap(), 1)  # empty: no wait
    gate.opened()
    gate.opened()
    assert repr(gate) == "<ConnectionGate 2/2 open>"
    waiting = asyncio.ensure_future(gate.below_cap())
    await asyncio.sleep(0)  # one turn of the loop: the waiter starts and blocks
    assert not waiting.done()  # at the cap
    gate.closed()
    await asyncio.wait_for(waiting, 1)
    assert repr(gate) == "<ConnectionGate 1/2 open>"
