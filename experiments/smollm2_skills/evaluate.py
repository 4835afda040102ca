"""Full eval-split accuracy of the base and the experts on the experiment's fitness suite.

Every eval item of every task is scored (no anchors, no estimation): these are the reference numbers
the report compares merges against. Results go to results/accuracy.json (keyed by model name) and
results/responses/NAME.json (per-item 0/1 answers, the rows of the calibration's response matrix).

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

from evomerge.fitness.evaluator import FitnessEvaluator  # noqa: E402

REPO = HERE.parents[1]
SUITE = REPO / "fitness" / "skills.yaml"
RESULTS_DIR = HERE / "results"


def full_accuracy(model, evaluator: FitnessEvaluator) -> tuple[dict[str, float], dict[str, int]]:
    """Measured accuracy per task on the whole eval split, and the 0/1 answer of every item.

    The per-item answers are kept: they are the rows of the response matrix the IRT calibration
    is fitted on, so no model is scored twice.
    """
    answers = evaluator.score_eval_split(model)
    ids = evaluator.suite.eval_ids
    return {task: sum(answers[i] for i in ids[task]) / len(ids[task]) for task in ids}, answers


def record(
    name: str,
    accuracy: dict[str, float],
    answers: dict[str, int],
    seconds: float,
    results_dir: Path = RESULTS_DIR,
) -> None:
    """Add a model's accuracies to accuracy.json and write its per-item answers to responses/NAME.json."""
    path = results_dir / "accuracy.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[name] = {
        "accuracy": {task: round(value, 4) for task, value in accuracy.items()},
        "mean": round(sum(accuracy.values()) / len(accuracy), 4),
        "items": len(answers),
        "seconds": round(seconds, 1),
    }
    (results_dir / "responses").mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    (results_dir / "responses" / f"{name}.json").write_text(json.dumps(answers, sort_keys=True) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["base", "arithmetic", "reasoning"])
    parser.add_argument(
        "--root", type=Path, default=DEFAULT_ROOT, help="cache root (env EVOMERGE_SMOLLM2_CACHE)"
    )
    parser.add_argument("--suite", type=Path, default=SUITE)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("EVOMERGE_THREADS", "2")))
    from transformers import AutoModelForCausalLM

    # estimator "mean": full-split scoring needs no calibration
    evaluator = FitnessEvaluator(args.suite, args.root / "base", estimator="mean", batch_size=args.batch_size)
    for name in args.models:
        model = AutoModelForCausalLM.from_pretrained(args.root / name, dtype=torch.float32).eval()
        start = time.perf_counter()
        accuracy, answers = full_accuracy(model, evaluator)
        seconds = time.perf_counter() - start
        record(name, accuracy, answers, seconds)
        print(f"{name}: {accuracy} ({len(answers)} items, {seconds:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
