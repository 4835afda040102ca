"""Measure trials on a full split: the ground truth the IRT estimates are audited against.

The split is `test` (held out from calibration, anchors and search) where every task of the
suite has test items, else `eval`; `resolve_split` decides and every report names it.

`audit_trials` re-materializes each chosen trial's recipe in memory (LiveMerger, parents loaded
once) and scores it with `FitnessEvaluator.evaluate_full`; the measurements are stored in the
study (see `runview.audit_key`) so `status` and `front` show estimated vs measured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError
from evomerge.runview import RunView, TrialRecord, audit_key

Progress = Callable[[int, int], None]  # (done, total), called after each trial


def live_merger_for(recipes: Sequence[Any], device: str = "cpu", dtype: str = "float32") -> Any:
    """One LiveMerger holding the base and every parent the recipes reference; the live model in
    `dtype` (the merges themselves are computed in float32)."""
    import torch

    from evomerge.merge.live import LiveMerger

    first = recipes[0]
    base = first.base_model
    parents: list[str] = []
    for recipe in recipes:
        for path in recipe.model_paths():
            if path != base and path not in parents:
                parents.append(path)
    return LiveMerger(base, parents, device=device, model_dtype=getattr(torch, dtype))


def audit_trials(
    store: Any,
    view: RunView,
    records: Sequence[TrialRecord],
    evaluator: Any,
    progress: Progress | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    split: str = "eval",
) -> tuple[dict[int, dict[str, float]], dict[int, dict[str, int]]]:
    """Score each record's recipe on every item of `split` and store the result in the study.

    Returns each trial's accuracy per task and its 0/1 answer per item (for paired comparisons).
    """
    from evomerge.fitness.scoring.evaluator import accuracy
    from evomerge.recipe import MergeRecipe

    if not records:
        return {}, {}
    recipes = [MergeRecipe.from_yaml(r.recipe) for r in records]
    merger = live_merger_for(recipes, device=device, dtype=dtype)
    measured: dict[int, dict[str, float]] = {}
    answers: dict[int, dict[str, int]] = {}
    for done, (record, recipe) in enumerate(zip(records, recipes, strict=True), start=1):
        merger.apply(recipe)
        answers[record.number] = evaluator.score_split(merger.model, split)
        scores = accuracy(evaluator.suite.split_ids(split), answers[record.number])
        measured[record.number] = {task: float(scores[task]) for task in view.objectives}
        # Stored right away: an interrupted audit keeps every measurement already made.
        store.write_study_attr(audit_key(record.number), measured[record.number])
        if progress is not None:
            progress(done, len(records))
    return measured, answers


def compare_to_reference(
    suite: Any, split: str, answers: dict[int, dict[str, int]], reference: int
) -> dict[int, dict[str, dict[str, float | int]]]:
    """Every other trial minus the reference, per task: paired difference, SE and McNemar's p."""
    from evomerge.fitness.selection.paired import compare_answers

    ids = suite.split_ids(split)
    return {
        number: {task: compare_answers(given, answers[reference], ids[task]).to_dict() for task in ids}
        for number, given in answers.items()
        if number != reference
    }


def resolve_split(suite: Any, split: str | None) -> str:
    """The split to measure on: `split` if given, else test where every task has test items."""
    if split is None:
        return "test" if suite.has_test_split() else "eval"
    if split not in ("test", "eval"):
        raise ConfigError(f"--split {split!r}: choose test (held out) or eval (the selection pool)")
    return split


def full_split_evaluator(suite: Any, recipe: Any, objectives: Sequence[str], device: str = "cpu") -> Any:
    """An evaluator for `evaluate_full` on the run's suite, with the recipe's tokenizer.

    Full-split scoring reads every eval item, so neither the anchors nor the estimator matter:
    the plain mean estimator is used, which needs no calibration.
    """
    from evomerge.fitness.banks.suite import FitnessSuite
    from evomerge.fitness.scoring.evaluator import FitnessEvaluator
    from evomerge.merge.io import tokenizer_dir

    suite = suite if isinstance(suite, FitnessSuite) else FitnessSuite.load(suite)
    if list(suite.tasks) != list(objectives):
        raise ConfigError(
            f"--suite {suite.name}: its tasks {suite.tasks} are not the run's objectives {list(objectives)}; "
            "pass the suite the run was searched with"
        )
    return FitnessEvaluator(suite, str(tokenizer_dir(recipe)), device=device, estimator="mean")


def measure_model_dir(
    model_dir: Path, evaluator: Any, device: str = "cpu", dtype: str = "float32", split: str = "eval"
) -> dict[str, float]:
    """Accuracy on every item of `split` of a model saved on disk (what `export --verify` checks)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
    return {task: float(value) for task, value in evaluator.evaluate_full(model, split).items()}
