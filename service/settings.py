"""The service's one configuration object.

Every field is a `BERTSERVE_<FIELD>` environment variable; `bertserve serve` flags are passed as
init arguments and therefore win over the environment. Nothing is read at import time: a
`Settings()` is built by `run_server` (or a test) when it is needed.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bertserve.modelrepo import BatchingConfig, ModelConfig, Precision
from bertserve.runtime.base import BackendKind, min_padding_efficiency
from bertserve.runtime.options import OpenVinoHint, RuntimeOptions, default_tensorrt_cache_dir
from bertserve.service.logs import LogFormat

__all__ = ["DEFAULT_ENV_FILE", "BackendKind", "SettingFlag", "Settings", "available_cpus", "setting_flags"]

DEFAULT_ENV_FILE = Path(".env")  # BackendKind: the runtime's, re-used here


def available_cpus() -> int:
    """CPUs this process may run on (respects taskset/cgroup cpusets, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class Settings(BaseSettings):
    # NOTE: a dotenv file is read only when one is passed (`bertserve serve` passes `.env` unless
    # told otherwise: `Settings.for_serve`); of its lines only BERTSERVE_* ones are read, so a file
    # shared with docker compose or other tools may hold other keys, while a misspelt BERTSERVE_
    # key is refused like a misspelt environment variable.
    model_config = SettingsConfigDict(
        env_prefix="BERTSERVE_", extra="forbid", frozen=True, dotenv_filtering="match_prefix"
    )

    # --- what to serve -------------------------------------------------------------------------
    repo: Path = Field(Path("models"), description="Model repository written by `bertserve export`.")
    models: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="Models to serve (comma-separated in the environment). Default: every model in "
        "the repository, so one image can serve a whole repository without listing names.",
    )
    backend: BackendKind = Field(
        BackendKind.AUTO,
        description="Inference backend. `auto` takes the fastest this machine can run (TensorRT, "
        "CUDA, OpenVINO when IR exists, ONNX Runtime CPU); naming one makes startup fail loudly "
        "when it is unavailable instead of silently running slower.",
    )
    precision: Precision | Literal["auto"] = Field(
        "auto",
        description="auto, fp32, int8 or bf16. `auto` serves, per model, the fastest precision this CPU "
        "runs well (int8 with VNNI, bf16 with AVX-512-BF16/AMX) whose artifact passed the export's "
        "accuracy gate, and logs why; naming one forces it (a CPU without its feature is a warning).",
    )

    # --- network -------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Bind address; loopback unless deliberately exposed.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port.")
    repository_poll_s: float | None = Field(
        None,
        gt=0,
        description="Re-read the served models' model.yaml this often (seconds) and reload what changed "
        "(a new version or re-export) without a restart; off unless set. POST /v1/repository/reload "
        "does the same on demand (it needs BERTSERVE_API_KEY).",
    )
    otel_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP collector for OpenTelemetry traces (e.g. http://127.0.0.1:4318): spans for "
        "each request (tokenize, queue, postprocess) and each batch (inference, linked to its requests); "
        "off unless set; needs the `otel` extra.",
    )
    otel_service_name: str = Field("bertserve", description="service.name of the traces.")
    grpc_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of the Open Inference Protocol over gRPC (same host, same models, limits and "
        "API key as HTTP); off unless set.",
    )
    access_log: bool = Field(
        False,
        description="One access-log line per request (method, path, status, duration, request id; "
        "for inference also model, endpoint, sequences, tokens); off by default because it costs "
        "throughput.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level of the service and uvicorn."
    )
    log_format: LogFormat = Field(
        "text",
        description="text (one line: time, level, logger, [request id], message) or json (one "
        "object a line with the same fields, and the access log's as keys).",
    )

    # --- access control ------------------------------------------------------------------------
    api_key: SecretStr | None = Field(
        None,
        description="When set, every endpoint except /health/* (and /metrics with metrics_public) "
        "requires `Authorization: Bearer <key>`. Without it anyone who reaches the port can run "
        "inference, so binding beyond loopback without a key logs a warning.",
    )
    metrics_public: bool = Field(
        False,
        description="Serve /metrics without the API key, for a Prometheus that cannot send one. "
        "Metrics carry no input text, only model names and counts.",
    )
    docs_public: bool = Field(
        True,
        description="Serve /docs, /redoc and /openapi.json without the API key. They describe the "
        "static contract of this version (routes and schemas, no model names, no data), and the "
        "browser viewers cannot send a key; set false to require it for them too.",
    )
    cors_origins: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="Browser origins allowed to call the API (comma-separated in the environment). "
        "Default: none, so no CORS headers are sent and browsers refuse cross-origin calls.",
    )
    drain_timeout_s: float = Field(
        20,
        gt=0,
        description="After SIGTERM: readiness turns 503 and new requests are refused at once, "
        "in-flight requests get this long to finish before the process exits (keep it below the "
        "orchestrator's grace period).",
    )

    # --- backend tuning ------------------------------------------------------------------------
    cpu_budget: int | None = Field(
        None,
        ge=1,
        description="Threads the backends of all served models share, divided evenly among them "
        "(at least 1 each): two models' batches then run at once on cores of their own instead "
        "of oversubscribing the same ones, and a single model gets them all. Default: the CPUs "
        "available to the process (its cpuset); under a CFS CPU limit rather than a cpuset, set it "
        "to the limit. Lower it when other work shares the box.",
    )
    intra_op_threads: int | None = Field(
        None,
        ge=1,
        description="Threads one inference of one model may use (ORT intra-op, OpenVINO "
        "inference threads). Default: the model's share of cpu_budget. Setting it gives every "
        "model this many, whatever the budget (e.g. every CPU, with max_concurrent_batches=1).",
    )
    instances: Annotated[int, Field(ge=1)] | Literal["adaptive", "auto"] | None = Field(
        None,
        description="Backend sessions per model, each with its own batch worker cutting from the "
        "model's one queue, the model's threads split between them (as Triton's instance groups): "
        "two batches then run at once instead of one on twice the threads, which wins under load "
        "where Python shares the cores with the backend (measured on 2 cores: docs/benchmarks.md) "
        "and costs batch-1 latency. With intra_op_threads set, each session gets that many. "
        "`adaptive`: both, never at once: one session with all the model's threads runs a lone "
        "request, one single-thread session per thread runs batches side by side whenever two or "
        "more requests wait. Costs one more copy of the model's weights in memory per session. "
        "`auto`: adaptive for an ONNX Runtime CPU model of 2 to 4 threads whose extra sessions fit "
        "in a quarter of the memory left (the cgroup's limit, else the machine's), else 1. "
        "Default: each model's `instances` in model.yaml, else auto; set, it applies to every model.",
    )
    max_concurrent_batches: int | None = Field(
        None,
        ge=1,
        description="Batches that may run at the same time, all models together: a process-wide, "
        "first-come first-served limit around the backends. Default: no limit, each model's "
        "batches run as soon as they are cut, on its share of the threads. 1 makes the models take "
        "turns on the whole device: for one GPU, or with intra_op_threads set to every CPU.",
    )
    inter_op_threads: int = Field(
        1, ge=1, description="ORT inter-op threads; BERT graphs are sequential, so 1 avoids oversubscription."
    )
    openvino_hint: OpenVinoHint = Field(
        "LATENCY",
        description="OpenVINO performance hint. LATENCY suits the batcher, which runs one batch "
        "at a time on all cores; THROUGHPUT only pays off with several infer requests in flight.",
    )
    openvino_streams: int | None = Field(
        None, ge=1, description="OpenVINO CPU streams; default: what the performance hint chooses."
    )
    tensorrt_fp16: bool = Field(
        True, description="Let TensorRT build fp16 kernels: about 2x faster on tensor cores, ~1e-3 drift."
    )
    tensorrt_cache_dir: Path = Field(
        default_factory=default_tensorrt_cache_dir,
        description="Where TensorRT engines and timing caches persist, so restarts skip the "
        "minutes-long engine build.",
    )
    cuda_device_id: int = Field(0, ge=0, description="GPU used by the CUDA and TensorRT providers.")

    # --- batching (None = the model's `batching` block in model.yaml) -------------------------
    max_batch_size: int | None = Field(
        None, ge=1, description="Sequences per executed batch at most; bounds latency of one batch."
    )
    max_batch_tokens: int | None = Field(
        None,
        ge=1,
        description="Padded tokens (batch x longest sequence) per batch at most; keeps memory and "
        "latency bounded when long inputs arrive together.",
    )
    max_queue_delay_ms: float | None = Field(
        None,
        ge=0,
        description="Longest time the oldest queued sequence waits for company while other "
        "requests are still being tokenized; trades a little latency for fuller batches.",
    )
    max_queue_size: int | None = Field(
        None,
        ge=1,
        description="Queued sequences per model before new requests get 429: fails fast under "
        "overload instead of letting every request time out.",
    )
    min_padding_efficiency: float | None = Field(
        None,
        ge=0,
        le=1,
        description="A batch stops growing when real / padded tokens would fall below this; the "
        "sequences left out form the next batch. CPUs pay for every padded token, so packing "
        "beats size there; GPUs run padding nearly for free. Default: 0.95 on CPU backends, 0.5 "
        "on GPU backends, 0 for the fake backend.",
    )
    request_timeout_ms: float = Field(
        10_000,
        gt=0,
        description="A request not answered within this time gets 504 and its queued sequences are "
        "dropped, so a backlog never runs work nobody waits for. A client may ask for less with "
        "the X-Request-Timeout-Ms header, never for more. A batch still running after this long "
        "counts as stuck: readiness turns 503 and new requests are refused until it returns.",
    )
    unhealthy_after_failures: int = Field(
        3, ge=1, description="Consecutive failed batches after which readiness reports 503."
    )
    warmup_attempts: int = Field(
        5,
        ge=1,
        description="Warm-up inferences tried per model (with backoff: 0.5 s, 1 s, 2 s, ...) before "
        "the model is given up: /health/live then fails too, so the orchestrator restarts the "
        "process instead of keeping a pod that can never become ready.",
    )

    # --- tokenization and input limits --------------------------------------------------------
    tokenizer_threads: int = Field(
        2,
        ge=1,
        description="Threads that tokenize requests off the event loop, overlapping with inference.",
    )
    inline_tokenize_chars: int = Field(
        512,
        ge=0,
        description="A request of at most this many characters is tokenized on the event loop "
        "(~0.3 ms of Rust tokenizer for 512), which costs less than the round trip through the "
        "tokenization threads; longer ones go to those threads. 0: always the threads.",
    )
    max_body_bytes: int = Field(
        2 * 1024 * 1024,
        ge=1,
        description="Request body size at most (413 above), checked from Content-Length before the "
        "body is read and counted while a chunked body streams in: bounds memory per connection.",
    )
    max_inputs: int = Field(32, ge=1, description="Inputs per request at most (413 above).")
    max_input_chars: int = Field(
        100_000, ge=1, description="Characters per input at most (413 above); bounds tokenizer work."
    )
    max_request_sequences: int = Field(
        1024,
        ge=1,
        description="Sequences (texts, sentences, windows of long texts) one request may turn into "
        "at most (413 above; never more than the model's max_queue_size, which a larger request "
        "could never fit). Counted as the request is segmented and tokenized, which stops as soon "
        "as the limit is passed: one client's input cannot decide the memory of the process.",
    )
    max_request_tokens: int = Field(
        65_536,
        ge=1,
        description="Tokens one request may send through the model at most, window overlaps "
        "included (413 above). Bounds the compute of one request: at the default a 2-core CPU "
        "runs a MiniLM in a few seconds, a BERT-base in about the default request timeout.",
    )
    max_inflight_requests: int = Field(
        256,
        ge=1,
        description="Inference requests the whole process handles at once, all models together "
        "(bodies being read included); beyond it requests get 429 at once, before their body is "
        "read: bounds the memory that many concurrent clients can pin.",
    )
    ner_stride: int = Field(
        128,
        ge=0,
        description="Tokens of overlap between consecutive windows over long texts (NER, and "
        "classification with long_text: windows), so every token is seen with context on both sides.",
    )

    # --- the routes other servers' clients speak (TEI, OpenAI, HF Inference API) ---------------
    default_embedding_model: str | None = Field(
        None,
        description="The model TEI's /embed (and /rerank without a cross-encoder, /tokenize, /info) "
        "answers with. Default: the one served feature-extraction model, if there is exactly one.",
    )
    default_classification_model: str | None = Field(
        None,
        description="The model TEI's /predict answers with. Default: the one served "
        "text-classification model, if there is exactly one.",
    )
    default_rerank_model: str | None = Field(
        None,
        description="The model TEI's /rerank answers with. Default: the one served rerank "
        "(cross-encoder) model, else the default embedding model (cosine ranking).",
    )

    @field_validator("models", "cors_origins", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):
            names = [name.strip() for name in value.split(",") if name.strip()]
            return names or None
        return value

    @field_validator("api_key")
    @classmethod
    def _usable_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None  # an empty BERTSERVE_API_KEY (e.g. an unset compose variable) means no key
        if len(value.get_secret_value()) < 16:
            raise ValueError("api_key must be at least 16 characters")
        return value

    @field_validator("precision", mode="before")
    @classmethod
    def _auto_when_unset(cls, value: object) -> object:
        # None (the Python callers' "no choice") and an empty variable (an unset compose one) mean auto
        return "auto" if value is None or value == "" else value

    @field_validator("precision")
    @classmethod
    def _servable_precision(cls, value: Precision | Literal["auto"]) -> Precision | Literal["auto"]:
        if value == Precision.FP16:
            raise ValueError("precision must be auto, fp32, int8 or bf16 (fp16 is chosen per backend)")
        return value

    @classmethod
    def for_serve(cls, flags: Mapping[str, Any], env_file: Path | None = DEFAULT_ENV_FILE) -> Settings:
        """The settings of `bertserve serve`: its flags, then BERTSERVE_* environment variables,
        then the BERTSERVE_* lines of `env_file` (when it exists), then the defaults."""
        return cls(_env_file=env_file, **flags)

    def instances_for(self, config: ModelConfig) -> int | Literal["adaptive", "auto"]:
        """Backend sessions for a model: this setting when set, else its model.yaml's, else auto."""
        if self.instances is not None:
            return self.instances
        return config.instances or "auto"

    def padding_efficiency_for(self, backend: str) -> float:
        """`min_padding_efficiency` if set, else what the backend (named by its kind) says."""
        if self.min_padding_efficiency is not None:
            return self.min_padding_efficiency
        return min_padding_efficiency(backend)

    @property
    def threads(self) -> int:
        """Intra-op threads of a model served alone: `intra_op_threads`, else the whole budget."""
        return self.intra_op_threads or self.cpus

    @property
    def cpus(self) -> int:
        """The threads the served models' backends divide among themselves."""
        return self.cpu_budget or available_cpus()

    def runtime_options(self, intra_op_threads: int | None = None) -> RuntimeOptions:
        """What the runtime needs to open a model; `intra_op_threads` is the model's share of the
        compute budget (default: `threads`)."""
        return RuntimeOptions(
            backend=self.backend,
            precision=None if self.precision == "auto" else Precision(self.precision),
            intra_op_threads=intra_op_threads or self.threads,
            inter_op_threads=self.inter_op_threads,
            openvino_hint=self.openvino_hint,
            openvino_streams=self.openvino_streams,
            tensorrt_fp16=self.tensorrt_fp16,
            tensorrt_cache_dir=self.tensorrt_cache_dir,
            cuda_device_id=self.cuda_device_id,
            max_batch_size=self.max_batch_size,
            max_batch_tokens=self.max_batch_tokens,
        )

    def batching_for(self, model_default: BatchingConfig) -> BatchingConfig:
        """The model.yaml batching block with every BERTSERVE_* override applied."""
        return model_default.with_overrides(
            max_batch_size=self.max_batch_size,
            max_batch_tokens=self.max_batch_tokens,
            max_queue_delay_ms=self.max_queue_delay_ms,
            max_queue_size=self.max_queue_size,
        )


@dataclass(frozen=True)
class SettingFlag:
    """One `bertserve serve` flag, derived from a `Settings` field (its one definition)."""

    name: str  # the Settings field
    flag: str  # "--max-batch-size"; "--access-log/--no-access-log" for a switch
    type: Any  # what the shell value is parsed as (bool for a switch, list[str] when repeatable)
    help: str


# flags that keep the names they had before every setting was a flag
_FLAG_NAMES = {"models": "--model", "cors_origins": "--cors-origin"}


def _flag_type(annotation: Any) -> tuple[Any, str | None]:
    """(shell type, choices to list in the help) of a field's annotation, Optional removed."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _flag_type(typing.get_args(annotation)[0])
    if origin is list:
        return list[str], None
    if origin is Literal:
        return str, "|".join(str(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return str, "|".join(str(m.value) for m in annotation)
    if annotation in (bool, int, float, Path):
        return annotation, None
    return str, None  # str, SecretStr


def setting_flags() -> tuple[SettingFlag, ...]:
    """A flag for every setting, in field order, with the field's description, its environment
    variable and its default in the help."""
    flags = []
    for name, field in Settings.model_fields.items():
        shell, choices = _flag_type(field.annotation)
        flag = _FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        if shell is bool:
            flag = f"{flag}/--no-{flag[2:]}"
        default = "none" if field.default is None else str(field.default)
        if isinstance(field.default, Enum):
            default = str(field.default.value)
        parts = [str(field.description or "").rstrip(".") + "."]
        if choices:
            parts.append(f"One of {choices}.")
        if shell == list[str]:
            parts.append("Repeat the flag for several.")
        if SecretStr in (field.annotation, *typing.get_args(field.annotation)):
            parts.append("A flag shows in the process list: prefer the environment variable.")
        parts.append(f"[env BERTSERVE_{name.upper()}; default {default}]")
        flags.append(SettingFlag(name, flag, shell, " ".join(parts)))
    return tuple(flags)
