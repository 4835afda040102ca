"""Full eval-split accuracy and per-item answers recorded by the SmolLM2 experiment's evaluate script."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).parents[2] / "experiments" / "smollm2_skills"))
sys.path.insert(0, str(Path(__file__).parents[1] / "fitness"))

from evaluate import full_accuracy, record  # noqa: E402
from suites import write_mini_suite  # noqa: E402

from evomerge.fitness.evaluator import FitnessEvaluator  # noqa: E402


def test_full_accuracy_scores_every_eval_item_and_is_recorded(tiny_family, tmp_path):
    base_dir, _ = tiny_family
    suite = write_mini_suite(tmp_path)
    evaluator = FitnessEvaluator(suite, base_dir, estimator="mean", batch_size=8)
    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    accuracy, answers = full_accuracy(model, evaluator)
    assert set(answers) == {i for ids in evaluator.suite.eval_ids.values() for i in ids}
    assert len(answers) == 20 and set(answers.values()) <= {0, 1}
    for task, ids in evaluator.suite.eval_ids.items():
        assert accuracy[task] == sum(answers[i] for i in ids) / len(ids)
    assert accuracy == evaluator.evaluate_full(model)

    record("tiny", accuracy, answers, 1.23, results_dir=tmp_path / "results")
    saved = json.loads((tmp_path / "results" / "accuracy.json").read_text())["tiny"]
    assert saved["items"] == 20 and saved["seconds"] == 1.2
    assert saved["mean"] == round(sum(accuracy.values()) / 2, 4)
    assert json.loads((tmp_path / "results" / "responses" / "tiny.json").read_text()) == answers
