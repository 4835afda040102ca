"""Code items (HumanEval-style): a function stub as prompt, unit tests and an entry point in
`meta` (`test`, `entry_point`), scored pass@1 by running the completion with the tests in the
sandbox (`sandbox.py`).

The program run is prompt + completion + tests + `check(entry_point)`, as in HumanEval (Chen et
al. 2021, "Evaluating Large Language Models Trained on Code"), whose stop sequences also cut a
greedy completion where the function body ends.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from evomerge.errors import ConfigError
from evomerge.fitness.banks.items import Item, jsonl_records
from evomerge.fitness.banks.sandbox import Sandbox

STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # Chen et al. 2021, section 2.3


@dataclass(frozen=True)
class Verdict:
    id: str
    passed: bool
    reason: str


def check_code_item(item: Item, where: str) -> None:
    """A code item needs its tests and entry point (HumanEval's `test`, `entry_point`) in meta."""
    missing = [key for key in ("test", "entry_point") if not isinstance(item.meta.get(key), str)]
    if missing:
        raise ConfigError(
            f"{where}: item {item.id!r} is scored by running code but has no meta {missing}; "
            "give its unit tests as meta.test and the function name as meta.entry_point"
        )


def cut_at_stop(completion: str) -> str:
    """The completion up to the first stop sequence (where the generated function ends)."""
    ends = [completion.find(stop) for stop in STOP_SEQUENCES if stop in completion]
    return completion[: min(ends)] if ends else completion


def program(item: Item, completion: str) -> str:
    return f"{item.prompt}{completion}\n\n{item.meta['test']}\n\ncheck({item.meta['entry_point']})\n"


def run_completions(items: Iterable[Item], completions: Mapping[str, str], sandbox: Sandbox) -> list[Verdict]:
    """Each item's completion (already cut) run with its tests; one sandboxed process per item."""
    verdicts = []
    for item in items:
        outcome = sandbox.run(program(item, completions[item.id]))
        verdicts.append(Verdict(item.id, outcome.passed, outcome.reason))
    return verdicts


def load_completions(path: Path, items: Iterable[Item]) -> dict[str, str]:
    """JSONL lines {"id": ITEM_ID, "completion": TEXT}; every id must be an item of the bank."""
    if not path.is_file():
        raise ConfigError(f"completions file {str(path)!r} does not exist; give a JSONL of id + completion")
    known = {item.id for item in items}
    completions: dict[str, str] = {}
    for where, record in jsonl_records(path):
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("id"), str)
            or not isinstance(record.get("completion"), str)
        ):
            shown = json.dumps(record)[:80]
            raise ConfigError(f'{where}: expected {{"id": ITEM_ID, "completion": TEXT}}, got {shown!r}')
        if record["id"] not in known:
            raise ConfigError(f"{where}: id {record['id']!r} is not an item of the bank")
        completions[record["id"]] = record["completion"]
    return completions
