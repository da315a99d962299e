"""Every Prometheus object of the service, on a registry owned by one app instance.

Labels stay bounded: model names come from the repository (never from the URL of an unknown
model), endpoints and backends from fixed sets, codes from the status table. Never input text.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

# Seconds: sub-millisecond resolution at the bottom, where per-stage overheads live.
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05,
    0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)
_BATCH_TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)

UNKNOWN_MODEL = "_unknown"  # label for requests naming a model that is not served


class Metrics:
    """Holds the metric families; pass it to the stages that observe them."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        if process:
            # RSS, CPU seconds, open fds: what a soak run watches for leaks.
            ProcessCollector(registry=r)
        self.requests = Counter(
            "bertserve_requests", "Requests answered.", ["model", "endpoint", "code"], registry=r
        )
        self.request_duration = Histogram(
            "bertserve_request_duration_seconds",
            "Time from request parsed to response built.",
            ["model", "endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokenize_duration = Histogram(
            "bertserve_tokenize_duration_seconds",
            "Tokenization time of one request (all its inputs).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "bertserve_queue_duration_seconds",
            "Time a sequence waited in the batcher's queue before its batch was cut.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "bertserve_inference_duration_seconds",
            "Backend time of one executed batch.",
            ["model", "backend"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_wait = Histogram(
            "bertserve_compute_wait_seconds",
            "Time a cut batch waited for one of the process's compute slots (max_concurrent_batches) "
            "while other models' batches ran; only observed when the slots are limited.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.backend_threads = Gauge(
            "bertserve_backend_threads",
            "Intra-op threads allotted to the model's backend: its share of the CPUs (intra_op_threads).",
            ["model"],
            registry=r,
        )
        self.batch_size = Histogram(
            "bertserve_batch_size",
            "Sequences per executed batch.",
            ["model"],
            buckets=_BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "bertserve_batch_tokens",
            "Padded tokens (batch size x longest sequence) per executed batch.",
            ["model"],
            buckets=_BATCH_TOKEN_BUCKETS,
            registry=r,
        )
        self.real_tokens = Counter(
            "bertserve_real_tokens", "Tokens of real input run through the backend.", ["model"], registry=r
        )
        self.padded_tokens = Counter(
            "bertserve_padded_tokens",
            "Tokens run through the backend including padding; real / padded = packing efficiency.",
            ["model"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "bertserve_queue_depth", "Sequences waiting in the batcher's queue.", ["model"], registry=r
        )
        self.inflight = Gauge(
            "bertserve_inflight_requests", "Inference requests being handled right now.", registry=r
        )
        self.batch_failures = Counter(
            "bertserve_batch_failures",
            "Executed batches that failed, by reason (backend_error, non_finite); every request "
            "in such a batch was answered 500.",
            ["model", "backend", "reason"],
            registry=r,
        )
        self.model_reloads = Counter(
            "bertserve_model_reloads",
            "Reloads of a served model from the repository, by result: loaded (a new version or "
            "configuration now serves), failed (the served one stays; GET /v1/models says why).",
            ["model", "result"],
            registry=r,
        )
        self.rejected = Counter(
            "bertserve_rejected",
            "Requests refused before inference, by reason (queue_full, deadline, ...).",
            ["model", "reason"],
            registry=r,
        )

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
