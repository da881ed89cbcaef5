"""Garbage-collector settings for a serving process.

Python's full (oldest-generation) collection walks every tracked object. After start-up that is
several hundred thousand objects that live as long as the process (modules, routes, table
definitions, validators): the capacity benchmark measured full collections of 100-145 ms every
few seconds under load, most of its p99 latency. Freezing what exists once the app is built
takes those objects out of every later collection; reference counting still frees them.

The youngest generation's threshold goes from 700 to 10,000 container allocations: at 700 the
objects of requests in flight were traversed (and promoted, and traversed again) some forty
times a second, 5% of the CPU at 1,000 simulated clients; at 10,000 a collection runs every
few seconds and takes 10-20 ms. Cyclic garbage waits a little longer: a few MB at most.

Called by the commands that serve, never by tests (which build many apps in one process).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000


def freeze_startup_objects() -> None:
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, max(middle, 20), max(old, 50))
