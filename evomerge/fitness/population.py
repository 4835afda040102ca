"""Calibrate a suite on a population of models: score the full eval split, fit the IRT model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from evomerge.errors import ConfigError, ModelLoadError
from evomerge.fitness.calibration import DEFAULT_DIMS, Calibration, fit_calibration, subject_sha256
from evomerge.fitness.evaluator import FitnessEvaluator
from evomerge.fitness.suite import FitnessSuite


def load_subject(model_dir: Path, device: str = "cpu") -> object:
    """A model directory as an eval-mode causal LM (safetensors only, no remote code)."""
    from transformers import AutoModelForCausalLM

    if not (model_dir / "config.json").is_file():
        raise ModelLoadError(
            f"subject {str(model_dir)!r} is not a Hugging Face model directory (no config.json)"
        )
    if not any(model_dir.glob("*.safetensors")):
        raise ModelLoadError(
            f"subject {str(model_dir)!r} has no .safetensors weights (pickled weights are refused)"
        )
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), use_safetensors=True, dtype="float32")
    return model.to(device).eval()


def calibrate_suite(
    suite: FitnessSuite,
    subjects: Sequence[str | Path],
    *,
    device: str = "cpu",
    batch_size: int = 32,
    dims: Sequence[int] = DEFAULT_DIMS,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Calibration:
    """Every subject (model directory) answers every eval item of the suite; fit; return the artifact."""
    dirs = [Path(s).resolve() for s in subjects]
    names = [d.name for d in dirs]
    if len(set(names)) != len(names):
        raise ConfigError(f"--subjects: directory names must be unique (got {names}); they name the subjects")
    item_ids = [i for task in suite.tasks for i in suite.eval_ids[task]]
    rows = []
    for model_dir in dirs:
        if progress:
            progress(f"scoring {model_dir.name} on {len(item_ids)} items")
        evaluator = FitnessEvaluator(suite, model_dir, device=device, batch_size=batch_size, estimator="mean")
        answers = evaluator.score_eval_split(load_subject(model_dir, device))
        rows.append([answers[i] for i in item_ids])
    return fit_calibration(
        np.array(rows, dtype=float),
        item_ids,
        suite.eval_ids,
        [{"name": d.name, "path": str(d), "sha256": subject_sha256(d)} for d in dirs],
        dims=dims,
        groups={i: suite.items[i].group or "" for i in item_ids},
        suite=suite.name,
        bank_hashes=suite.bank_hashes(),
        seed=seed,
    )
