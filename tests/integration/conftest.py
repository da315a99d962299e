"""The in-process app harness every integration suite shares (tests/helpers/asgi.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.helpers.asgi import AppStarter


@pytest.fixture
async def start_app() -> AsyncIterator[AppStarter]:
    starter = AppStarter()
    yield starter
    await starter.close()
