"""A real Prometheus (Debian's build, unpacked by deploy/tools/install.sh) scrapes the running service on
loopback and evaluates every dashboard, adapter and KEDA query: no errors, and data where data exists."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.conftest import Manifests
from tests.deploy.live_service import LiveService
from tests.deploy.queries import Query, all_queries

SCRAPE_INTERVAL_S = 0.5
STARTUP_TIMEOUT_S = 30.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def prometheus(
    prometheus_bin: Path, live_service: LiveService, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("prometheus")
    target = live_service.url.removeprefix("http://")
    # Labels as a ServiceMonitor would attach them, so the KEDA and adapter matchers select the series.
    config = {
        "global": {"scrape_interval": f"{int(SCRAPE_INTERVAL_S * 1000)}ms"},
        "scrape_configs": [
            {
                "job_name": "bertserve",
                "scrape_timeout": "400ms",
                "static_configs": [
                    {
                        "targets": [target],
                        "labels": {"namespace": "serving", "service": "bertserve", "pod": "bertserve-0"},
                    }
                ],
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (workdir / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            str(prometheus_bin),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return proc.poll() is not None  # exited: stop waiting, the assertion below reports it

        wait_for(ready, STARTUP_TIMEOUT_S, "Prometheus to start")
        assert proc.poll() is None, (workdir / "prometheus.log").read_text()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def instant_query(prometheus: str, promql: str) -> dict[str, Any]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5)
    body: dict[str, Any] = response.json()
    return body


def test_every_query_evaluates_on_scraped_data(
    prometheus: str, live_service: LiveService, render: Callable[..., Manifests]
) -> None:
    from tests.deploy.live_service import drive_traffic

    # rate() needs two samples per series inside its window: keep traffic flowing across a few scrapes.
    def scraped_twice() -> bool:
        result = instant_query(prometheus, "count_over_time(bertserve_requests_total[1m])")["data"]["result"]
        return bool(result) and min(float(r["value"][1]) for r in result) >= 3

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not scraped_twice():
        assert time.monotonic() < deadline, "Prometheus did not scrape the service"
        drive_traffic(live_service)
        time.sleep(SCRAPE_INTERVAL_S)
    drive_traffic(live_service)
    time.sleep(2 * SCRAPE_INTERVAL_S)

    up = instant_query(prometheus, 'up{job="bertserve"}')["data"]["result"]
    assert [r["value"][1] for r in up] == ["1"]

    failures: list[str] = []
    empty: list[Query] = []
    queries = all_queries(render)
    for query in queries:
        body = instant_query(prometheus, query.promql)
        if body.get("status") != "success":
            failures.append(f"{query.origin}: {body.get('errorType')}: {body.get('error')}\n  {query.promql}")
        elif not body["data"]["result"]:
            empty.append(query)
    assert not failures, "Prometheus rejected queries:\n" + "\n".join(failures)
    # The traffic exercised every stage, including rejections: every query must see data.
    assert not empty, "queries with no data:\n" + "\n".join(f"{q.origin}: {q.promql}" for q in empty)
    print(f"Prometheus evaluated {len(queries)} queries, all with data")
