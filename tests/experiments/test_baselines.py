"""The untuned baselines of the SmolLM2 experiment mean what the report says they mean."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parents[2] / "experiments" / "smollm2_skills"))

from baselines import baseline_recipes, weights_digest  # noqa: E402

from evomerge.merge.live import LiveMerger  # noqa: E402


def test_task_arithmetic_baseline_adds_every_task_vector_at_weight_one_over_n(tiny_family):
    base_dir, parents = tiny_family
    recipes = baseline_recipes(base_dir, parents)
    assert set(recipes) == {"task_arithmetic", "ties"}
    merged = LiveMerger(base_dir, parents).apply(recipes["task_arithmetic"]).state_dict()
    base = load_file(base_dir / "model.safetensors")
    experts = [load_file(p / "model.safetensors") for p in parents]
    name = "model.layers.1.mlp.up_proj.weight"
    expected = base[name] + sum(e[name] - base[name] for e in experts) / 2
    torch.testing.assert_close(merged[name], expected)


def test_ties_baseline_uses_the_declared_defaults(tiny_family):
    base_dir, parents = tiny_family
    ties = baseline_recipes(base_dir, parents)["ties"].to_dict()
    assert ties["merge_method"] == "ties" and not ties.get("parameters")
    assert [m["parameters"] for m in ties["models"]] == [{"weight": 1.0}, {"weight": 1.0}]


def test_weights_digest_tells_models_apart_by_their_tensors_alone(tiny_family):
    base_dir, parents = tiny_family
    recipes = baseline_recipes(base_dir, parents)
    merger = LiveMerger(base_dir, parents)
    task_arithmetic = weights_digest(merger.apply(recipes["task_arithmetic"]))
    ties = weights_digest(merger.apply(recipes["ties"]))
    # the same weights reached again (after another candidate in the same live model) digest alike
    assert weights_digest(merger.apply(recipes["task_arithmetic"])) == task_arithmetic != ties
    model = merger.apply(recipes["ties"])
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1.0
    assert weights_digest(model) != ties
