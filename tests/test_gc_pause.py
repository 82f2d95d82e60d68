"""gc_pause.paused: the collector is off while any thread is inside, and back as it was after."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from piseduce.agent.gc_pause import paused


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    was = gc.isenabled()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_off_inside_and_on_after_even_on_error() -> None:
    gc.enable()
    with pytest.raises(RuntimeError), paused():
        assert not gc.isenabled()
        raise RuntimeError("the read failed")
    assert gc.isenabled()


def test_the_last_thread_out_enables_it() -> None:
    gc.enable()
    inside, release = threading.Event(), threading.Event()

    def other() -> None:
        with paused():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=other)
    t.start()
    assert inside.wait(10)
    with paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other thread is still inside
    release.set()
    t.join(10)
    assert gc.isenabled()


def test_a_collector_disabled_before_stays_disabled() -> None:
    gc.disable()
    with paused():
        pass
    assert not gc.isenabled()


def test_what_was_made_inside_goes_to_the_oldest_generation_unexamined() -> None:
    gc.enable()
    gc.collect()
    with paused():
        made = [[i] for i in range(5000)]  # lists: tracked until collected
    assert gc.get_count()[0] < 100  # no young collection of them pending
    oldest = {id(o) for o in gc.get_objects(generation=2)}
    assert all(id(x) in oldest for x in made)
    assert gc.get_freeze_count() == 0


def test_objects_frozen_by_someone_else_stay_frozen() -> None:
    gc.enable()
    sentinel = [object()]
    gc.freeze()
    try:
        with paused():
            made = [[i] for i in range(100)]
        collected = {id(o) for g in range(3) for o in gc.get_objects(generation=g)}
        assert id(sentinel) not in collected  # still in the permanent generation
        assert gc.get_freeze_count() > 0 and made
    finally:
        gc.unfreeze()
