"""Checks of the built CPU images and of the compose stack on a real engine (podman), for `make image-check`.

    python deploy/tools/container_check.py image bertserve:cpu                         # demo baked in
    python deploy/tools/container_check.py image bertserve:cpu-nomodels --repo DIR --backend openvino-cpu
    python deploy/tools/container_check.py compose --override deploy/images/compose.stand-ins.yaml

Each check prints one PASS/FAIL line; the exit status is the number of failures (capped). Standard library
only, loopback only, and every container this script starts is removed again, on failure too (the caller's
trap removes what a killed run leaves, by the label below).

What `image` checks on one running container: ready within a bound; the README's classify and ner examples
answer correctly (labels, entity groups and exact spans); the process runs as a non-root uid; the root
filesystem is read-only (a write outside /tmp fails, /tmp works); the image holds no torch, transformers or
optimum; its HEALTHCHECK passes; and SIGTERM under load from 16 concurrent clients answers every request
the service accepted (200, 503 once draining, 504 past its deadline: never a dropped connection) and
exits 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LABEL = "org.bertserve.image-check=1"  # on every container started here; the caller's trap removes them
READY_BOUND_S = 60.0
CLASSIFY_EXAMPLE = {
    "I absolutely loved this movie, the acting was superb.": "POSITIVE",
    "What a waste of time and money.": "NEGATIVE",
}
NER_TEXT = "Angela Merkel met Emmanuel Macron in Paris to talk about Airbus."
NER_EXPECTED = [("PER", "Angela Merkel"), ("PER", "Emmanuel Macron"), ("LOC", "Paris"), ("ORG", "Airbus")]
FORBIDDEN = ("torch", "transformers", "optimum")
LOAD_CLIENTS = 16


@dataclass
class Report:
    failures: int = 0
    notes: list[str] = field(default_factory=list)

    def check(self, ok: bool, label: str, detail: str = "") -> bool:
        print(f"{'PASS' if ok else 'FAIL'} {label}{': ' + detail if detail else ''}", flush=True)
        self.failures += not ok
        return ok


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])}: {last_line(result.stderr)}")
    return result


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def http(method: str, url: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
    """(status, parsed JSON or text); raises OSError when no HTTP answer comes back."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_until(predicate: Callable[[], bool], bound_s: float, step_s: float = 0.25) -> float | None:
    """Seconds until `predicate` held, or None when `bound_s` ran out."""
    start = time.monotonic()
    while time.monotonic() - start < bound_s:
        try:
            if predicate():
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(step_s)
    return None


def ready(base: str) -> bool:
    return http("GET", f"{base}/health/ready", timeout=2)[0] == 200


# --- answers -------------------------------------------------------------------------------------------


def check_classify(report: Report, base: str, model: str, label: str) -> None:
    texts = list(CLASSIFY_EXAMPLE)
    status, body = http("POST", f"{base}/v1/models/{model}/classify", {"inputs": texts, "top_k": 1})
    if status != 200:
        report.check(False, f"{label}: classify answers 200", f"{status} {str(body)[:200]}")
        return
    got = [(result[0]["label"], round(result[0]["score"], 3)) for result in body["results"]]
    want = list(CLASSIFY_EXAMPLE.values())
    report.check([g[0] for g in got] == want, f"{label}: classify README examples", f"{got}, want {want}")


def check_ner(report: Report, base: str, model: str, label: str) -> None:
    status, body = http(
        "POST", f"{base}/v1/models/{model}/ner", {"inputs": NER_TEXT, "aggregation": "simple"}
    )
    if status != 200:
        report.check(False, f"{label}: ner answers 200", f"{status} {str(body)[:200]}")
        return
    (entities,) = body["results"]
    got = [(e["entity_group"], e["text"]) for e in entities]
    spans_exact = all(NER_TEXT[e["start"] : e["end"]] == e["text"] for e in entities)
    report.check(
        got == NER_EXPECTED and spans_exact,
        f"{label}: ner README example",
        f"{got} (spans {'exact' if spans_exact else 'WRONG'})",
    )


def check_grpc(report: Report, address: str, model: str, label: str) -> None:
    """Triton's gRPC client against the Open Inference Protocol port: ready, and the README's
    classification examples labelled as over REST."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(address)
    try:
        texts = list(CLASSIFY_EXAMPLE)
        tensor = grpcclient.InferInput("text", [len(texts)], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
        ok = client.is_server_ready() and client.is_model_ready(model)
        got = [x.decode() for x in client.infer(model, [tensor]).as_numpy("label")] if ok else []
    except InferenceServerException as exc:
        report.check(False, f"{label}: gRPC ModelInfer on {address}", str(exc)[:200])
        return
    finally:
        client.close()
    want = list(CLASSIFY_EXAMPLE.values())
    report.check(got == want, f"{label}: gRPC ({address}) README examples", f"{got}, want {want}")


# --- one container ----------------------------------------------------------------------------------------


@contextmanager
def container(image: str, port: int, env: dict[str, str], volumes: Sequence[str]) -> Iterator[str]:
    args = ["run", "-d", "--label", LABEL, "--read-only", "--tmpfs", "/tmp", "-p", f"127.0.0.1:{port}:8000"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    for volume in volumes:
        args += ["-v", volume]
    name = podman(*args, image).stdout.strip()
    try:
        yield name
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def in_container(name: str, *command: str) -> subprocess.CompletedProcess[str]:
    return podman("exec", name, *command, check=False)


def check_hardening(report: Report, name: str, label: str) -> None:
    status = in_container(name, "cat", "/proc/1/status").stdout
    uid = next((line.split()[1] for line in status.splitlines() if line.startswith("Uid:")), "?")
    report.check(uid.isdigit() and int(uid) != 0, f"{label}: serves as a non-root user", f"uid {uid}")
    root_write = in_container(name, "python", "-c", "open('/opt/venv/written', 'w')")
    models_write = in_container(name, "python", "-c", "open('/models/written', 'w')")
    tmp_write = in_container(name, "python", "-c", "open('/tmp/written', 'w').write('ok')")
    readonly = "Read-only file system" in root_write.stderr + models_write.stderr
    report.check(
        root_write.returncode != 0
        and models_write.returncode != 0
        and readonly
        and tmp_write.returncode == 0,
        f"{label}: read-only root filesystem",
        f"write to /opt/venv: {last_line(root_write.stderr)}; /models refused; /tmp writable",
    )
    # Podman without systemd runs no health-check timer: run the image's HEALTHCHECK command once.
    declared = podman("inspect", "--format", "{{.Config.Healthcheck.Test}}", name, check=False).stdout.strip()
    health = podman("healthcheck", "run", name, check=False)
    report.check(
        "healthcheck.py" in declared and health.returncode == 0,
        f"{label}: image HEALTHCHECK passes",
        f"{declared}: {'healthy' if health.returncode == 0 else last_line(health.stdout + health.stderr)}",
    )


IMPORT_PROBE = f"""
import importlib.metadata as md, importlib.util as iu, json
names = {list(FORBIDDEN)!r}
found = sorted({{d.metadata["Name"] for d in md.distributions()
               if any(d.metadata["Name"].lower().startswith(n) for n in names)}})
found += [n for n in names if iu.find_spec(n) is not None]
print(json.dumps({{"found": found, "distributions": len(list(md.distributions()))}}))
"""


def check_no_training_stack(report: Report, image: str, label: str) -> None:
    probe = podman("run", "--rm", "--label", LABEL, "--entrypoint", "python", image, "-c", IMPORT_PROBE)
    result = json.loads(probe.stdout)
    report.check(
        not result["found"],
        f"{label}: no {'/'.join(FORBIDDEN)} in the image",
        f"{result['distributions']} distributions, forbidden found: {result['found'] or 'none'}",
    )


@dataclass
class LoadResult:
    outcomes: Counter[str] = field(default_factory=Counter)  # "<sent before|after SIGTERM>: <outcome>"
    across_signal: int = 0  # 200s for requests sent before SIGTERM and answered after it
    errors: list[str] = field(default_factory=list)


def sigterm_under_load(report: Report, name: str, base: str, model: str, label: str) -> None:
    """16 clients send classify requests (a connection each); SIGTERM while they run. Each client stops at
    its first answer other than 200, as a load balancer would take the instance out.

    Every request sent before the signal was accepted and must be answered: 200 (complete), 503 if it
    reached the service after the drain began, or 504 if its deadline (BERTSERVE_REQUEST_TIMEOUT_MS) passed
    in the queue of a busy machine. After the signal, a request may also find the port closed or be reset
    while uvicorn closes it (the drain ended: nothing was in flight); any other ending fails."""
    inputs = [text * 2 for text in CLASSIFY_EXAMPLE] * 2
    result = LoadResult()
    lock = threading.Lock()
    signalled = threading.Event()
    go = threading.Barrier(LOAD_CLIENTS + 1)

    def client() -> None:
        go.wait()
        while True:
            phase = "after" if signalled.is_set() else "before"
            answer: Any = None
            try:
                status, answer = http("POST", f"{base}/v1/models/{model}/classify", {"inputs": inputs}, 60)
            except OSError as exc:  # refused, reset, timed out: no HTTP answer
                outcome = type(exc).__name__
            else:
                complete = status != 200 or len(answer.get("results", [])) == len(inputs)
                outcome = str(status) if complete else "200 incomplete"
            ok = outcome in ("200", "503", "504") or (
                phase == "after" and outcome in ("ConnectionRefusedError", "ConnectionResetError")
            )
            with lock:
                result.outcomes[f"{phase}: {outcome}"] += 1
                if outcome == "200" and phase == "before" and signalled.is_set():
                    result.across_signal += 1
                if not ok:
                    result.errors.append(f"sent {phase} SIGTERM: {outcome} {str(answer)[:100]}")
            if outcome != "200":
                return

    threads = [threading.Thread(target=client, daemon=True) for _ in range(LOAD_CLIENTS)]
    for thread in threads:
        thread.start()
    go.wait()
    time.sleep(3)  # the clients are in full swing
    signalled.set()
    started = time.monotonic()
    podman("kill", "--signal", "TERM", name)
    exit_code = podman("wait", name, timeout=90).stdout.strip()
    stopped_s = time.monotonic() - started
    for thread in threads:
        thread.join(timeout=30)
    outcomes = ", ".join(f"{key} {count}" for key, count in sorted(result.outcomes.items()))
    report.check(
        not result.errors and result.across_signal > 0,
        f"{label}: SIGTERM under load ({LOAD_CLIENTS} clients) answers every accepted request",
        f"{outcomes}; {result.across_signal} in flight at SIGTERM answered 200"
        + (f"; unexpected: {result.errors[:3]}" if result.errors else ""),
    )
    report.check(
        exit_code == "0", f"{label}: exits 0 after SIGTERM", f"exit {exit_code} after {stopped_s:.1f} s"
    )
    if exit_code != "0":
        print(podman("logs", "--tail", "15", name, check=False).stderr, file=sys.stderr)


def check_image(args: argparse.Namespace) -> int:
    report = Report()
    label = args.image
    check_no_training_stack(report, args.image, label)
    config = json.loads(podman("image", "inspect", args.image).stdout)[0]["Config"]
    user = str(config.get("User", ""))
    report.check(user.split(":")[0] not in ("", "0", "root"), f"{label}: image USER is not root", user)
    env: dict[str, str] = {}
    volumes = []
    if args.backend:
        env["BERTSERVE_BACKEND"] = args.backend
    if args.repo:
        volumes.append(f"{Path(args.repo).resolve()}:/models:ro")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with container(args.image, port, env, volumes) as name:
        took = wait_until(lambda: ready(base), READY_BOUND_S)
        if not report.check(
            took is not None,
            f"{label}: ready within {READY_BOUND_S:.0f} s",
            f"{took:.1f} s" if took is not None else "not ready",
        ):
            print(podman("logs", "--tail", "20", name, check=False).stderr, file=sys.stderr)
            return min(report.failures, 100)
        status, models = http("GET", f"{base}/v1/models")
        served = {m["name"]: m.get("backend") for m in models.get("models", [])} if status == 200 else {}
        print(f"     models served: {served}", flush=True)
        check_classify(report, base, "sentiment", label)
        check_ner(report, base, "ner", label)
        check_hardening(report, name, label)
        sigterm_under_load(report, name, base, "sentiment", label)
    return min(report.failures, 100)


# --- compose ----------------------------------------------------------------------------------------------


def debug_unreachable(name: str, base: str) -> None:
    """Where a ready check failed: the answer on the published port, and straight from the container."""
    address = podman(
        "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name, check=False
    ).stdout.strip()
    for url in (base, f"http://{address}:8000"):
        try:
            answer: Any = http("GET", f"{url}/health/ready", timeout=3)
        except OSError as exc:
            answer = f"{type(exc).__name__}: {exc}"
        print(f"     {url}/health/ready -> {answer}", file=sys.stderr)
    nat = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True, check=False)
    print("\n".join(line for line in nat.stdout.splitlines() if "dport" in line), file=sys.stderr)


def check_compose(args: argparse.Namespace) -> int:
    """deploy/compose.yaml up with podman-compose (the override swaps image names only), then down."""
    report = Report()
    root = Path(__file__).resolve().parents[2]
    files = ["-f", str(root / "deploy" / "compose.yaml"), "-f", str(Path(args.override).resolve())]
    compose = ["podman-compose", "-p", args.project, *files]
    busy = [port for port in (8000, 9001, 9090) if port_in_use(port)]
    if not report.check(
        not busy, "compose: ports 127.0.0.1:8000, :9001 and :9090 are free", f"in use: {busy or 'none'}"
    ):
        return 1

    def run(*extra: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*compose, *extra], capture_output=True, text=True, timeout=timeout)

    def project_objects(kind: str) -> list[str]:
        listing = (
            ["ps", "-a", "--format", "{{.Names}}"]
            if kind == "container"
            else [kind, "ls", "--format", "{{.Name}}"]
        )
        label = f"label=io.podman.compose.project={args.project}"
        return podman(*listing, "--filter", label, check=False).stdout.split()

    try:
        up = run("up", "-d", "--no-build", *args.services)
        if not report.check(
            up.returncode == 0,
            f"compose: up -d {' '.join(args.services)}",
            "exit 0" if up.returncode == 0 else last_line(up.stderr),
        ):
            print(up.stdout[-3000:], up.stderr[-3000:], file=sys.stderr)
            return report.failures
        base, prometheus = "http://127.0.0.1:8000", "http://127.0.0.1:9090"
        bound = READY_BOUND_S + 30
        took = wait_until(lambda: ready(base), bound)
        report.check(
            took is not None,
            "compose: bertserve ready on 127.0.0.1:8000",
            f"{took:.1f} s after up" if took is not None else f"not ready {bound:.0f} s after up",
        )
        if took is None:
            debug_unreachable(f"{args.project}_bertserve_1", base)
            print(up.stderr[-1500:], file=sys.stderr)
            print(podman("ps", "-a", "--format", "{{.Names}} {{.Status}} {{.Ports}}").stdout, file=sys.stderr)
            print(
                podman("logs", "--tail", "20", f"{args.project}_bertserve_1", check=False).stderr,
                file=sys.stderr,
            )
            return report.failures
        check_classify(report, base, "sentiment", "compose")
        check_ner(report, base, "ner", "compose")
        check_grpc(report, "127.0.0.1:9001", "sentiment", "compose")
        sent = 2 + 3
        for _ in range(3):
            http("POST", f"{base}/v1/models/sentiment/classify", {"inputs": "Great fun."})

        def target_up() -> bool:
            status, body = http("GET", f"{prometheus}/api/v1/targets?state=active", timeout=3)
            targets = body["data"]["activeTargets"] if status == 200 else []
            return any(t["labels"].get("job") == "bertserve" and t["health"] == "up" for t in targets)

        took = wait_until(target_up, 60, step_s=1)
        report.check(
            took is not None,
            "compose: Prometheus scrapes bertserve (target up)",
            f"{took:.1f} s" if took is not None else "not up within 60 s",
        )
        counted: list[float] = []

        def requests_counted() -> bool:
            query = urllib.parse.quote("sum(bertserve_requests_total)")
            status, body = http("GET", f"{prometheus}/api/v1/query?query={query}", timeout=3)
            results = body["data"]["result"] if status == 200 else []
            counted[:] = [float(results[0]["value"][1])] if results else []
            return bool(counted) and counted[0] >= sent

        took = wait_until(requests_counted, 45, step_s=1)
        report.check(
            took is not None,
            "compose: bertserve_requests_total queryable in Prometheus",
            f"sum = {counted[0] if counted else 'no series'} after {sent} requests",
        )
        # podman-compose 1.0.3 ignores stop_grace_period: give the drain its 30 s explicitly.
        stop = run("stop", "-t", "30", "bertserve", timeout=60)
        exit_code = podman(
            "ps",
            "-a",
            "--filter",
            f"label=io.podman.compose.project={args.project}",
            "--filter",
            "label=com.docker.compose.service=bertserve",
            "--format",
            "{{.ExitCode}}",
            check=False,
        ).stdout.strip()
        report.check(
            stop.returncode == 0 and exit_code == "0",
            "compose: stop bertserve exits 0",
            f"exit {exit_code or '?'}",
        )
    finally:
        down = run("down", "-v", "-t", "30", timeout=120)
        left = [f"{kind} {name}" for kind in ("container", "volume") for name in project_objects(kind)]
        report.check(
            down.returncode == 0 and not left,
            "compose: down -v leaves no container or volume behind",
            f"left: {left or 'nothing'}",
        )
        # podman-compose 1.0.3's `down` keeps the project's network (docker compose removes it).
        for network in project_objects("network"):
            podman("network", "rm", network, check=False)
            print(f"     note: podman-compose 1.0.3 left network {network} after down; removed", flush=True)
    return min(report.failures, 100)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    image = sub.add_parser("image", help="run and check one image")
    image.add_argument("image")
    image.add_argument("--repo", help="model repository to mount at /models (read-only)")
    image.add_argument("--backend", help="BERTSERVE_BACKEND for the container")
    image.set_defaults(func=check_image)
    stack = sub.add_parser("compose", help="bring deploy/compose.yaml up and down")
    stack.add_argument("--override", required=True, help="compose file swapping image names for stand-ins")
    stack.add_argument("--project", default="bertserve-image-check")
    stack.add_argument("--services", nargs="+", default=["bertserve", "prometheus"])
    stack.set_defaults(func=check_compose)
    args = parser.parse_args(argv)
    if shutil.which("podman") is None:
        print("FAIL podman not found (deploy/tools/install-engine.sh)")
        return 1
    try:
        return int(args.func(args))
    except (RuntimeError, subprocess.TimeoutExpired, OSError, KeyError, ValueError) as exc:
        print(f"FAIL {args.command}: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
