"""`evomerge merge` on the real SmolLM2-135M-Instruct weights gives a model that loads and generates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from smollm2 import noisy_copy, smollm2_base
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.recipe import MergeRecipe

pytestmark = pytest.mark.real_model


def test_merged_smollm2_loads_and_generates(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = smollm2_base()
    parent = noisy_copy(base, tmp_path / "parent", seed=0)
    recipe = MergeRecipe.from_dict(
        {
            "merge_method": "ties",
            "base_model": str(base),
            "models": [{"model": str(parent), "parameters": {"weight": [0.5, 1.0], "density": 0.5}}],
            "dtype": "bfloat16",
        }
    )
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(recipe.to_yaml())
    result = CliRunner().invoke(app, ["merge", str(recipe_file), str(tmp_path / "merged"), "--no-progress"])
    assert result.exit_code == 0, result.output
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = merged.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    print("merged SmolLM2 says:", repr(text))
    assert "Paris" in text
