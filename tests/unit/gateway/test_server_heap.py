"""`payhub serve` freezes what start-up built, so that full collections under load stay short."""

from __future__ import annotations

import gc
import weakref

from gateway.server import freeze_startup_heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_start_up_objects_leave_the_collectors_walk() -> None:
    built = [[n] for n in range(100)]  # tracked objects, as the app's routes, rules and codecs are
    gone = weakref.ref(Node())  # start-up's garbage, held alive by its own cycle
    try:
        freeze_startup_heap()
        walked = {id(o) for o in gc.get_objects()}
        assert not walked & {id(item) for item in built}  # frozen: no collection walks them again
        assert gc.get_freeze_count() >= len(built)
        assert gone() is None  # collected before the freeze, not kept for the process's life
    finally:
        gc.unfreeze()  # this test process goes on to run other tests
