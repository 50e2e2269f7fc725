"""The pass's byte budget lets waiting sources through one at a time, in order.

Sources waiting for room used to be woken all at once on every release and
all but one queued again: with the store behind, 31 resumptions per source.
These drive ``_ByteBudget`` directly on an event loop, as the ingest's
runners do: ``room()``, then ``take`` without yielding, later ``give_back``.
"""

from __future__ import annotations

import asyncio

import pytest

from aggregator.ingest import _ByteBudget


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_release_lets_the_waiters_through_in_order_and_only_as_many_as_fit() -> None:
    async def scenario() -> tuple[list[int], int, int]:
        budget = _ByteBudget(100)
        budget.take(100)  # full: everyone after this waits
        passed: list[int] = []

        async def source(index: int) -> None:
            await budget.room()
            budget.take(40)  # what the runner does right after, without yielding
            passed.append(index)

        tasks = [asyncio.create_task(source(i)) for i in range(20)]
        await settle()
        assert passed == []
        budget.give_back(100)  # room for 40 + 40 + 40 (the third goes over: held was < limit)
        await settle()
        first_round = list(passed)
        wakeups = budget.wakeups
        for _ in range(len(tasks)):
            budget.give_back(40)
            await settle()
        await asyncio.gather(*tasks)
        return first_round, wakeups, budget.wakeups

    first_round, wakeups, total = asyncio.run(scenario())
    assert first_round == [0, 1, 2]
    # Each waiter was resumed once to pass, plus at most one resumption that
    # found the room taken: never the whole line on every release.
    assert wakeups <= 4
    assert total <= 2 * 20


def test_a_new_arrival_does_not_jump_the_line() -> None:
    async def scenario() -> list[str]:
        budget = _ByteBudget(100)
        budget.take(100)
        order: list[str] = []

        async def source(name: str) -> None:
            await budget.room()
            budget.take(100)
            order.append(name)

        early = asyncio.create_task(source("early"))
        await settle()

        async def late() -> None:
            # Room frees up and, in the same turn of the loop (before the woken
            # "early" has run), a new source asks for it: it must queue.
            budget.give_back(100)
            await source("late")

        last = asyncio.create_task(late())
        await settle()
        assert order == ["early"]
        budget.give_back(100)
        await asyncio.gather(early, last)
        return order

    assert asyncio.run(scenario()) == ["early", "late"]


def test_a_waiter_cancelled_after_its_wake_passes_the_wake_on() -> None:
    async def scenario() -> bool:
        budget = _ByteBudget(100)
        budget.take(100)
        second_passed = asyncio.Event()

        async def second() -> None:
            await budget.room()
            second_passed.set()

        first = asyncio.create_task(budget.room())
        other = asyncio.create_task(second())
        await settle()
        budget.give_back(100)  # wakes the first in line...
        first.cancel()  # ...which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second_passed.wait(), 5)
        await other
        return budget.held < budget.limit

    assert asyncio.run(scenario())


def test_no_waiting_while_there_is_room_and_nobody_in_line() -> None:
    async def scenario() -> int:
        budget = _ByteBudget(100)
        for _ in range(50):
            await budget.room()
            budget.take(1)
        return budget.wakeups

    assert asyncio.run(scenario()) == 0
