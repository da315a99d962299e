"""Where a profiled server spends its CPU: py-spy's collapsed stacks folded into pipeline stages.

    py-spy record --pid PID --duration 10 --rate 200 --format raw --threads --output stacks.txt
    python -m loadtest.profiling stacks.txt

Each sample is charged to the stage of its deepest recognised frame (a JSON encode called from a
route counts as JSON, not as HTTP), so the shares add up to 100 % of the sampled busy time.
py-spy leaves idle threads (blocked in epoll, locks, queues) out by default.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

# (stage, substrings of a frame "function (path:line)"), checked in order for each frame.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("backend inference", ("onnxruntime/", "openvino/", "bertserve/runtime/")),
    ("tokenization", ("tokenizers/", "service/tokenization.py")),
    ("JSON encode/decode", ("json/", "orjson")),
    ("request validation (pydantic)", ("pydantic", "fastapi/_compat", "fastapi/dependencies")),
    ("batching and queueing", ("service/batching.py", "service/pipeline.py")),
    ("heads / postprocess", ("service/heads/", "service/windowing.py", "numpy/")),
    ("metrics", ("prometheus_client/", "service/metrics.py")),
    (
        "HTTP / ASGI (uvicorn, starlette, fastapi)",
        ("uvicorn/", "h11/", "httptools", "starlette/", "fastapi/"),
    ),
    ("event loop and threads", ("asyncio/", "concurrent/futures", "threading.py", "selectors.py", "uvloop")),
)
OTHER = "other"


@dataclass(frozen=True, slots=True)
class StageShares:
    samples: int
    by_stage: tuple[tuple[str, int], ...]  # largest first

    def render(self) -> str:
        if not self.samples:
            return "   profile: no busy samples"
        lines = [f"   profile: {self.samples} busy samples"]
        lines += [f"     {100.0 * n / self.samples:5.1f} %  {stage}" for stage, n in self.by_stage]
        return "\n".join(lines)


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):  # deepest first
        for stage, needles in STAGES:
            if any(needle in frame for needle in needles):
                return stage
    return OTHER


def summarize_collapsed(text: str) -> StageShares:
    """`frame;frame;... count` lines (py-spy --format raw, Brendan Gregg's collapsed format)."""
    counts: dict[str, int] = {}
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        stage = stage_of(stack.split(";"))
        counts[stage] = counts.get(stage, 0) + n
        total += n
    return StageShares(total, tuple(sorted(counts.items(), key=lambda kv: -kv[1])))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m loadtest.profiling STACKS.txt", file=sys.stderr)
        return 2
    print(summarize_collapsed(Path(args[0]).read_text(encoding="utf-8")).render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
