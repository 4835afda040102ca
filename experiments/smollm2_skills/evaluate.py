"""Full eval-split accuracy of the base and the experts on the experiment's fitness suite.

Every eval item of every task is scored (no estimation), or with --per-task N the same seeded,
group-stratified N eval items per task for every model (when the full split does not fit the time).
Results go to results/accuracy_TAG.json (keyed by model name; TAG is "full" or "evalN") and
results/responses/TAG/NAME.json (per-item 0/1 answers, the rows of a calibration's response matrix).

    python experiments/smollm2_skills/evaluate.py [--models base arithmetic reasoning] [--suite ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from build_base import DEFAULT_ROOT  # noqa: E402

from evomerge.fitness.banks.suite import FitnessSuite  # noqa: E402
from evomerge.fitness.irt.anchors import stratified_random  # noqa: E402
from evomerge.fitness.scoring.evaluator import FitnessEvaluator  # noqa: E402

REPO = HERE.parents[1]
SUITE = REPO / "fitness" / "skills.yaml"
RESULTS_DIR = HERE / "results"


def make_evaluator(
    tokenizer_dir: Path, per_task: int | None, batch_size: int, suite: Path = SUITE, split: str = "eval"
):
    """An evaluator over the full eval split (per_task None), the full test split (split "test"), or
    a seeded, group-stratified subset of the eval split.

    The subset is the same items for every model (a paired comparison); estimator "mean" needs no
    calibration. Returns the evaluator and the tag that names the result files.
    """
    if per_task is None:
        tag = "full" if split == "eval" else split
        return FitnessEvaluator(suite, tokenizer_dir, estimator="mean", batch_size=batch_size), tag
    loaded = FitnessSuite.load(suite)
    groups = {item.id: item.group or "" for item in loaded.items.values()}
    subset = stratified_random(loaded.eval_ids, per_task, groups, seed=0)
    evaluator = FitnessEvaluator(
        loaded, tokenizer_dir, estimator="mean", batch_size=batch_size, anchors=subset
    )
    return evaluator, f"eval{per_task}"


def add_dtype_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--split",
        default="eval",
        choices=["eval", "test"],
        help="score the full eval split (results tagged full) or the full test split (tagged test)",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="dtype of the scored model (bfloat16: ~3x faster on this CPU; merges stay float32)",
    )


def tagged(tag: str, dtype: str) -> str:
    """Result files of bfloat16 scoring are kept apart from float32 ones (e.g. accuracy_full-bfloat16)."""
    return tag if dtype == "float32" else f"{tag}-{dtype}"


def measure(model, evaluator: FitnessEvaluator, tag: str) -> tuple[dict[str, float], dict[str, int]]:
    """Measured accuracy per task on the evaluator's items, and the 0/1 answer of every item.

    The per-item answers are kept: they are the rows of the response matrix the IRT calibration
    is fitted on, so no model is scored twice.
    """
    if tag.split("-")[0] == "full":  # "full" or a dtype-tagged "full-bfloat16"
        answers, ids = evaluator.score_eval_split(model), evaluator.suite.eval_ids
    elif tag.split("-")[0] == "test":  # the held-out split: only the final measurement reads it
        answers, ids = evaluator.score_split(model, "test"), evaluator.suite.test_ids
    else:
        answers, ids = evaluator.evaluate(model).answers, evaluator.anchor_ids
    return {task: sum(answers[i] for i in ids[task]) / len(ids[task]) for task in ids}, answers


def record(
    name: str,
    accuracy: dict[str, float],
    answers: dict[str, int],
    seconds: float,
    tag: str,
    results_dir: Path = RESULTS_DIR,
) -> None:
    """Add a model's accuracies to accuracy_TAG.json and its per-item answers to responses/TAG/NAME.json."""
    path = results_dir / f"accuracy_{tag}.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[name] = {
        "accuracy": {task: round(value, 4) for task, value in accuracy.items()},
        "mean": round(sum(accuracy.values()) / len(accuracy), 4),
        "items": len(answers),
        "seconds": round(seconds, 1),
    }
    (results_dir / "responses" / tag).mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    (results_dir / "responses" / tag / f"{name}.json").write_text(json.dumps(answers, sort_keys=True) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["base", "arithmetic", "reasoning"])
    parser.add_argument(
        "--root", type=Path, default=DEFAULT_ROOT, help="cache root (env EVOMERGE_SMOLLM2_CACHE)"
    )
    parser.add_argument("--suite", type=Path, default=SUITE)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--per-task", type=int, help="score a seeded stratified subset of N eval items per task"
    )
    add_dtype_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("EVOMERGE_THREADS", "2")))
    from transformers import AutoModelForCausalLM

    evaluator, tag = make_evaluator(
        args.root / "base", args.per_task, args.batch_size, args.suite, args.split
    )
    tag = tagged(tag, args.dtype)
    for name in args.models:
        dtype = getattr(torch, args.dtype)
        model = AutoModelForCausalLM.from_pretrained(args.root / name, dtype=dtype).eval()
        start = time.perf_counter()
        accuracy, answers = measure(model, evaluator, tag)
        seconds = time.perf_counter() - start
        record(name, accuracy, answers, seconds, tag)
        print(f"{name}: {accuracy} ({len(answers)} items, {seconds:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
