"""The `bertserve` command line.

Heavy imports happen inside each command: `bertserve serve` must never import torch, and
`bertserve --help` must stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="bertserve",
    help="Export fine-tuned BERT-family checkpoints and serve them over REST.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def export(
    model: Annotated[str, typer.Option(help="Checkpoint folder or Hugging Face hub id.")],
    task: Annotated[str, typer.Option(help="text-classification or token-classification.")],
    name: Annotated[str, typer.Option(help="Model name in the repository (URL path segment).")],
    repo: Annotated[Path, typer.Option(help="Model repository folder.")] = Path("models"),
    formats: Annotated[str, typer.Option(help="Comma-separated: onnx, openvino.")] = "onnx,openvino",
    int8: Annotated[bool, typer.Option("--int8", help="Also write int8 ONNX and NNCF int8 IR.")] = False,
    fp16_ir: Annotated[bool, typer.Option("--fp16-ir", help="Compress OpenVINO IR weights to fp16.")] = False,
    max_length: Annotated[
        int | None, typer.Option(help="Longest sequence served (default: the model's, at most 512).")
    ] = None,
    calibration: Annotated[
        Path | None, typer.Option(help="Text file (one sentence a line) for int8 calibration.")
    ] = None,
    eval_file: Annotated[
        Path | None, typer.Option(help="Labeled TSV (text<TAB>label) or CoNLL file to gate int8 on.")
    ] = None,
    version: Annotated[int | None, typer.Option(help="Version folder (default: next free).")] = None,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Accept pytorch_model.bin (pickle) weights.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Make int8 the default even if it fails the gate.")
    ] = False,
    segmentation: Annotated[
        str | None,
        typer.Option(
            help="Token classification: how the service reads a text by default: none (whole, "
            "windowed when long), lines, or sentences (for taggers trained on single sentences)."
        ),
    ] = None,
) -> None:
    """Export a checkpoint to ONNX / OpenVINO, validate it against PyTorch, write it to the repository."""
    from bertserve.export.exporter import ExportError, ExportOptions, run_export

    options = ExportOptions(
        model=model,
        task=task,
        name=name,
        repo=repo,
        formats=tuple(f.strip() for f in formats.split(",") if f.strip()),
        int8=int8,
        fp16_ir=fp16_ir,
        max_length=max_length,
        calibration=calibration,
        eval_file=eval_file,
        version=version,
        allow_pickle=allow_pickle,
        force=force,
        segmentation=segmentation,
    )
    try:
        run_export(options)
    except ExportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None


@app.command()
def finetune(
    task: Annotated[str, typer.Option(help="text-classification or token-classification.")],
    train: Annotated[
        Path, typer.Option(help="Training data: CSV/TSV text,label (classification) or CoNLL token<TAB>tag.")
    ],
    output: Annotated[Path, typer.Option(help="Folder for the fine-tuned checkpoint (new or empty).")],
    base: Annotated[
        Path | None,
        typer.Option(help="Base checkpoint folder (default: the packaged MiniLM-L6-H384 backbone)."),
    ] = None,
    labels: Annotated[
        str | None,
        typer.Option(help="Comma-separated labels in id order (default: from the data, sorted; O first)."),
    ] = None,
    eval_file: Annotated[
        Path | None, typer.Option("--eval", help="Held-out file in the same format, scored after training.")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the training data.")] = 3,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, linear warmup and decay).")] = 5e-5,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 32,
    max_length: Annotated[int, typer.Option(help="Tokens per example at most (longer ones are cut).")] = 128,
    seed: Annotated[int, typer.Option(help="Seed for the head's init, dropout and shuffling.")] = 42,
    freeze_embeddings: Annotated[
        bool,
        typer.Option(
            "--freeze-embeddings",
            help="Keep the pretrained word embeddings fixed (helps small data sets generalise).",
        ),
    ] = False,
    label_subwords: Annotated[
        bool,
        typer.Option(
            "--label-subwords",
            help="Tagging: train every sub-token of a word on its tag, not only the first "
            "(whole-word entities with the per-piece 'simple' aggregation).",
        ),
    ] = False,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps (smoke tests).")] = None,
) -> None:
    """Fine-tune a BERT-family checkpoint on your CSV/TSV or CoNLL data, on CPU, for `bertserve export`."""
    from bertserve.export.errors import ExportError
    from bertserve.training.finetune import FinetuneOptions
    from bertserve.training.finetune import finetune as run_finetune

    options = FinetuneOptions(
        task=task,
        train=train,
        output=output,
        base=base,
        labels=tuple(x.strip() for x in labels.split(",") if x.strip()) if labels else None,
        eval_file=eval_file,
        epochs=epochs,
        learning_rate=lr,
        batch_size=batch_size,
        max_length=max_length,
        seed=seed,
        freeze_embeddings=freeze_embeddings,
        label_subwords=label_subwords,
        max_steps=max_steps,
    )
    try:
        run_finetune(options, log=typer.echo)
    except ExportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None


@app.command()
def serve(
    repo: Annotated[Path | None, typer.Option(help="Model repository [env BERTSERVE_REPO].")] = None,
    model: Annotated[
        list[str] | None, typer.Option(help="Model(s) to serve; default all [env BERTSERVE_MODELS].")
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            help="auto|onnxruntime-cpu|onnxruntime-cuda|tensorrt|openvino-cpu [env BERTSERVE_BACKEND]."
        ),
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="fp32|int8; default: the model's [env BERTSERVE_PRECISION].")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address [env BERTSERVE_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [env BERTSERVE_PORT].")] = None,
) -> None:
    """Serve models from the repository (flags override BERTSERVE_* environment variables)."""
    from bertserve.service.api.server import run_server

    overrides = {
        "repo": repo,
        "models": model or None,
        "backend": backend,
        "precision": precision,
        "host": host,
        "port": port,
    }
    code = run_server({k: v for k, v in overrides.items() if v is not None})
    raise typer.Exit(code=code)


@app.command("models")
def list_models_cmd(
    repo: Annotated[Path, typer.Option(help="Model repository folder.")] = Path("models"),
) -> None:
    """List the models in a repository with their artifacts."""
    from bertserve.modelrepo import RepositoryError, list_models, load_model_config

    names = list_models(repo)
    if not names:
        typer.echo(f"no models in {repo}")
        return
    for name in names:
        try:
            cfg = load_model_config(repo, name)
        except RepositoryError as exc:
            typer.echo(f"{name}: INVALID ({exc})")
            continue
        arts = ", ".join(f"{a.format}/{a.precision}" for a in cfg.version.artifacts)
        typer.echo(
            f"{name}: {cfg.task} v{cfg.default_version} labels={len(cfg.labels)} "
            f"max_length={cfg.max_length} default={cfg.version.default_precision} [{arts}]"
        )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
