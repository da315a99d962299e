"""Model name -> Pipeline, and the lifecycle behind readiness: load -> start -> warm up -> ready -> stop.

`load` is synchronous and runs before the port opens (`run_server`), so a missing, tampered or
unrunnable model stops the process with a message instead of serving 503s forever.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from bertserve.modelrepo import (
    MODEL_CONFIG_FILE,
    TOKENIZER_FILE,
    ModelConfig,
    RepositoryError,
    Task,
    list_models,
    load_model_config,
    resolve_inside,
    verify_files,
    version_dir,
)
from bertserve.runtime.base import Backend
from bertserve.runtime.budget import DeviceSlots, thread_shares
from bertserve.runtime.errors import BackendError
from bertserve.runtime.memory import memory_limit_bytes, resident_bytes
from bertserve.runtime.selection import BackendFactory, BackendLoader
from bertserve.runtime.shapes import padding_plan
from bertserve.service.batching import BatchLimits, DynamicBatcher
from bertserve.service.errors import (
    ModelNotFoundError,
    NotReadyError,
    StartupError,
    UnsupportedTaskError,
)
from bertserve.service.limits import RequestLimits
from bertserve.service.metrics import Metrics
from bertserve.service.pipeline import PIPELINES, ModelParts, Pipeline
from bertserve.service.settings import Settings
from bertserve.service.tokenization import TextTokenizer

log = logging.getLogger(__name__)

P = TypeVar("P", bound=Pipeline)

# Routes without a model in their path (TEI's, OpenAI's): role -> (setting, the tasks whose one
# served model is the default, the tasks a model named in the setting may have)
DEFAULT_ROLES: dict[str, tuple[str, tuple[Task, ...], tuple[Task, ...]]] = {
    "embedding": ("default_embedding_model", (Task.FEATURE_EXTRACTION,), (Task.FEATURE_EXTRACTION,)),
    "classification": (
        "default_classification_model",
        (Task.TEXT_CLASSIFICATION,),
        (Task.TEXT_CLASSIFICATION, Task.RERANK),
    ),
    "rerank": (
        "default_rerank_model",
        (Task.RERANK,),
        (Task.RERANK, Task.FEATURE_EXTRACTION, Task.TEXT_CLASSIFICATION),
    ),
}

# `instances: auto` (the default) opens the adaptive layout only for the backend it was measured on
# (ONNX Runtime CPU, 2 cores: docs/benchmarks.md), for at most this many threads (one more copy of
# the weights per thread), and only while those copies fit in this share of the memory left.
AUTO_ADAPTIVE_BACKENDS = frozenset({"onnxruntime-cpu"})
AUTO_ADAPTIVE_MAX_THREADS = 4
AUTO_ADAPTIVE_MEMORY_SHARE = 0.25

WARMUP_FIRST_BACKOFF_S = 0.5
WARMUP_MAX_BACKOFF_S = 30.0
RETIRE_MARGIN_S = 5.0  # beyond the request timeout, before a replaced pipeline is stopped anyway

# The pipelines the current request took from the registry (set by `admit`, filled by `get`).
_HELD: ContextVar[list[Pipeline] | None] = ContextVar("bertserve_held_pipelines", default=None)


@dataclass(frozen=True, slots=True)
class NarrowSessions:
    """The adaptive layout's single-thread sessions beside a model's wide one: their factory and
    how many (one per thread of the model). `auto`: only if `auto_adaptive` allows it once the
    wide session is open (its backend kind and its memory are known then)."""

    factory: BackendFactory
    count: int
    auto: bool = False


def auto_adaptive(
    backend: str, threads: int, session_bytes: int | None, resident: int | None, limit: int | None
) -> str | None:
    """Why `instances: auto` serves a model from one session; None: open the adaptive layout.
    `session_bytes`: what the wide session took (each narrow one holds as much); `resident` and
    `limit`: the process's memory now and the most it may use."""
    if backend not in AUTO_ADAPTIVE_BACKENDS:
        return f"the adaptive layout is measured on {', '.join(sorted(AUTO_ADAPTIVE_BACKENDS))} only"
    if threads < 2:
        return f"{threads} thread: nothing to split"
    if threads > AUTO_ADAPTIVE_MAX_THREADS:
        return f"{threads} threads: {threads} more copies of the weights; set instances to choose"
    if session_bytes is None or resident is None or limit is None:
        return "the process's memory cannot be read"
    extra = threads * session_bytes
    room = AUTO_ADAPTIVE_MEMORY_SHARE * max(0, limit - resident)
    if extra > room:
        return (
            f"{threads} more sessions would take ~{extra >> 20} MiB, more than "
            f"{AUTO_ADAPTIVE_MEMORY_SHARE:.0%} of the {max(0, limit - resident) >> 20} MiB left"
        )
    return None


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What a reload did to one model: `loaded` (a new version or configuration serves now),
    `unchanged` (model.yaml is as served), `failed` (the served one stays; `error` says why)."""

    name: str
    result: Literal["loaded", "unchanged", "failed"]
    version: int
    error: str | None = None


def config_fingerprint(repo: Path, name: str) -> str:
    """sha256 of a model's model.yaml, which names the default version and the sha256 of every
    file: any new version or re-export changes it."""
    return hashlib.sha256((repo / name / MODEL_CONFIG_FILE).read_bytes()).hexdigest()


class DrainState:
    """Shared by the registry (which starts the drain), the admission middleware (which notes
    requests that still arrive) and the shutdown sequence in `api.server` (which ends the drain
    once nothing is in flight and clients have gone quiet). Plain attributes: set from a signal
    handler."""

    def __init__(self) -> None:
        self.draining = False
        self.last_request = time.monotonic()  # arrival of the latest request seen while draining

    def quiet_for(self) -> float:
        return time.monotonic() - self.last_request


class ModelRegistry:
    def __init__(
        self, settings: Settings, metrics: Metrics, backend_factory: BackendFactory | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        # None: the runtime's own loader, opened with each model's share of the threads.
        self._factory = backend_factory
        self._loader = BackendLoader(settings.runtime_options())
        self.threads: dict[str, int] = {}  # intra-op threads per model, fixed at load
        # NOTE: one set of slots for the whole process: every model's batch worker takes one
        # around its backend call, so at most `max_concurrent_batches` batches run at once.
        limit = settings.max_concurrent_batches
        self.slots = DeviceSlots(limit) if limit is not None else None
        self._pipelines: dict[str, Pipeline] = {}
        self._loaded = False
        self._ready = asyncio.Event()
        self._warmup_errors: dict[str, str] = {}
        self._given_up: dict[str, str] = {}  # models whose warm-up failed `warmup_attempts` times
        self._stopping = False
        self._drain_deadline: float | None = None
        self.drain = DrainState()
        self._inflight = 0  # inference requests being answered; a drain waits for them
        self._idle = asyncio.Event()
        self._idle.set()
        # every served version of each model; _pipelines holds each model's default one
        self._served: dict[str, ServedModel] = {}
        self._fingerprints: dict[str, str] = {}  # model.yaml as loaded, per model
        self.reload_errors: dict[str, str] = {}  # the last failed reload of a model, until one succeeds
        self._reload_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        """Read, verify and open every model. Raises `StartupError` with what to fix."""
        names = self._model_names()
        # NOTE: the compute budget is divided among the models named, before any is opened; a
        # model skipped later (a task this version does not serve) leaves its share unused.
        self.threads = thread_shares(names, self.settings.cpus, self.settings.intra_op_threads)
        try:
            for name in names:
                fingerprint = self._fingerprint(name)
                served = self._load_one(name, explicit=self.settings.models is not None)
                if served is not None:
                    self._set_served(name, served)
                    self._fingerprints[name] = fingerprint
                    self.metrics.backend_threads.labels(name).set(self.threads[name])
        except BaseException:
            self.close()
            self._pipelines.clear()
            raise
        if not self._pipelines:
            raise StartupError(f"no servable model in {self.settings.repo}")
        self._check_defaults()
        self._loaded = True

    def _check_defaults(self) -> None:
        """A default model named in the settings must be served and able to do its routes' work."""
        for setting, _, tasks in DEFAULT_ROLES.values():
            name = getattr(self.settings, setting)
            if name is None:
                continue
            pipeline = self._pipelines.get(name)
            if pipeline is None or pipeline.config.task not in tasks:
                served = ", ".join(f"{n} ({p.config.task})" for n, p in self._pipelines.items())
                raise StartupError(
                    f"{setting} is {name!r}, which is not a served {' or '.join(tasks)} model "
                    f"(served: {served}); name one of those or leave it unset"
                )

    def default_model(self, role: str) -> str:
        """The model a route without a model in its path uses for `role` (`DEFAULT_ROLES`): the
        setting's, else the one served model of the role's tasks (404 when none or several)."""
        setting, tasks, _ = DEFAULT_ROLES[role]
        name = getattr(self.settings, setting)
        if name is not None:
            return str(name)
        candidates = [n for n, p in self._pipelines.items() if p.config.task in tasks]
        if role == "rerank" and not candidates:
            return self.default_model("embedding")  # a bi-encoder ranks by cosine
        if len(candidates) == 1:
            return candidates[0]
        what = "no" if not candidates else f"{len(candidates)}"
        raise ModelNotFoundError(
            f"{what} served {' or '.join(tasks)} models for this route; set BERTSERVE_{setting.upper()} "
            "to choose one"
        )

    def _model_names(self) -> list[str]:
        repo = self.settings.repo
        if not repo.is_dir():
            raise StartupError(f"model repository {repo} does not exist; run `bertserve export` first")
        available = list_models(repo)
        if self.settings.models is None:
            if not available:
                raise StartupError(f"no models in {repo} (no */model.yaml); run `bertserve export` first")
            return available
        missing = [name for name in self.settings.models if name not in available]
        if missing:
            raise StartupError(f"model(s) {', '.join(missing)} not found in {repo} (available: {available})")
        return list(dict.fromkeys(self.settings.models))

    def _load_one(self, name: str, *, explicit: bool) -> ServedModel | None:
        """Every served version of a model (`ModelConfig.served_versions`: the default one, and
        those its version_policy names); None for a task this version does not serve (skipped
        unless the model was named explicitly)."""
        repo = self.settings.repo
        try:
            config = load_model_config(repo, name)
        except RepositoryError as exc:
            raise StartupError(str(exc)) from None
        pipeline_cls = PIPELINES.get(config.task)
        if pipeline_cls is None:
            if explicit:
                raise StartupError(f"model {name!r}: task {config.task} is not served by this version")
            log.warning("model %s: task %s is not served by this version; skipped", name, config.task)
            return None
        opened: dict[int, Pipeline] = {}
        try:
            for version in config.served_versions:
                opened[version] = self._open_version(name, config.as_version(version))
        except BaseException:
            for pipeline in opened.values():
                _release(pipeline)
            raise
        return ServedModel(config.default_version, opened)

    def _open_version(self, name: str, config: ModelConfig) -> Pipeline:
        repo, version = self.settings.repo, config.default_version
        vdir = version_dir(repo, name, version)
        try:
            # A version folder that is a symlink out of the repository would carry every file
            # check below (which only looks inside the folder) along with it.
            resolve_inside(repo, f"{name}/{version}")
            layout = self.settings.instances_for(config)
            threads = self.threads[name]
            narrow = None
            if layout == "adaptive" and threads < 2:
                log.warning(
                    "model %s: instances=adaptive needs 2 threads or more, it has %d: one session",
                    name,
                    threads,
                )
            elif layout in ("adaptive", "auto"):
                narrow = NarrowSessions(self._narrow_factory(), threads, auto=layout == "auto")
            return open_pipeline(
                self.settings,
                self.metrics,
                config,
                vdir,
                self._backend_factory(name, config),
                slots=self.slots,
                narrow=narrow,
            )
        except BackendError as exc:  # the runtime's messages name the model where it matters
            raise StartupError(str(exc)) from None
        except (RepositoryError, ValueError, OSError) as exc:
            raise StartupError(f"model {name!r}: {exc}") from None
        except StartupError:
            raise
        except Exception as exc:  # runtime-specific load errors (corrupt graph, bad IR, ...)
            raise StartupError(f"model {name!r}: could not load: {type(exc).__name__}: {exc}") from None

    def _fingerprint(self, name: str) -> str:
        try:
            return config_fingerprint(self.settings.repo, name)
        except OSError as exc:
            raise StartupError(f"model {name!r}: cannot read its {MODEL_CONFIG_FILE}: {exc}") from None

    # --- reload -----------------------------------------------------------------------------

    async def reload(self, names: Sequence[str] | None = None) -> list[ReloadOutcome]:
        """Re-read the served models (`names`, default all) from the repository. A model whose
        model.yaml changed (a new default version, a re-export, a new configuration) is loaded and
        warmed up beside the served one; traffic switches only once it answered its warm-up, the
        requests that already hold the old one finish on it, and the old one is then stopped and
        freed. A model that fails to load or warm up leaves the served one in place: the outcome,
        the log, `bertserve_model_reloads_total{result="failed"}` and GET /v1/models say why.
        One reload at a time; adding or removing models needs a restart."""
        if not self._ready.is_set() or self._stopping or self.drain.draining:
            raise NotReadyError("models are loading, warming up or shutting down; reload once ready")
        async with self._reload_lock:
            targets = list(self._pipelines) if names is None else list(names)
            for name in targets:
                self.describe(name)  # 404 before any work for a model that is not served
            return [await self._reload_one(name) for name in targets]

    async def _reload_one(self, name: str) -> ReloadOutcome:
        old = self._pipelines[name]
        try:
            fingerprint = await asyncio.to_thread(self._fingerprint, name)
        except StartupError as exc:
            return self._reload_failed(name, old, str(exc))
        if fingerprint == self._fingerprints.get(name):
            return ReloadOutcome(name, "unchanged", old.config.default_version)
        try:
            loaded = await asyncio.to_thread(self._load_one, name, explicit=True)
        except StartupError as exc:
            return self._reload_failed(name, old, str(exc))
        assert loaded is not None  # explicit: an unservable task raises
        new = loaded.default
        if new.config.task != old.config.task:
            await asyncio.gather(*(p.stop(timeout_s=0) for p in loaded.versions.values()))
            problem = (
                f"the new configuration is a {new.config.task} model, the served one a "
                f"{old.config.task} model; changing a model's task needs a restart"
            )
            return self._reload_failed(name, old, problem)
        loop = asyncio.get_running_loop()
        for pipeline in loaded.versions.values():
            pipeline.start(loop)
        try:
            for pipeline in loaded.versions.values():
                await asyncio.wait_for(pipeline.warm_up(), self.settings.request_timeout_ms / 1000)
        except Exception as exc:  # any failure keeps the served versions
            await asyncio.gather(*(p.stop(timeout_s=1.0) for p in loaded.versions.values()))
            return self._reload_failed(name, old, f"warm-up failed: {type(exc).__name__}: {exc}")
        replaced = list(self._served[name].versions.values())
        self._set_served(name, loaded)
        self._fingerprints[name] = fingerprint
        self.reload_errors.pop(name, None)
        self.metrics.model_reloads.labels(name, "loaded").inc()
        log.info(
            "model %s: version %d serves now (was %d; served versions %s); the replaced ones retire "
            "once their requests finish",
            name,
            new.config.default_version,
            old.config.default_version,
            sorted(loaded.versions),
        )
        for pipeline in replaced:
            task = asyncio.create_task(self._retire(name, pipeline), name=f"retire-{name}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        return ReloadOutcome(name, "loaded", new.config.default_version)

    def _reload_failed(self, name: str, served: Pipeline, error: str) -> ReloadOutcome:
        self.reload_errors[name] = error
        self.metrics.model_reloads.labels(name, "failed").inc()
        log.error(
            "model %s: reload failed, version %d keeps serving: %s",
            name,
            served.config.default_version,
            error,
        )
        return ReloadOutcome(name, "failed", served.config.default_version, error)

    async def _retire(self, name: str, old: Pipeline) -> None:
        """Stop a replaced pipeline once no request holds it (bounded by the request timeout:
        a request holding it longer has timed out already)."""
        deadline = time.monotonic() + self.settings.request_timeout_ms / 1000 + RETIRE_MARGIN_S
        while old.users > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if old.users:
            log.warning(
                "model %s: %d request(s) still hold the replaced version; stopping it", name, old.users
            )
        await old.stop(timeout_s=RETIRE_MARGIN_S)
        log.info("model %s: version %d retired", name, old.config.default_version)

    async def watch(self, interval_s: float) -> None:
        """Poll the repository every `interval_s` and reload what changed (runs until cancelled)."""
        while True:
            await asyncio.sleep(interval_s)
            if not self._ready.is_set() or self._stopping or self.drain.draining:
                continue
            try:
                await self.reload()
            except Exception:  # the watcher must outlive any one bad poll
                log.exception("repository poll failed")

    def _backend_factory(self, name: str, config: ModelConfig) -> BackendFactory:
        """The injected factory, else the runtime's loader with this model's share of the threads
        (split between its instances unless `intra_op_threads` names each one's)."""
        if self._factory is not None:
            return self._factory
        threads = self.threads[name]
        instances = self.settings.instances_for(config)
        if self.settings.intra_op_threads is None and isinstance(instances, int):
            threads = max(1, threads // instances)
        return self._loader.with_options(self.settings.runtime_options(intra_op_threads=threads))

    def _narrow_factory(self) -> BackendFactory:
        """The adaptive layout's single-thread sessions (the injected factory, when there is one)."""
        if self._factory is not None:
            return self._factory
        return self._loader.with_options(self.settings.runtime_options(intra_op_threads=1))

    def _set_served(self, name: str, served: ServedModel) -> None:
        """Serve `served` for `name`: a request sees the old versions or the new, never a mix."""
        self._served[name] = served
        self._pipelines[name] = served.default

    def _all(self) -> list[tuple[str, Pipeline]]:
        """(name, pipeline) of every served version of every model."""
        return [(name, p) for name, served in self._served.items() for p in served.versions.values()]

    def start(self) -> None:
        """Start every batcher on the running event loop; requests are accepted from now on."""
        loop = asyncio.get_running_loop()
        for _, pipeline in self._all():
            pipeline.start(loop)

    async def warm_up(self) -> None:
        """One inference per model through every stage; ready only when all succeeded. A failed
        warm-up is retried with backoff (a backend may need a moment, e.g. a GPU still being
        initialised); after `warmup_attempts` the model is given up and liveness fails, so the
        orchestrator restarts the process rather than keeping a pod that can never be ready."""
        # NOTE: one model after the other, never concurrently: the first inferences of two
        # OpenVINO models run at the same time in two batcher threads deadlock inside OpenVINO's
        # Python bindings (both threads stop for good in its data dispatcher, seen with the demo
        # models); once one inference has completed in the process, concurrent ones are safe.
        for name, pipeline in self._all():
            await self._warm_up_one(name, pipeline)
        if not self._warmup_errors:
            self._ready.set()
            log.info("ready: %s", ", ".join(self._pipelines))

    async def _warm_up_one(self, name: str, pipeline: Pipeline) -> None:
        attempts = self.settings.warmup_attempts
        delay = WARMUP_FIRST_BACKOFF_S
        for attempt in range(1, attempts + 1):
            try:
                await pipeline.warm_up()
            except Exception as exc:
                self._warmup_errors[name] = f"{type(exc).__name__}, attempt {attempt} of {attempts}"
                if attempt == attempts:
                    log.error("model %s: warm-up failed %d times, giving up: %s", name, attempts, exc)
                    self._given_up[name] = f"warm-up failed {attempts} times ({type(exc).__name__})"
                    return
                log.warning("model %s: warm-up failed (%s); retrying in %.1f s", name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, WARMUP_MAX_BACKOFF_S)
            else:
                self._warmup_errors.pop(name, None)
                return

    def liveness_problems(self) -> list[str]:
        """What no waiting can fix: a batch worker that died, a model whose warm-up was given up.
        /health/live reports them so the orchestrator restarts the process."""
        problems = [f"model {name}: {why}" for name, why in self._given_up.items()]
        for name, pipeline in self._all():
            crash = pipeline.batcher.crash
            if crash is not None:
                problems.append(f"model {name}: batch worker crashed ({type(crash).__name__})")
        return problems

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout_s)

    def begin_drain(self, deadline: float | None = None) -> None:
        """Shutdown has begun: readiness turns 503 and new requests are refused from now on,
        while the requests already admitted run to completion. `deadline` (time.monotonic())
        also bounds `stop`. NOTE: called from a signal handler: it only sets attributes."""
        self._drain_deadline = deadline
        self.drain.last_request = time.monotonic()
        self.drain.draining = True

    @property
    def draining(self) -> bool:
        return self.drain.draining

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no admitted request is in flight; False when `timeout_s` ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    @property
    def inflight(self) -> int:
        return self._inflight

    @contextmanager
    def admit(self) -> Iterator[None]:
        """One inference request from admission to answer. Refuses (503) once draining."""
        if self.drain.draining or self._stopping:
            raise NotReadyError("the service is shutting down; retry on another instance")
        self._inflight += 1
        self._idle.clear()
        held: list[Pipeline] = []
        token = _HELD.set(held)
        try:
            yield
        finally:
            _HELD.reset(token)
            for pipeline in held:
                pipeline.users -= 1
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Run what is queued, then stop the batchers (each waits at most `timeout_s`)."""
        self._stopping = True
        self._ready.clear()
        if self._drain_deadline is not None:
            timeout_s = max(0.0, min(timeout_s, self._drain_deadline - time.monotonic()))
        await asyncio.gather(*(p.stop(timeout_s) for _, p in self._all()), *self._retiring)

    def close(self) -> None:
        """Release what `load` opened when the server never started (e.g. the port was taken)."""
        for _, pipeline in self._all():
            _release(pipeline)

    # --- queries ----------------------------------------------------------------------------

    def readiness_problems(self) -> list[str]:
        if self._stopping or self.drain.draining:
            return ["shutting down"]
        problems = [f"model {name}: warm-up failed ({err})" for name, err in self._warmup_errors.items()]
        if not self._ready.is_set() and not problems:
            problems.append("models are loading or warming up")
        for name, pipeline in self._all():
            problem = pipeline.batcher.health_problem
            if problem is not None:
                which = (
                    name
                    if pipeline is self._pipelines.get(name)
                    else f"{name} version {pipeline.config.default_version}"
                )
                problems.append(f"model {which}: {problem}")
        return problems

    @property
    def names(self) -> list[str]:
        return list(self._pipelines)

    def __contains__(self, name: object) -> bool:
        return name in self._pipelines

    def pipelines(self) -> list[Pipeline]:
        return list(self._pipelines.values())

    def describe(self, name: str, version: int | None = None) -> Pipeline:
        """A served model (its default version, or `version`) for metadata, ready or not."""
        served = self._served.get(name)
        if served is None:
            # NOTE: the name comes from the request path: never echoed (messages carry no input).
            raise ModelNotFoundError("no such model is served; GET /v1/models lists the served ones")
        if version is None:
            return served.default
        pipeline = served.versions.get(version)
        if pipeline is None:
            listed = ", ".join(map(str, served.versions))
            raise ModelNotFoundError(
                f"version {version} of this model is not served (served: {listed}); its model.yaml "
                "version_policy chooses the served versions"
            )
        return pipeline

    def served_versions(self, name: str) -> list[int]:
        self.describe(name)
        return sorted(self._served[name].versions)

    def get(self, name: str, kind: type[P], *others: type[P], version: int | None = None) -> P:
        """A served model of the given pipeline kind (or one of `others`), ready for inference:
        its default version, or `version`."""
        pipeline = self.describe(name, version)
        kinds = (kind, *others)
        if not isinstance(pipeline, kinds):
            wanted = " or ".join(str(k.task) for k in kinds)
            raise UnsupportedTaskError(
                f"model {name!r} is a {pipeline.config.task} model; this endpoint needs {wanted}"
            )
        if not self._ready.is_set():
            raise NotReadyError("the service is not ready: " + "; ".join(self.readiness_problems()))
        held = _HELD.get()
        if held is not None and not any(p is pipeline for p in held):
            held.append(pipeline)
            pipeline.users += 1
        return pipeline

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set()


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A model's served versions (version -> pipeline; each pipeline's config names its own
    version as default_version) and the one unversioned routes answer with."""

    default_version: int
    versions: dict[int, Pipeline]

    @property
    def default(self) -> Pipeline:
        return self.versions[self.default_version]


def _release(pipeline: Pipeline) -> None:
    """Free what opening a pipeline took, when it never served (or the server never started)."""
    for backend in pipeline.batcher.backends:
        backend.close()
    pool = pipeline.parts.pool
    if isinstance(pool, ThreadPoolExecutor):
        pool.shutdown(wait=False, cancel_futures=True)


def open_pipeline(
    settings: Settings,
    metrics: Metrics,
    config: ModelConfig,
    vdir: Path,
    factory: BackendFactory,
    *,
    slots: DeviceSlots | None = None,
    narrow: NarrowSessions | None = None,
) -> Pipeline:
    """One model version wired exactly as the service serves it: its verified tokenizer, the
    backend `factory` opens, the batcher and tokenization pool, in its task's pipeline class.
    `narrow`: the adaptive layout's single-thread sessions beside the one `factory` opens with
    all of the model's threads (for `instances: auto`, if `auto_adaptive` allows).

    The registry serves what this returns; `bertserve.evaluation.scoring` scores it offline, so
    the export gates and `make demo-eval` measure the served pipeline itself."""
    pipeline_cls = PIPELINES[config.task]
    # model.yaml must list tokenizer.json among the tokenizer files (VersionConfig), so this checks
    # that it exists inside the folder and is the file that was exported.
    verify_files(vdir, config.version.tokenizer_files)
    tokenizer = TextTokenizer(resolve_inside(vdir, TOKENIZER_FILE), config.max_length)
    instances = settings.instances_for(config)
    before = resident_bytes()
    backends = [factory(config, vdir)]
    try:
        if narrow is not None and narrow.auto:
            narrow = _auto_narrow(config.name, backends[0], narrow, before)
        if narrow is not None:
            backends += [narrow.factory(config, vdir) for _ in range(narrow.count)]
        elif isinstance(instances, int):  # (adaptive or auto without `narrow`: one session)
            backends += [factory(config, vdir) for _ in range(instances - 1)]
    except BaseException:
        for opened in backends:
            opened.close()
        raise
    return pipeline_cls(
        model_parts(
            settings,
            metrics,
            config,
            tokenizer,
            backends[0],
            slots=slots,
            instances=backends[1:] if narrow is None else (),
            narrow=backends[1:] if narrow is not None else (),
        )
    )


def _auto_narrow(
    model: str, wide: Backend, narrow: NarrowSessions, before: int | None
) -> NarrowSessions | None:
    """`instances: auto` decided, once the wide session is open: the narrow sessions, or None."""
    resident = resident_bytes()
    session = None if before is None or resident is None else max(0, resident - before)
    why_not = auto_adaptive(wide.name, narrow.count, session, resident, memory_limit_bytes())
    if why_not is not None:
        log.info("model %s: one backend session (instances auto: %s)", model, why_not)
        return None
    log.info(
        "model %s: adaptive layout (instances auto): 1 session x %d threads for a lone request, "
        "%d x 1 thread under load, ~%d MiB more (instances: 1 saves it)",
        model,
        narrow.count,
        narrow.count,
        (narrow.count * (session or 0)) >> 20,
    )
    return narrow


def model_parts(
    settings: Settings,
    metrics: Metrics,
    config: ModelConfig,
    tokenizer: TextTokenizer,
    backend: Backend,
    *,
    slots: DeviceSlots | None = None,
    instances: Sequence[Backend] = (),
    narrow: Sequence[Backend] = (),
) -> ModelParts:
    """`slots`: the compute slots shared by the process's models (`ModelRegistry.slots`);
    `instances`: more sessions of the model beside `backend` (`Settings.instances_for`);
    `narrow`: the adaptive layout's single-thread sessions beside the wide `backend`."""
    b = settings.batching_for(config.batching)
    limits = BatchLimits(
        b.max_batch_size,
        b.max_batch_tokens,
        b.max_queue_delay_ms / 1000,
        b.max_queue_size,
        settings.padding_efficiency_for(backend.name),
        # TensorRT's profile buckets, planned from the same limits as the loader's engine
        padding=padding_plan(backend.name, b, config.max_length),
    )
    try:
        batcher = DynamicBatcher(
            config.name,
            backend,
            limits,
            config.pad_token_id,
            metrics,
            unhealthy_after_failures=settings.unhealthy_after_failures,
            # A batch still running when every request in it has timed out is stuck.
            stalled_after_s=settings.request_timeout_ms / 1000,
            slots=slots,
            instances=instances,
            narrow=narrow,
        )
    except ValueError as exc:
        for opened in (backend, *instances, *narrow):
            opened.close()
        raise StartupError(f"model {config.name!r}: {exc}") from None
    s = settings
    return ModelParts(
        config=config,
        tokenizer=tokenizer,
        backend=backend,
        batcher=batcher,
        # NOTE: one pool per model: a request that keeps a tokenization thread busy (bounded by
        # the request limits) delays only its own model's requests, never another model's.
        pool=ThreadPoolExecutor(s.tokenizer_threads, thread_name_prefix=f"tokenize-{config.name}"),
        metrics=metrics,
        request_timeout_s=s.request_timeout_ms / 1000,
        limits=RequestLimits.for_model(s.max_request_sequences, s.max_request_tokens, b.max_queue_size),
        ner_stride=s.ner_stride,
        inline_chars=s.inline_tokenize_chars,
    )
