"""Load generators refuse anything but loopback targets."""

from __future__ import annotations

import pytest

from loadtest.httpload import check_loopback, check_loopback_url, run_closed_loop


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "localhost", "LOCALHOST", "::1", "[::1]"])
def test_loopback_hosts_are_accepted(host: str) -> None:
    check_loopback(host)


@pytest.mark.parametrize(
    "host", ["10.0.0.1", "192.168.1.20", "0.0.0.0", "example.com", "localhost.example.com", "::", "8.8.8.8"]
)
def test_other_hosts_are_refused(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        check_loopback(host)


def test_urls_are_checked_by_their_host() -> None:
    assert check_loopback_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert check_loopback_url("http://[::1]:9000") == "http://[::1]:9000"
    with pytest.raises(ValueError, match="loopback"):
        check_loopback_url("http://api.example.com:8000")
    with pytest.raises(ValueError, match="base URL"):
        check_loopback_url("127.0.0.1:8000")


async def test_the_load_loops_refuse_before_connecting() -> None:
    with pytest.raises(ValueError, match="loopback"):
        await run_closed_loop("10.1.2.3", 80, [b"GET / HTTP/1.1\r\n\r\n"], 1, 0.1)
