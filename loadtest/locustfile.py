"""Locust scenario: users sending `classify` and `ner` calls with real-looking text.

    make loadtest                                   # 60 s headless against http://127.0.0.1:8000
    make loadtest USERS=64 RATE=300 DURATION=60s TASK_MIX=classify=1 CLASSIFY_MODEL=sentiment
    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --task-mix classify=3,ner=1

Texts: SST-2 sentences for classify and WNUT-17 sentences for ner from `../shared/data` when
present, else the project-written sentences in `loadtest/corpus/` (see loadtest/corpus.py).
Options (each also an environment variable): `--classify-model` (LT_CLASSIFY_MODEL), `--ner-model`
(LT_NER_MODEL), `--task-mix` (LT_TASK_MIX, e.g. `classify=3,ner=1`), `--inputs-per-request`
(LT_INPUTS, `N` or a range `N-M`), `--rate` (LT_RATE: requests/s over all users, held with
Locust's constant-throughput wait; 0 = each user sends as soon as its answer arrives).
A response counts as a failure unless it is 200 and holds one result per input. Only loopback
hosts are accepted.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from locust import FastHttpUser, constant_throughput, events, task
from locust.env import Environment

from loadtest.httpload import check_loopback_url
from loadtest.scenario import RequestFactory, ScenarioConfig

log = logging.getLogger(__name__)


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _add_arguments(parser: Any) -> None:
    defaults = ScenarioConfig()
    group = parser.add_argument_group("bertserve scenario")
    group.add_argument(
        "--classify-model",
        env_var="LT_CLASSIFY_MODEL",
        default=defaults.classify_model,
        help="model name for classify calls",
    )
    group.add_argument(
        "--ner-model", env_var="LT_NER_MODEL", default=defaults.ner_model, help="model name for ner calls"
    )
    group.add_argument(
        "--task-mix",
        env_var="LT_TASK_MIX",
        default=defaults.task_mix,
        help="relative weights, e.g. classify=3,ner=1 (a task left out is not sent)",
    )
    group.add_argument(
        "--inputs-per-request",
        env_var="LT_INPUTS",
        default=defaults.inputs_per_request,
        help="texts per request: N, or N-M drawn uniformly per request",
    )
    group.add_argument(
        "--rate",
        env_var="LT_RATE",
        type=float,
        default=defaults.rate,
        help="target requests/s over all users (constant throughput); 0 = closed loop",
    )


def scenario_from(environment: Environment) -> ScenarioConfig:
    options = environment.parsed_options
    if options is None:  # run as a library without a command line: the defaults
        return ScenarioConfig()
    return ScenarioConfig(
        classify_model=options.classify_model,
        ner_model=options.ner_model,
        task_mix=options.task_mix,
        inputs_per_request=options.inputs_per_request,
        rate=options.rate,
    )


@events.init.add_listener  # type: ignore[untyped-decorator]
def _check_configuration(environment: Environment, **_: Any) -> None:
    # Fail before any user starts: a bad option or a remote host ends the run with a message.
    if environment.host:
        check_loopback_url(environment.host)
    config = scenario_from(environment)
    config.validate()
    factory = RequestFactory(config, random.Random(0))
    for name, corpus in factory.corpora.items():
        log.info("%s texts: %d from %s", name, len(corpus.texts), corpus.source)


class BertserveUser(FastHttpUser):
    """One client with a keep-alive connection; calls drawn by `RequestFactory`."""

    def on_start(self) -> None:
        check_loopback_url(self.host or "")
        config = scenario_from(self.environment)
        self._factory = RequestFactory(config, random.Random())
        users = getattr(self.environment.parsed_options, "num_users", None) or 1
        per_user = config.per_user_rate(users)
        self._pace = constant_throughput(per_user) if per_user else None

    def wait_time(self) -> float:
        return self._pace(self) if self._pace else 0.0

    @task
    def call(self) -> None:
        call = self._factory.next_call()
        with self.client.post(call.path, json=call.body, name=call.task, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            try:
                results = response.json()["results"]
            except (ValueError, KeyError, TypeError):
                response.failure("response is not the expected JSON document")
                return
            if len(results) != call.inputs:
                response.failure(f"{len(results)} results for {call.inputs} inputs")
