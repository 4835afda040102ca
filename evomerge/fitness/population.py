"""Calibrate a suite on a population of models: score the full eval split, fit the IRT model."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from evomerge.errors import ConfigError, ModelLoadError
from evomerge.fitness.banks.suite import FitnessSuite
from evomerge.fitness.irt.calibration import DEFAULT_DIMS, Calibration, fit_calibration, subject_sha256
from evomerge.fitness.scoring.answer_cache import AnswerCache, answers_key
from evomerge.fitness.scoring.evaluator import FitnessEvaluator
from evomerge.space import SearchSpace


def load_subject(model_dir: Path, device: str = "cpu", dtype: object = None) -> object:
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
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), use_safetensors=True, dtype=dtype or "float32"
    )
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
    space: SearchSpace | None = None,
    merges: int = 0,
    dtype: str = "float32",
    answers: AnswerCache | None = None,
) -> Calibration:
    """Every subject answers every eval item of the suite; fit; return the artifact.

    Subjects are the model directories, then (with `space` and `merges`) that many space-filling
    merges of the space: a scrambled Latin hypercube sample of its unit cube, decoded to recipes
    and materialized in memory (LiveMerger, float32 merge), never written to disk. `dtype` is the
    dtype the subjects are scored in (e.g. bfloat16, faster on CPUs with native bf16).
    With `answers`, every subject's answers are saved as soon as they are scored and a subject
    whose saved answers are current is not scored again (an interrupted calibration resumes).
    """
    dirs = [Path(s).resolve() for s in subjects]
    names = [d.name for d in dirs]
    if len(set(names)) != len(names):
        raise ConfigError(f"--subjects: directory names must be unique (got {names}); they name the subjects")
    if merges and space is None:
        raise ConfigError("--merges needs --space: the search space the merges are sampled from")
    item_ids = [i for task in suite.tasks for i in suite.eval_ids[task]]
    torch_dtype = getattr(torch, dtype)
    # What every subject's answers depend on besides the subject itself.
    scoring = {
        "banks": suite.bank_hashes(),
        "specs": {name: spec.model_dump() for name, spec in suite.spec.banks.items()},
        "items": item_ids,
        "dtype": dtype,
        "device": torch.device(device).type,
    }
    rows, infos = [], []
    sha256_of = functools.cache(lambda path: subject_sha256(Path(path)))  # parents are often subjects too

    def score(name: str, subject: dict, make_model: Callable[[], tuple[object, Path]]) -> None:
        key = answers_key(**scoring, subject=subject)
        saved = answers.get(name, key) if answers else None
        if saved is not None:
            if progress:
                progress(f"{name}: answers saved in {answers.directory} are current, not scored again")
        else:
            if progress:
                progress(f"scoring {name} on {len(item_ids)} items")
            model, tokenizer_dir = make_model()
            evaluator = FitnessEvaluator(
                suite, tokenizer_dir, device=device, batch_size=batch_size, estimator="mean"
            )
            saved = evaluator.score_eval_split(model)
            if answers:
                answers.put(name, key, saved)
        rows.append([saved[i] for i in item_ids])

    for model_dir in dirs:
        info = {"name": model_dir.name, "path": str(model_dir), "sha256": sha256_of(str(model_dir))}
        score(
            model_dir.name,
            {"sha256": info["sha256"]},
            lambda model_dir=model_dir: (load_subject(model_dir, device, torch_dtype), model_dir),
        )
        infos.append(info)
    if merges and space is not None:
        from evomerge.merge.live import LiveMerger

        models = {p: sha256_of(p) for p in [space.base, *space.parents] if p}

        @functools.cache
        def merger() -> LiveMerger:  # loaded on the first merge whose answers are not saved
            return LiveMerger(space.base, space.parents, device=device, model_dtype=torch_dtype)

        for number, (name, recipe) in enumerate(space_filling_recipes(space, merges, seed)):
            if name in names:
                raise ConfigError(f"--subjects: {name!r} is the name of a space-filling merge; rename it")
            score(
                name,
                {"recipe": recipe, "models": models, "merge_dtype": "float32"},
                lambda recipe=recipe: (merger().apply(space.decode_recipe(recipe)), merger().tokenizer_dir),
            )
            infos.append({"name": name, "recipe": recipe, "space": space.spec.name, "sample": number})
    return fit_calibration(
        np.array(rows, dtype=float),
        item_ids,
        suite.eval_ids,
        infos,
        dims=dims,
        groups={i: suite.items[i].group or "" for i in item_ids},
        suite=suite.name,
        bank_hashes=suite.bank_hashes(),
        seed=seed,
    )


def space_filling_recipes(space: SearchSpace, n: int, seed: int = 0) -> list[tuple[str, dict]]:
    """n recipes (name, mergekit dict) spread over the space: a scrambled Latin hypercube of its cube."""
    from scipy.stats import qmc

    points = qmc.LatinHypercube(d=space.dim, seed=seed).random(n)
    return [(f"merge_{k:02d}", space.decode_dict(point)) for k, point in enumerate(points)]
