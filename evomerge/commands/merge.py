"""`evomerge merge RECIPE OUT_DIR`: materialize a mergekit-style recipe as a Hugging Face model."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer


class Compile(str, Enum):
    """--compile: compiling the kernels costs seconds to tens of seconds, and pays on large merges."""

    auto = "auto"
    on = "on"
    off = "off"


def merge(
    recipe: Path = typer.Argument(..., help="Merge recipe (mergekit YAML subset)."),
    out_dir: Path = typer.Argument(..., help="Output model directory (written atomically)."),
    device: str = typer.Option("cpu", help="Device that computes the merge, e.g. cuda."),
    force: bool = typer.Option(False, "--force", help="Replace OUT_DIR if it exists."),
    allow_pickle: bool = typer.Option(
        False,
        "--allow-pickle",
        help="Accept .bin/.pt checkpoints (loaded with torch.load(weights_only=True)).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    compile: Compile = typer.Option(
        Compile.auto,
        "--compile",
        help="Compile the merge kernels: auto where it pays (2 G+ merged input entries), on or off.",
    ),
) -> None:
    """Merge the recipe's models tensor by tensor into OUT_DIR (config, tokenizer, safetensors)."""
    from evomerge.merge.io import merge_to_directory
    from evomerge.recipe import MergeRecipe

    written = merge_to_directory(
        MergeRecipe.from_yaml(recipe),
        out_dir,
        device=device,
        force=force,
        allow_pickle=allow_pickle,
        progress=progress,
        compile={Compile.auto: None, Compile.on: True, Compile.off: False}[compile],
    )
    typer.echo(f"merged model written to {written}")


def register(app: typer.Typer) -> None:
    app.command("merge")(merge)
