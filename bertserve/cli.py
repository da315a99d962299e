"""The `bertserve` command line.

Heavy imports happen inside each command: `bertserve serve` must never import torch, and
`bertserve --help` must stay fast.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from bertserve.export.options import CliFlag, cli_flags, options_from_cli

app = typer.Typer(
    name="bertserve",
    help="Export fine-tuned BERT-family checkpoints and serve them over REST.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _with_flags(flags: Sequence[CliFlag]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command taking `**values` one Typer option per flag: Typer reads the parameters from
    the function's signature, so the signature is made from the flags."""

    def apply(command: Callable[..., None]) -> Callable[..., None]:
        parameters = [
            inspect.Parameter(
                flag.name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[flag.type, typer.Option(flag.flag, help=flag.help)],
                default=inspect.Parameter.empty if flag.required else flag.default,
            )
            for flag in flags
        ]
        command.__signature__ = inspect.Signature(parameters, return_annotation=None)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        return command

    return apply


@app.command()
@_with_flags(cli_flags())  # every ExportOptions field with a flag (bertserve/export/options.py)
def export(**values: Any) -> None:
    """Export a checkpoint to ONNX / OpenVINO, validate it against PyTorch, write it to the repository."""
    from bertserve.export.exporter import ExportError, run_export

    try:
        run_export(options_from_cli(values))
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


def _serve_flags() -> list[CliFlag]:
    """`bertserve serve`'s flags: one per setting (bertserve/service/settings.py), none given = None
    (so the environment, then the dotenv file, then the default decide), plus --env-file."""
    from bertserve.service.settings import DEFAULT_ENV_FILE, setting_flags

    flags = [
        CliFlag(name=f.name, flag=f.flag, type=f.type | None, default=None, help=f.help)
        for f in setting_flags()
    ]
    env_file_help = (
        "Dotenv file whose BERTSERVE_* lines are read (other lines are ignored); flags beat "
        "environment variables, which beat this file, which beats the defaults."
    )
    flags.append(CliFlag("env_file", "--env-file", Path, DEFAULT_ENV_FILE, env_file_help))
    return flags


@app.command()
@_with_flags(_serve_flags())  # every Settings field (bertserve/service/settings.py) is a flag
def serve(**values: Any) -> None:
    """Serve models from the repository. Every setting is a flag; flags override BERTSERVE_*
    environment variables, which override the dotenv file (--env-file, default .env)."""
    from bertserve.service.api.server import run_server

    env_file = values.pop("env_file")
    flags = {k: v for k, v in values.items() if v is not None and v != []}
    code = run_server(flags, env_file=env_file)
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
