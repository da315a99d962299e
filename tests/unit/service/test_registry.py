"""The registry's share of the compute budget: threads split among the models it loads, and one
set of compute slots for all of their batchers."""

from __future__ import annotations

from pathlib import Path

import pytest

import bertserve.service.registry as registry_module
import bertserve.service.settings as settings_module
from bertserve.runtime.base import Backend, BackendKind
from bertserve.runtime.budget import split_threads
from bertserve.runtime.selection import BackendLoader
from bertserve.service.metrics import Metrics
from bertserve.service.registry import ModelRegistry, auto_adaptive
from bertserve.service.settings import Settings
from tests.helpers.fake_repo import DEFAULT_SPECS, write_fake_repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_repo(tmp_path_factory.mktemp("budget-repo"))


def load(
    repo: Path, monkeypatch: pytest.MonkeyPatch, cpus: int, **settings: object
) -> tuple[ModelRegistry, dict[str, int]]:
    """Load with the runtime's own loader (fake backend), recording the threads each model got."""
    monkeypatch.setattr(settings_module, "available_cpus", lambda: cpus)
    opened: dict[str, int] = {}
    original = BackendLoader.__call__

    def record(self: BackendLoader, model, version_dir) -> Backend:  # type: ignore[no-untyped-def]
        opened[model.name] = self.options.intra_op_threads
        return original(self, model, version_dir)

    monkeypatch.setattr(BackendLoader, "__call__", record)
    registry = ModelRegistry(
        Settings(repo=repo, backend=BackendKind.FAKE, **settings),  # type: ignore[arg-type]
        Metrics(process=False),
    )
    registry.load()
    return registry, opened


def test_the_cpus_are_split_among_the_models(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry, opened = load(repo, monkeypatch, cpus=10)
    try:
        names = sorted(registry.names)
        assert len(names) == len(DEFAULT_SPECS)
        expected = dict(zip(names, split_threads(10, len(names)), strict=True))
        assert opened == expected == registry.threads
        sample = registry.metrics.registry.get_sample_value
        for name, threads in expected.items():
            assert sample("bertserve_backend_threads", {"model": name}) == threads
        assert registry.slots is None  # no limit on concurrent batches by default
    finally:
        registry.close()


def test_one_model_gets_every_cpu(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry, opened = load(repo, monkeypatch, cpus=6, models=["cls"])
    try:
        assert opened == {"cls": 6}
    finally:
        registry.close()


def test_an_explicit_thread_count_goes_to_every_model(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry, opened = load(repo, monkeypatch, cpus=8, intra_op_threads=8)
    try:
        assert set(opened.values()) == {8}
    finally:
        registry.close()


def test_the_budget_setting_replaces_the_cpu_count(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry, opened = load(repo, monkeypatch, cpus=64, cpu_budget=4, models=["cls", "ner"])
    try:
        assert opened == {"cls": 2, "ner": 2}
    finally:
        registry.close()


def test_every_batcher_shares_the_process_slots(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry, _ = load(repo, monkeypatch, cpus=4, max_concurrent_batches=1)
    try:
        assert registry.slots is not None and registry.slots.slots == 1
        assert {id(p.batcher._slots) for p in registry.pipelines()} == {id(registry.slots)}
    finally:
        registry.close()


def test_instances_split_the_model_threads_between_sessions(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`instances`: that many backend sessions per model, its share of the threads split between
    them (an explicit intra_op_threads is each session's), each with its own batch worker; all of
    them closed with the model."""
    registry, opened = load(repo, monkeypatch, cpus=4, models=["cls"], instances=2)
    try:
        assert opened == {"cls": 2}  # 4 CPUs for the model, 2 threads per session
        backends = registry.pipelines()[0].batcher.backends
        assert len(backends) == 2 and backends[0] is not backends[1]
    finally:
        registry.close()
    assert all(getattr(b, "closed", False) for b in backends)
    registry, opened = load(repo, monkeypatch, cpus=4, models=["cls"], instances=2, intra_op_threads=1)
    try:
        assert opened == {"cls": 1} and len(registry.pipelines()[0].batcher.backends) == 2
    finally:
        registry.close()


def test_a_model_yaml_sets_its_own_instances_and_the_setting_overrides_it(
    repo: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`instances` in model.yaml: that model's sessions (its threads split between them); the
    service's `instances` setting, when given, applies to every model instead."""
    import shutil

    import yaml

    own = tmp_path / "repo"
    shutil.copytree(repo, own)
    path = own / "cls" / "model.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["instances"] = 3
    path.write_text(yaml.safe_dump(doc))
    registry, opened = load(own, monkeypatch, cpus=6, models=["cls", "ner"], cpu_budget=12)
    try:
        by_name = {p.name: p for p in registry.pipelines()}
        assert len(by_name["cls"].batcher.backends) == 3
        assert len(by_name["ner"].batcher.backends) == 1  # its model.yaml says nothing: one session
        assert opened == {"cls": 2, "ner": 6}  # 6 threads per model, split 3 ways for cls
    finally:
        registry.close()
    registry, opened = load(own, monkeypatch, cpus=6, models=["cls"], instances=1)
    try:
        assert len(registry.pipelines()[0].batcher.backends) == 1 and opened == {"cls": 6}
    finally:
        registry.close()


def test_adaptive_instances_open_a_wide_session_and_one_single_thread_session_per_thread(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`instances: adaptive`: one session with all the model's threads and one single-thread
    session per thread, in the batcher's adaptive layout; a model with a single thread gets one
    session (the layout needs two cores to share)."""
    threads: list[int] = []
    original = BackendLoader.__call__

    def record(self: BackendLoader, model, version_dir) -> Backend:  # type: ignore[no-untyped-def]
        threads.append(self.options.intra_op_threads)
        return original(self, model, version_dir)

    monkeypatch.setattr(BackendLoader, "__call__", record)
    monkeypatch.setattr(settings_module, "available_cpus", lambda: 3)
    registry = ModelRegistry(
        Settings(repo=repo, backend=BackendKind.FAKE, models=["cls"], instances="adaptive"),
        Metrics(process=False),
    )
    registry.load()
    try:
        assert threads == [3, 1, 1, 1]
        batcher = registry.pipelines()[0].batcher
        assert len(batcher.backends) == 4 and batcher._adaptive
    finally:
        registry.close()
    threads.clear()
    registry = ModelRegistry(
        Settings(repo=repo, backend=BackendKind.FAKE, models=["cls"], instances="adaptive", cpu_budget=1),
        Metrics(process=False),
    )
    registry.load()
    try:
        assert threads == [1] and not registry.pipelines()[0].batcher._adaptive
    finally:
        registry.close()


def test_auto_instances_open_the_adaptive_layout_where_it_was_measured_and_fits(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unset, `instances` is `auto`: an ONNX Runtime CPU model of 2 threads gets the adaptive
    layout while its extra sessions fit in the memory left; another backend, or too little
    memory, one session."""
    threads: list[int] = []
    kind = {"name": "onnxruntime-cpu"}
    original = BackendLoader.__call__

    def record(self: BackendLoader, model, version_dir) -> Backend:  # type: ignore[no-untyped-def]
        threads.append(self.options.intra_op_threads)
        backend = original(self, model, version_dir)
        backend.name = kind["name"]  # type: ignore[misc]
        return backend

    resident = iter(range(100 << 20, 1 << 40, 50 << 20))  # each reading: 50 MiB more
    monkeypatch.setattr(BackendLoader, "__call__", record)
    monkeypatch.setattr(settings_module, "available_cpus", lambda: 2)
    monkeypatch.setattr(registry_module, "resident_bytes", lambda: next(resident))
    limit = {"bytes": 8 << 30}
    monkeypatch.setattr(registry_module, "memory_limit_bytes", lambda: limit["bytes"])

    def layout() -> tuple[list[int], bool]:
        threads.clear()
        registry = ModelRegistry(
            Settings(repo=repo, backend=BackendKind.FAKE, models=["cls"]), Metrics(process=False)
        )
        registry.load()
        try:
            return list(threads), registry.pipelines()[0].batcher._adaptive
        finally:
            registry.close()

    assert Settings(repo=repo).instances_for(registry_module.load_model_config(repo, "cls")) == "auto"
    assert layout() == ([2, 1, 1], True)
    limit["bytes"] = 400 << 20  # 2 x 50 MiB more is over a quarter of what is left
    assert layout() == ([2], False)
    limit["bytes"] = 8 << 30
    kind["name"] = "openvino-cpu"
    assert layout() == ([2], False)


def test_auto_adaptive_says_why_not() -> None:
    mib = 1 << 20
    assert auto_adaptive("onnxruntime-cpu", 2, 100 * mib, 500 * mib, 4096 * mib) is None
    assert "measured on onnxruntime-cpu" in (auto_adaptive("openvino-cpu", 2, mib, mib, 4096 * mib) or "")
    assert "nothing to split" in (auto_adaptive("onnxruntime-cpu", 1, mib, mib, 4096 * mib) or "")
    assert "8 more copies" in (auto_adaptive("onnxruntime-cpu", 8, mib, mib, 4096 * mib) or "")
    assert "cannot be read" in (auto_adaptive("onnxruntime-cpu", 2, mib, None, 4096 * mib) or "")
    # 2 x 300 MiB against a quarter of 2048 - 500 MiB
    assert "~600 MiB" in (auto_adaptive("onnxruntime-cpu", 2, 300 * mib, 500 * mib, 2048 * mib) or "")


async def test_warm_up_runs_every_session_of_a_model(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each backend session warms before readiness, not only the one the queue gives the warm-up
    request to (instances, the adaptive layout's narrow sessions)."""
    for instances in (2, "adaptive"):
        registry, _ = load(repo, monkeypatch, cpus=2, models=["cls"], instances=instances)
        try:
            registry.start()
            await registry.warm_up()
            backends = registry.pipelines()[0].batcher.backends
            assert len(backends) >= 2
            assert all(b.sequences_run >= 1 for b in backends), [b.sequences_run for b in backends]
        finally:
            await registry.stop(timeout_s=5)
