"""``pia-server backup|restore|doctor`` (filled in by the operations work)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    return None
