"""What a load-test user sends: task mix, inputs per request, model names, request bodies.

Kept apart from `locustfile.py` (which imports locust, and with it gevent's monkey-patching) so the
parsing and the bodies are unit-tested in an ordinary process, and so the benchmark can reuse them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from loadtest.corpus import Corpus, classify_corpus, ner_corpus

TaskName = Literal["classify", "ner"]
TASKS: tuple[TaskName, ...] = ("classify", "ner")


def parse_task_mix(spec: str) -> dict[TaskName, float]:
    """`"classify=3,ner=1"` -> relative weights; a task left out or weighted 0 is not sent."""
    weights: dict[TaskName, float] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r} in task mix {spec!r}; tasks are {', '.join(TASKS)}")
        try:
            weight = float(value) if sep else 1.0
        except ValueError as exc:
            raise ValueError(f"weight of {name!r} in task mix {spec!r} is not a number") from exc
        if weight < 0:
            raise ValueError(f"weight of {name!r} in task mix {spec!r} is negative")
        weights[name] = weight
    active = {k: v for k, v in weights.items() if v > 0}
    if not active:
        raise ValueError(f"task mix {spec!r} sends nothing; give at least one task a positive weight")
    return active


def parse_inputs_per_request(spec: str) -> tuple[int, int]:
    """`"1"` or a range `"1-8"` (uniform per request), each at least 1."""
    low, sep, high = spec.partition("-")
    try:
        bounds = (int(low), int(high) if sep else int(low))
    except ValueError as exc:
        raise ValueError(f"inputs per request must be N or N-M, not {spec!r}") from exc
    if bounds[0] < 1 or bounds[1] < bounds[0]:
        raise ValueError(f"inputs per request must be N or N-M with 1 <= N <= M, not {spec!r}")
    return bounds


@dataclass(frozen=True, slots=True)
class ScenarioConfig:
    classify_model: str = "sentiment"
    ner_model: str = "ner"
    task_mix: str = "classify=3,ner=1"
    inputs_per_request: str = "1"
    rate: float = 0.0  # requests/s over all users; 0 = closed loop, as fast as answers come

    def weights(self) -> dict[TaskName, float]:
        return parse_task_mix(self.task_mix)

    def input_bounds(self) -> tuple[int, int]:
        return parse_inputs_per_request(self.inputs_per_request)

    def per_user_rate(self, users: int) -> float | None:
        """Each user's share of the target rate (constant throughput), or None for a closed loop."""
        if self.rate < 0:
            raise ValueError(f"rate must be >= 0, not {self.rate}")
        return self.rate / max(users, 1) if self.rate > 0 else None

    def validate(self) -> None:
        self.weights()
        self.input_bounds()
        self.per_user_rate(1)


@dataclass(frozen=True, slots=True)
class Call:
    task: TaskName
    path: str
    body: dict[str, object]
    inputs: int


class RequestFactory:
    """Draws the next call: a task by weight, then 1..N texts from that task's corpus."""

    def __init__(
        self,
        config: ScenarioConfig,
        rng: random.Random,
        corpora: dict[TaskName, Corpus] | None = None,
    ) -> None:
        config.validate()
        self._config = config
        self._rng = rng
        weights = config.weights()
        self._tasks: list[TaskName] = list(weights)
        self._weights = [weights[t] for t in self._tasks]
        self._low, self._high = config.input_bounds()
        loaded = corpora or {}
        self._corpora: dict[TaskName, Corpus] = {
            task: loaded.get(task) or (classify_corpus() if task == "classify" else ner_corpus())
            for task in self._tasks
        }
        for task, corpus in self._corpora.items():
            if not corpus.texts:
                raise ValueError(f"the {task} corpus ({corpus.source}) holds no texts")

    @property
    def corpora(self) -> dict[TaskName, Corpus]:
        return dict(self._corpora)

    def next_call(self) -> Call:
        task = self._rng.choices(self._tasks, self._weights)[0]
        count = self._rng.randint(self._low, self._high)
        texts = self._corpora[task].texts
        picked = [texts[self._rng.randrange(len(texts))] for _ in range(count)]
        inputs: str | list[str] = picked[0] if count == 1 else picked
        if task == "classify":
            return Call(task, f"/v1/models/{self._config.classify_model}/classify", {"inputs": inputs}, count)
        return Call(
            task,
            f"/v1/models/{self._config.ner_model}/ner",
            {"inputs": inputs, "aggregation": "simple"},
            count,
        )
