"""Accuracy and per-item answers recorded by the SmolLM2 experiment's evaluate script."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).parents[2] / "experiments" / "smollm2_skills"))
sys.path.insert(0, str(Path(__file__).parents[1] / "fitness"))

from evaluate import make_evaluator, measure, record, tagged  # noqa: E402
from suites import write_mini_suite  # noqa: E402


@pytest.fixture
def tiny_model(tiny_family):
    return AutoModelForCausalLM.from_pretrained(tiny_family[0]).eval()


def test_full_split_scores_every_eval_item_and_is_recorded(tiny_family, tiny_model, tmp_path):
    evaluator, tag = make_evaluator(tiny_family[0], None, 8, suite=write_mini_suite(tmp_path))
    accuracy, answers = measure(tiny_model, evaluator, tag)
    assert tag == "full"
    assert set(answers) == {i for ids in evaluator.suite.eval_ids.values() for i in ids}
    assert len(answers) == 20 and set(answers.values()) <= {0, 1}
    for task, ids in evaluator.suite.eval_ids.items():
        assert accuracy[task] == sum(answers[i] for i in ids) / len(ids)
    assert accuracy == evaluator.evaluate_full(tiny_model)
    # the bfloat16 results' tag still means the full split (it once fell back to the suite's anchors)
    assert measure(tiny_model, evaluator, tagged(tag, "bfloat16")) == (accuracy, answers)

    record("tiny", accuracy, answers, 1.23, tag, results_dir=tmp_path / "results")
    saved = json.loads((tmp_path / "results" / "accuracy_full.json").read_text())["tiny"]
    assert saved["items"] == 20 and saved["seconds"] == 1.2
    assert saved["mean"] == round(sum(accuracy.values()) / 2, 4)
    assert json.loads((tmp_path / "results" / "responses" / "full" / "tiny.json").read_text()) == answers


def test_subset_is_seeded_paired_and_part_of_the_full_answers(tiny_family, tiny_model, tmp_path):
    suite = write_mini_suite(tmp_path)
    full, _ = make_evaluator(tiny_family[0], None, 8, suite=suite)
    subset, tag = make_evaluator(tiny_family[0], 3, 8, suite=suite)
    again, _ = make_evaluator(tiny_family[0], 3, 8, suite=suite)
    assert tag == "eval3"
    assert subset.anchor_ids == again.anchor_ids
    assert all(len(ids) == 3 for ids in subset.anchor_ids.values())
    accuracy, answers = measure(tiny_model, subset, tag)
    full_answers = full.score_eval_split(tiny_model)
    assert answers == {i: full_answers[i] for i in answers} and len(answers) == 6
    for task, ids in subset.anchor_ids.items():
        assert accuracy[task] == sum(full_answers[i] for i in ids) / 3
