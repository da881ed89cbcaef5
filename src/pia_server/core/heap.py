"""Garbage-collector settings for a serving process.

Python's full (oldest-generation) collection walks every tracked object. After start-up that is
several hundred thousand objects that live as long as the process (modules, routes, table
definitions, validators): the capacity benchmark measured full collections of 100-145 ms every
few seconds under load, which were most of its p99 latency. Freezing what exists once the app
is built takes those objects out of every later collection; reference counting still frees
them as usual. Called by the commands that serve, never by tests (which build many apps).
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    gc.collect()
    gc.freeze()
