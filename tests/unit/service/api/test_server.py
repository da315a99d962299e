"""`bertserve.service.api.server` helpers that need no server."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from bertserve.service.api import server as main
from bertserve.service.api.server import ExitWatchdog, is_loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("bertserve.internal", False),  # a name may resolve anywhere: warn
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def _watch(watchdog: ExitWatchdog, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    codes: list[int] = []
    done = threading.Event()

    def fake_exit(code: int) -> None:
        codes.append(code)
        done.set()

    monkeypatch.setattr(main.os, "_exit", fake_exit)
    watchdog.start()
    watchdog.done = done  # type: ignore[attr-defined]
    return codes


def test_the_watchdog_ends_an_exit_that_overruns_the_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    watchdog = ExitWatchdog()
    codes = _watch(watchdog, monkeypatch)
    time.sleep(0.1)
    assert codes == []  # asleep until a stop signal
    start = time.monotonic()
    watchdog.arm(time.monotonic() + 0.3)
    assert watchdog.done.wait(2)  # type: ignore[attr-defined]
    assert codes == [main.EXIT_SERVER]
    assert 0.25 <= time.monotonic() - start < 1.0


def test_a_second_signal_exits_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    watchdog = ExitWatchdog()
    codes = _watch(watchdog, monkeypatch)
    watchdog.arm(time.monotonic() + 60)
    start = time.monotonic()
    watchdog.force(signal.SIGTERM)
    assert watchdog.done.wait(2)  # type: ignore[attr-defined]
    assert codes == [128 + signal.SIGTERM]
    assert time.monotonic() - start < 0.5
