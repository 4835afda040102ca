"""The `evomerge` command line: a thin shell over the library.

Each module in `evomerge.commands` contributes its commands through `register(app)`;
heavy imports (torch, ray, optuna) happen inside the commands, so `--help` stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer
from rich.console import Console

import evomerge.commands
from evomerge import __version__
from evomerge.clihelp import EvomergeGroup
from evomerge.errors import EvomergeError

app = typer.Typer(
    name="evomerge",
    cls=EvomergeGroup,
    help="Evolutionary search for LLM merge recipes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"evomerge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
    ),
) -> None:
    """Evolutionary search for LLM merge recipes."""


for _module in pkgutil.iter_modules(evomerge.commands.__path__):
    importlib.import_module(f"evomerge.commands.{_module.name}").register(app)


def main() -> None:
    """Console-script entry point: an EvomergeError becomes one clear line and exit code 2."""
    try:
        app()
    except EvomergeError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
