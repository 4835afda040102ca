"""The three item roles (issue 14): train, the selection pool (eval) and the held-out test split
never overlap, and calibration, anchors and the search's fitness never read a test item."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml
from suites import FITNESS
from transformers import AutoModelForCausalLM

from evomerge.errors import ConfigError
from evomerge.fitness.banks.build import BIGBENCH_BANKS, SEED, TEST_FRACTION
from evomerge.fitness.banks.importers import hold_out_test
from evomerge.fitness.banks.items import load_bank, write_bank
from evomerge.fitness.banks.suite import FitnessSuite
from evomerge.fitness.population import calibrate_suite
from evomerge.fitness.scoring.evaluator import FitnessEvaluator

SHIPPED = [
    "bigbench_arithmetic.jsonl",
    "bigbench_logical_deduction.jsonl",
    "bigbench_date_understanding.jsonl",
    "mmlu_dev.jsonl",
    "humaneval.jsonl",
]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_banks_hold_out_a_reproducible_test_split(name: str) -> None:
    everything = load_bank(FITNESS / name)
    items = [i for i in everything if not i.meta.get("test_extra")]
    # The committed split is the documented rule, recomputed from the items alone.
    assert [i.split for i in hold_out_test(items, TEST_FRACTION, SEED)] == [i.split for i in items]
    # The extra sample that enlarges a BIG-bench test split: test items only, at most its size per group.
    extra = [i for i in everything if i.meta.get("test_extra")]
    size = next((bank.test_extra_per_group for bank in BIGBENCH_BANKS if bank.file == name), 0)
    assert all(i.split == "test" for i in extra)
    assert all(n <= size for n in Counter(i.group for i in extra).values())
    assert not {i.id for i in extra} & {i.id for i in items}
    evaluation = [i for i in items if i.split != "train"]
    test = [i for i in evaluation if i.split == "test"]
    assert 0.4 < len(test) / len(evaluation) < 0.6
    if name.startswith("bigbench"):  # every subtask is tested (MMLU has ~3 eval items a subject)
        assert {i.group for i in test} == {i.group for i in evaluation}


def test_roles_never_overlap_in_any_shipped_bank(tmp_path: Path) -> None:
    banks = {Path(name).stem: {"path": str(FITNESS / name)} for name in SHIPPED}
    banks["humaneval"]["mode"] = "code"
    spec = {
        "name": "all",
        "banks": banks,
        "tasks": {bank: {"banks": [bank], "anchors": 1} for bank in banks},
        "sandbox": {"network": "allow"},
    }
    suite = FitnessSuite.from_dict(spec, root=tmp_path)
    for task in suite.tasks:
        train = {i.id for i in suite.task_items(task, "train")}
        select, test = set(suite.eval_ids[task]), set(suite.test_ids[task])
        assert select and test
        assert not (select & test or select & train or test & train)
        bank = load_bank(suite.bank_path(task))
        assert len(train) + len(select) + len(test) == len(bank)


def test_committed_suites_keep_their_anchors_in_the_selection_pool() -> None:
    for name in ("skills.yaml", "quickstart.yaml"):
        suite = FitnessSuite.load(FITNESS / name)
        for task in suite.tasks:
            assert len(suite.eval_ids[task]) >= suite.n_anchors(task)
            assert suite.test_ids[task] and not set(suite.eval_ids[task]) & set(suite.test_ids[task])


def _split_suite(root: Path) -> FitnessSuite:
    """Two tasks of 10 eval and 10 test items each, 4 anchors per task."""
    banks = {"arith": "bigbench_arithmetic.jsonl", "dates": "bigbench_date_understanding.jsonl"}
    for bank, file in banks.items():
        items = load_bank(FITNESS / file)
        chosen = [i for i in items if i.split == "eval"][:10] + [i for i in items if i.split == "test"][:10]
        write_bank(chosen, root / f"{bank}.jsonl")
    spec = {
        "name": "roles",
        "banks": {bank: {"path": f"{bank}.jsonl"} for bank in banks},
        "tasks": {
            "arithmetic": {"banks": ["arith"], "anchors": 4},
            "dates": {"banks": ["dates"], "anchors": 4},
        },
        "estimator": "gpirt",
    }
    (root / "roles.yaml").write_text(yaml.safe_dump(spec))
    return FitnessSuite.load(root / "roles.yaml")


def test_calibration_anchors_and_fitness_never_read_a_test_item(
    tiny_family: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    suite = _split_suite(tmp_path)
    test_ids = {i for ids in suite.test_ids.values() for i in ids}
    assert len(test_ids) == 20
    subjects = [
        Path(shutil.copytree(s, tmp_path / "models" / s.name)) for s in [tiny_family[0], *tiny_family[1]]
    ]
    calibration = calibrate_suite(suite, subjects, dims=(1,))
    assert not test_ids & set(calibration.item_index)
    assert not test_ids & {i for ids in calibration.tasks.values() for i in ids}
    parents = subjects[1:]
    model = AutoModelForCausalLM.from_pretrained(tiny_family[1][0]).eval()
    for method_seed in range(3):  # IRT-clustered anchors under several seeds
        evaluator = FitnessEvaluator(
            suite, tiny_family[0], calibration=calibration, parents=parents, seed=method_seed
        )
        assert not test_ids & {i for ids in evaluator.anchor_ids.values() for i in ids}
        assert not test_ids & {i for ids in evaluator.context.task_items.values() for i in ids}
        result = evaluator.evaluate(model)
        assert result.answers and not test_ids & set(result.answers)
    random_anchors = FitnessEvaluator(suite, tiny_family[0], estimator="mean", seed=1)
    assert not test_ids & {i for ids in random_anchors.anchor_ids.values() for i in ids}
    # Only the audit's explicit request reads the test split, and then nothing else.
    assert set(evaluator.score_split(model, "test")) == test_ids
    assert not test_ids & set(evaluator.score_eval_split(model))


def test_a_bank_without_test_items_refuses_the_test_split(
    tiny_family: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    items = [i for i in load_bank(FITNESS / "bigbench_arithmetic.jsonl") if i.split == "eval"][:6]
    write_bank(items, tmp_path / "a.jsonl")
    spec = {
        "name": "old",
        "banks": {"a": {"path": "a.jsonl"}},
        "tasks": {"arithmetic": {"banks": ["a"], "anchors": 2}},
    }
    suite = FitnessSuite.from_dict(spec, root=tmp_path)
    assert not suite.has_test_split()
    evaluator = FitnessEvaluator(suite, tiny_family[0], estimator="mean")
    model = AutoModelForCausalLM.from_pretrained(tiny_family[1][0]).eval()
    with pytest.raises(ConfigError, match=r"task\(s\) \['arithmetic'\] have no 'test' items"):
        evaluator.evaluate_full(model, "test")
