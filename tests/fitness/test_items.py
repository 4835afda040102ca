"""Bank format, validation errors, importers, committed banks and suites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evomerge.errors import ConfigError
from evomerge.fitness.banks.importers import (
    assign_split,
    bigbench_items,
    extra_test_sample,
    mmlu_items,
    sample_per_group,
)
from evomerge.fitness.banks.items import Item, load_bank, write_bank
from evomerge.fitness.banks.suite import FitnessSuite

FITNESS = Path(__file__).resolve().parents[2] / "fitness"


def _write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


MC = {"id": "a", "task": "t", "prompt": "Q: 1+1?\nA:", "choices": [" 2", " 3"], "answer": 0}
GEN = {"id": "g", "task": "t", "prompt": "Q: 1+1?\nA:", "target": "2"}
ORIGIN = {
    "harness": "lm-eval",
    "harness_version": "0.4.13",
    "task": "toy",
    "task_version": "1.0",
    "config_sha256": "0" * 64,
}


def test_round_trip(tmp_path: Path) -> None:
    items = [Item.from_dict(MC), Item.from_dict({"id": "g", "task": "t", "prompt": "p", "target": "x"})]
    path = write_bank(items, tmp_path / "bank.jsonl")
    loaded = load_bank(path)
    assert loaded == items
    assert loaded[0].is_choice and not loaded[1].is_choice


def test_harness_fields_round_trip(tmp_path: Path) -> None:
    """The fields an lm-eval task brings survive a bank's write and load unchanged."""
    items = [
        Item.from_dict({**MC, "choices": ["2", "3"], "target_delimiter": " ", "origin": ORIGIN}),
        Item.from_dict({**GEN, "until": ["\n", "Q:"], "answer_regex": r"(\d+)", "answer_regex_select": -1}),
    ]
    loaded = load_bank(write_bank(items, tmp_path / "bank.jsonl"))
    assert loaded == items
    assert loaded[0].target_delimiter == " " and loaded[0].origin == ORIGIN
    assert loaded[1].until == ("\n", "Q:") and loaded[1].answer_regex_select == -1


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([MC, MC], "duplicate item id 'a'"),
        ([{**MC, "answer": 2}], "answer index 2 is out of range for 2 choices"),
        ([{**MC, "answer": -1}], "answer index -1 is out of range"),
        ([{**MC, "choices": []}], "empty or non-list 'choices'"),
        ([{**MC, "choices": [" 2"]}], "single choice"),
        ([{"id": "a", "task": "t", "prompt": "p"}], "neither 'choices'"),
        ([{**MC, "split": "dev"}], "split 'dev' is not one of"),
        ([{**MC, "colour": 1}], "unknown field"),
        (
            [{**GEN, "target_delimiter": " "}],
            "'target_delimiter' must be a string, on an item with",
        ),
        ([{**MC, "until": ["\n"]}], r"\['until'\] apply to generative items only"),
        ([{**GEN, "until": []}], "'until' must be a non-empty list"),
        ([{**GEN, "answer_regex": "(\\d+"}], "is not a valid regex"),
        (
            [{**GEN, "answer_regex_select": -1}],
            "'answer_regex_select' must be an integer, with an",
        ),
        ([{**MC, "origin": {"task": "x"}}], "'origin' must be an object of non-empty strings with keys"),
    ],
)
def test_bad_items_are_clear_errors(tmp_path: Path, rows: list[dict], message: str) -> None:
    path = _write_lines(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ConfigError, match=message) as error:
        load_bank(path)
    assert "bad.jsonl" in str(error.value)


def test_write_bank_refuses_duplicates_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="duplicate"):
        write_bank([Item.from_dict(MC), Item.from_dict(MC)], tmp_path / "b.jsonl")
    assert list(tmp_path.iterdir()) == []


def test_bigbench_importer_multiple_choice_and_target() -> None:
    task = {
        "examples": [
            {"input": "What is 1 plus 1?", "target": "2", "target_scores": {"3": 0, "banana": 0, "2": 1}},
            {"input": "What is 2 plus 2?", "target": "4"},
        ]
    }
    items = bigbench_items(task, "arithmetic", "1_digit_addition")
    assert items[0].prompt == "Q: What is 1 plus 1?\nA:"
    assert items[0].choices is not None and items[0].choices[items[0].answer] == " 2"
    assert sorted(items[0].choices) == [" 2", " 3", " banana"]
    assert items[0].target == "2"
    assert items[1].choices is None and items[1].target == "4"
    prefixed = bigbench_items(
        {
            "task_prefix": "Rules.\n\n",
            "example_input_prefix": "",
            "example_output_prefix": " ",
            "examples": [{"input": "Three books.", "target_scores": {"A.": 1, "B.": 0}}],
        },
        "logical_deduction",
        "three_objects",
    )
    assert prefixed[0].prompt == "Rules.\n\nThree books."


def test_mmlu_importer_parses_inline_and_multiline_choices() -> None:
    text = (
        "The following are multiple choice questions (with answers) about x.\n\n"
        "Q: Pick two.\n(A) one (B) two (C) three\nA: Let's think. The answer is (B).\n\n"
        "Q: Pick ones.\n(A) tens\n(B) ones\nA: The answer is (B)."
    )
    items = mmlu_items({"x": text})
    assert [item.choices for item in items] == [(" one", " two", " three"), (" tens", " ones")]
    assert [item.answer for item in items] == [1, 1]
    assert items[1].prompt.endswith("Q: Pick ones.\nA:")


def test_split_is_seeded_and_stratified() -> None:
    items = [Item.from_dict({**MC, "id": f"{g}{i}", "group": g}) for g in "xy" for i in range(10)]
    first, second = assign_split(items, 0.5, seed=3), assign_split(items, 0.5, seed=3)
    assert [i.split for i in first] == [i.split for i in second]
    for group in "xy":
        assert sum(i.split == "train" for i in first if i.group == group) == 5
    assert len(sample_per_group(items, 3, seed=1)) == 6


def test_the_extra_test_sample_adds_test_items_only_and_leaves_the_sample_alone() -> None:
    items = [Item.from_dict({**MC, "id": f"{g}{i}", "group": g}) for g in "xy" for i in range(10)]
    sampled = sample_per_group(items, 4, seed=1)
    extra = extra_test_sample(items, sampled, 3, seed=1)
    assert extra == extra_test_sample(items, sampled, 3, seed=1)  # seeded
    assert [sum(i.group == g for i in extra) for g in "xy"] == [3, 3]
    assert all(i.split == "test" and i.meta["test_extra"] for i in extra)
    assert not {i.id for i in extra} & {i.id for i in sampled}
    # never more than a group holds beyond the sample
    assert len(extra_test_sample(items, sampled, 100, seed=1)) == 12


def test_committed_banks_are_valid_and_split() -> None:
    expected = {
        "bigbench_arithmetic.jsonl": 1200,
        "bigbench_logical_deduction.jsonl": 900,
        "bigbench_date_understanding.jsonl": 369,
        "mmlu_dev.jsonl": 281,
        "humaneval.jsonl": 164,
    }
    for name, count in expected.items():
        items = load_bank(FITNESS / name)
        assert len(items) == count
        if name != "humaneval.jsonl":
            assert {item.split for item in items} == {"train", "eval", "test"}
            assert all(item.is_choice for item in items)
        else:
            assert {item.split for item in items} == {"eval", "test"}
    groups = {item.group for item in load_bank(FITNESS / "bigbench_arithmetic.jsonl")}
    assert groups == {"2_digit_addition", "2_digit_subtraction", "2_digit_multiplication", "3_digit_addition"}


def test_committed_suites_load() -> None:
    skills = FitnessSuite.load(FITNESS / "skills.yaml")
    assert skills.tasks == ["arithmetic", "logic", "dates"]
    assert len(skills.task_items("logic")) + len(skills.task_items("logic", "test")) == 600
    assert all(item.split == "eval" for item in skills.task_items("dates"))
    assert all(item.split == "test" for item in skills.task_items("dates", "test"))
    quick = FitnessSuite.load(FITNESS / "quickstart.yaml")
    assert quick.estimator == "mean" and quick.n_anchors("arithmetic") == 8


def test_suite_errors(tmp_path: Path) -> None:
    bank = write_bank([Item.from_dict(MC)], tmp_path / "b.jsonl")
    base = {"name": "s", "banks": {"b": {"path": bank.name}}, "tasks": {"t": {"banks": ["b"], "anchors": 1}}}
    assert FitnessSuite.from_dict(base, root=tmp_path).tasks == ["t"]
    with pytest.raises(ConfigError, match="names bank 'zz'"):
        FitnessSuite.from_dict({**base, "tasks": {"t": {"banks": ["zz"]}}}, root=tmp_path)
    with pytest.raises(ConfigError, match="asks for 5 anchors but has only 1"):
        FitnessSuite.from_dict({**base, "tasks": {"t": {"banks": ["b"], "anchors": 5}}}, root=tmp_path)
    with pytest.raises(ConfigError, match="normalization"):
        FitnessSuite.from_dict(
            {**base, "banks": {"b": {"path": bank.name, "normalization": "max"}}}, root=tmp_path
        )
    with pytest.raises(ConfigError, match="does not exist"):
        FitnessSuite.load(tmp_path / "missing.yaml")


def test_a_choice_item_without_an_answer_is_one_line_naming_the_item_and_the_field(tmp_path: Path) -> None:
    bank = tmp_path / "b.jsonl"
    bank.write_text(json.dumps({"id": "q7", "task": "t", "prompt": "2+2=", "choices": ["3", "4"]}) + "\n")
    with pytest.raises(ConfigError) as error:
        load_bank(bank)
    message = str(error.value)
    assert "\n" not in message and "'q7'" in message and "no 'answer' field" in message
    assert "None" not in message and f"{bank}:1" in message
