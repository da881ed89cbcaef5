"""Where every domain's tables are gathered, so migrations and tests see the whole schema."""

from __future__ import annotations

import importlib

# Each domain keeps its tables in its own ``storage`` module on the shared metadata.
TABLE_MODULES = (
    "pia_server.core.audit",
    "pia_server.auth.storage",
    "pia_server.sync.storage",
    "pia_server.e2ee.storage",
    "pia_server.ai.storage",
)


def import_all_tables() -> None:
    for name in TABLE_MODULES:
        importlib.import_module(name)
