"""`make loadtest`: Locust headless against a running server on loopback, bounded in time.

    python -m loadtest.run_locust --host http://127.0.0.1:8000 --users 64 --rate 300 --duration 60s

Writes `<out>/locust_stats.csv` (+ `_stats_history`, `_failures`, `_exceptions`) and
`<out>/locust.html`; exits non-zero when any request failed, so a CI job or the benchmark's
"sustainable rate" check can rely on the exit status.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from loadtest.httpload import check_loopback_url
from loadtest.scenario import ScenarioConfig

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+s)?$")


def check_duration(value: str) -> str:
    """Locust's run-time syntax (`60s`, `2m`, `1h30m`); a bare number means seconds."""
    if value.isdigit():
        value = f"{value}s"
    if not value or not _DURATION.match(value):
        raise ValueError(f"duration must look like 60s, 2m or 1h30m, not {value!r}")
    return value


def locust_command(args: argparse.Namespace, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        args.host,
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate),
        "--run-time",
        args.duration,
        # Users finish the call in flight instead of being cut off, so the last second of a run
        # does not show up as failures.
        "--stop-timeout",
        "10",
        "--csv",
        str(out / "locust"),
        "--csv-full-history",
        "--html",
        str(out / "locust.html"),
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--classify-model",
        args.classify_model,
        "--ner-model",
        args.ner_model,
        "--task-mix",
        args.task_mix,
        "--inputs-per-request",
        args.inputs,
        "--rate",
        str(args.rate),
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = ScenarioConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="http://127.0.0.1:8000", help="base URL; loopback only")
    ap.add_argument("--users", type=int, default=32, help="concurrent users (connections)")
    ap.add_argument("--spawn-rate", type=float, default=16.0, help="users started per second")
    ap.add_argument(
        "--rate", type=float, default=0.0, help="target requests/s over all users; 0 = closed loop"
    )
    ap.add_argument("--duration", default="60s", help="run time (Locust syntax: 60s, 2m)")
    ap.add_argument("--classify-model", default=defaults.classify_model)
    ap.add_argument("--ner-model", default=defaults.ner_model)
    ap.add_argument("--task-mix", default=defaults.task_mix, help="e.g. classify=3,ner=1")
    ap.add_argument("--inputs", default=defaults.inputs_per_request, help="texts per request: N or N-M")
    ap.add_argument("--out", type=Path, default=None, help="report folder (default results/locust-<time>)")
    args = ap.parse_args(argv)
    try:
        args.host = check_loopback_url(args.host)
        args.duration = check_duration(args.duration)
        ScenarioConfig(
            classify_model=args.classify_model,
            ner_model=args.ner_model,
            task_mix=args.task_mix,
            inputs_per_request=args.inputs,
            rate=args.rate,
        ).validate()
        if args.users < 1 or args.spawn_rate <= 0:
            raise ValueError("users must be >= 1 and spawn rate > 0")
    except ValueError as exc:
        ap.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out or Path("results") / f"locust-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    out.mkdir(parents=True, exist_ok=True)
    cmd = locust_command(args, out)
    print(
        f"locust: {args.users} users, rate {args.rate or 'closed loop'}, {args.duration} against {args.host}"
    )
    # Locust imports the locustfile by path; the project root must be importable for `loadtest.*`.
    root = str(LOCUSTFILE.parent.parent)
    extra = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, extra]) if extra else root}
    code = subprocess.call(cmd, env=env)
    verdict = "no failures" if code == 0 else "FAILURES (or locust error)"
    print(f"reports: {out}/locust.html, {out}/locust_stats.csv; exit {code}: {verdict}")
    return code


if __name__ == "__main__":
    sys.exit(main())
