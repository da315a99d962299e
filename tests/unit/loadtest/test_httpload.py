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


async def test_the_probe_brackets_the_counted_window() -> None:
    """`probe` runs once when counting starts (after the warm-up) and once when it stops, so CPU
    read through it covers exactly the requests that were counted."""
    import asyncio
    import time

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    calls: list[float] = []

    def probe() -> float:
        calls.append(time.perf_counter())
        return float(len(calls))

    started = time.perf_counter()
    async with server:
        res = await run_closed_loop(
            "127.0.0.1", port, [b"GET / HTTP/1.1\r\n\r\n"], 2, 0.3, warmup_s=0.2, probe=probe
        )
    assert res.probed == (1.0, 2.0)
    # (the event loop's timers may fire up to a clock tick early)
    assert calls[0] - started >= 0.19 and calls[1] - calls[0] >= 0.29
    assert res.ok > 0 and res.errors == 0


def test_the_main_threads_cpu_is_read_apart_from_the_process() -> None:
    """`process_cpu_s(pid, thread)` reads one thread's CPU (the server's event loop is its main
    thread): CPU burnt on another thread counts for the process and not for the main thread."""
    import os
    import threading
    import time

    from loadtest.bench import cpu_sample, process_cpu_s

    pid = os.getpid()

    def burn() -> None:
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass

    process0, main0 = process_cpu_s(pid), process_cpu_s(pid, pid)
    worker = threading.Thread(target=burn)
    worker.start()
    worker.join()  # the main thread sleeps here
    process1, main1 = process_cpu_s(pid), process_cpu_s(pid, pid)
    assert process1 - process0 >= 0.25
    assert main1 - main0 < 0.1
    server, client, loop = cpu_sample(pid)
    assert loop <= server and client > 0
    assert cpu_sample(None)[0] == 0.0 and cpu_sample(None)[2] == 0.0
