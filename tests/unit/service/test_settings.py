from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bertserve.modelrepo import BatchingConfig, Precision
from bertserve.service.settings import BackendKind, Settings


def test_defaults_are_safe() -> None:
    s = Settings()
    assert s.host == "127.0.0.1"
    assert s.backend == BackendKind.AUTO
    assert s.models is None and s.precision == "auto"
    assert s.runtime_options().precision is None  # the loader chooses per model and CPU
    assert s.threads >= 1


def test_environment_is_read_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTSERVE_REPO", "/srv/models")
    monkeypatch.setenv("BERTSERVE_BACKEND", "openvino-cpu")
    monkeypatch.setenv("BERTSERVE_PORT", "9001")
    monkeypatch.setenv("BERTSERVE_MODELS", "sst2, ner ,")
    monkeypatch.setenv("BERTSERVE_MAX_QUEUE_DELAY_MS", "0.5")
    s = Settings()
    assert s.repo == Path("/srv/models")
    assert s.backend == BackendKind.OPENVINO_CPU
    assert s.port == 9001
    assert s.models == ["sst2", "ner"]
    assert s.max_queue_delay_ms == 0.5


def test_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTSERVE_PORT", "9001")
    monkeypatch.setenv("BERTSERVE_BACKEND", "openvino-cpu")
    s = Settings(port=8080, backend="fake")  # type: ignore[arg-type]
    assert s.port == 8080
    assert s.backend == BackendKind.FAKE


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError):
        Settings(backend="cuda")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="auto, fp32, int8 or bf16"):
        Settings(precision=Precision.FP16)
    with pytest.raises(ValidationError):
        Settings(unknown_knob=1)  # type: ignore[call-arg]
    monkeypatch.setenv("BERTSERVE_MAX_BATCH_SIZE", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_padding_efficiency_defaults_per_backend() -> None:
    assert Settings().padding_efficiency_for("onnxruntime-cpu") == 0.95
    assert Settings().padding_efficiency_for("tensorrt") == 0.5
    assert Settings().padding_efficiency_for("fake") == 0.0
    assert Settings(min_padding_efficiency=0.3).padding_efficiency_for("onnxruntime-cpu") == 0.3


def test_batching_overrides_apply_over_model_defaults() -> None:
    model = BatchingConfig(max_batch_size=16, max_batch_tokens=4096, max_queue_delay_ms=2, max_queue_size=100)
    assert Settings().batching_for(model) == model
    merged = Settings(max_batch_size=64, max_queue_size=10).batching_for(model)
    assert (merged.max_batch_size, merged.max_batch_tokens, merged.max_queue_size) == (64, 4096, 10)


def test_runtime_options_carry_every_backend_setting(tmp_path: Path) -> None:
    s = Settings(
        backend=BackendKind.OPENVINO_CPU,
        precision=Precision.INT8,
        intra_op_threads=3,
        inter_op_threads=2,
        openvino_hint="THROUGHPUT",
        openvino_streams=2,
        tensorrt_fp16=False,
        tensorrt_cache_dir=tmp_path,
        cuda_device_id=1,
        max_batch_size=8,
        max_batch_tokens=512,
        max_queue_size=10,
    )
    o = s.runtime_options()
    assert (o.backend, o.precision, o.intra_op_threads, o.inter_op_threads) == (
        BackendKind.OPENVINO_CPU,
        Precision.INT8,
        3,
        2,
    )
    assert (o.openvino_hint, o.openvino_streams) == ("THROUGHPUT", 2)
    assert (o.tensorrt_fp16, o.tensorrt_cache_dir, o.cuda_device_id) == (False, tmp_path, 1)
    assert (o.max_batch_size, o.max_batch_tokens) == (8, 512)
    model = BatchingConfig()
    runtime, service = o.batching_for(model), s.batching_for(model)
    assert (runtime.max_batch_size, runtime.max_batch_tokens) == (
        service.max_batch_size,
        service.max_batch_tokens,
    )


def test_runtime_options_take_a_models_share_of_the_threads() -> None:
    assert Settings().runtime_options().intra_op_threads == Settings().threads
    assert Settings().runtime_options(intra_op_threads=2).intra_op_threads == 2


def test_compute_budget_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().max_concurrent_batches is None
    monkeypatch.setenv("BERTSERVE_MAX_CONCURRENT_BATCHES", "1")
    assert Settings().max_concurrent_batches == 1
    with pytest.raises(ValidationError):
        Settings(max_concurrent_batches=0)


def test_backend_kind_is_the_runtimes() -> None:
    from bertserve.runtime.base import BackendKind as RuntimeKind

    assert BackendKind is RuntimeKind


# --- flags > environment > dotenv file > defaults (`bertserve serve`) ------------------------------


def _serve_flags(args: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict[str, object]]:
    """What `bertserve serve ARGS` hands to run_server (flags given, and the dotenv file)."""
    from typer.testing import CliRunner

    import bertserve.service.api.server as server
    from bertserve.cli import app

    seen: dict[str, object] = {}

    def capture(flags: dict[str, object], env_file: Path | None = None, **_: object) -> int:
        seen.update(flags, _env_file=env_file)
        return 0

    monkeypatch.setattr(server, "run_server", capture)
    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 0, result.output
    return result.exit_code, seen


@pytest.mark.parametrize(
    ("flag", "env", "dotenv", "want"),
    [
        ("1003", "1002", "1001", 1003),
        (None, "1002", "1001", 1002),
        (None, None, "1001", 1001),
        (None, None, None, 8000),
    ],
)
def test_a_setting_resolves_flag_then_environment_then_dotenv_then_default(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flag: str | None,
    env: str | None,
    dotenv: str | None,
    want: int,
) -> None:
    env_file = tmp_path / "serve.env"
    lines = ["COMPOSE_PROJECT_NAME=other-tool  # not ours: ignored", "BERTSERVE_MAX_INPUTS=7"]
    if dotenv is not None:
        lines.append(f"BERTSERVE_PORT={dotenv}")
    env_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.delenv("BERTSERVE_PORT", raising=False)
    if env is not None:
        monkeypatch.setenv("BERTSERVE_PORT", env)
    args = ["--env-file", str(env_file), *(["--port", flag] if flag is not None else [])]
    _, seen = _serve_flags(args, monkeypatch)
    assert seen["_env_file"] == env_file
    flags = {k: v for k, v in seen.items() if k != "_env_file"}
    settings = Settings.for_serve(flags, env_file)
    assert settings.port == want
    assert settings.max_inputs == 7  # the file's other setting, whatever the port's source


def test_a_misspelt_setting_in_the_dotenv_file_is_refused_and_a_missing_file_is_no_error(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("BERTSERVE_PORTT=9000\n", encoding="utf-8")
    with pytest.raises(ValidationError, match="portt"):
        Settings.for_serve({}, env_file)
    assert Settings.for_serve({}, tmp_path / "absent.env").port == 8000


def test_serve_help_lists_every_setting_with_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from bertserve.cli import app
    from bertserve.service.settings import setting_flags

    monkeypatch.setenv("COLUMNS", "400")
    result = CliRunner().invoke(app, ["serve", "--help"], terminal_width=400)
    assert result.exit_code == 0
    flags = setting_flags()
    assert {f.name for f in flags} == set(Settings.model_fields)
    for f in flags:
        assert f.flag.split("/")[0] in result.output, f.flag
        assert f"BERTSERVE_{f.name.upper()}" in f.help
    assert "--env-file" in result.output


def test_every_kind_of_flag_reaches_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    args = ["--model", "a", "--model", "b", "--no-docs-public", "--access-log", "--backend", "fake"]
    args += ["--max-queue-delay-ms", "0.5", "--cors-origin", "https://a.example", "--repo", str(tmp_path)]
    args += ["--log-level", "debug", "--api-key", "k" * 16, "--precision", "int8"]
    _, seen = _serve_flags(args, monkeypatch)
    settings = Settings.for_serve({k: v for k, v in seen.items() if k != "_env_file"}, None)
    assert settings.models == ["a", "b"] and settings.docs_public is False and settings.access_log is True
    assert settings.backend == BackendKind.FAKE and settings.max_queue_delay_ms == 0.5
    assert settings.cors_origins == ["https://a.example"] and settings.repo == tmp_path
    assert settings.log_level == "debug" and settings.precision == Precision.INT8
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "k" * 16


def test_precision_is_auto_or_a_servable_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (("auto", None), ("bf16", Precision.BF16), ("int8", Precision.INT8)):
        monkeypatch.setenv("BERTSERVE_PRECISION", value)
        assert Settings().runtime_options().precision == expected
    monkeypatch.setenv("BERTSERVE_PRECISION", "fp16")
    with pytest.raises(ValueError, match="auto, fp32, int8 or bf16"):
        Settings()


def test_no_precision_means_auto() -> None:
    """Offline callers (evaluation, bench) pass None for "what the service would choose"."""
    assert Settings(precision=None).precision == "auto"  # type: ignore[arg-type]
    assert Settings.model_validate({"precision": ""}).precision == "auto"
