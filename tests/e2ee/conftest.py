"""E2EE test fixtures: reference clients (one device each) for fresh users."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from conftest import TestUser, UserFactory
from support.e2ee_client import E2eeClient

E2eeFactory = Callable[..., Awaitable[E2eeClient]]


@pytest.fixture
def new_device(client: httpx.AsyncClient, make_user: UserFactory) -> E2eeFactory:
    """``await new_device()``: a first device of a new user; ``new_device(user=u)`` for u's."""

    async def factory(user: TestUser | None = None, **kwargs: Any) -> E2eeClient:
        user = user or await make_user()
        return E2eeClient(http=client, token=user.token, user_id=user.id, **kwargs)

    return factory


def ctx_of(app: FastAPI) -> Any:
    return app.state.ctx
