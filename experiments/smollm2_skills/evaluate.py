"""Full eval-split accuracy of the base and the experts on the experiment's fitness suite.

Every eval item of every task is scored (no anchors, no estimation): these are the reference numbers
the report compares merges against. Results go to results/accuracy.json, keyed by model name.

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

from evomerge.fitness.scoring import Scorer  # noqa: E402
from evomerge.fitness.suite import FitnessSuite  # noqa: E402

REPO = HERE.parents[1]
SUITE = REPO / "fitness" / "skills.yaml"
RESULTS = HERE / "results" / "accuracy.json"


def full_accuracy(model, suite: FitnessSuite, scorer: Scorer) -> tuple[dict[str, float], int]:
    """Measured accuracy per task on the whole eval split, and the number of items scored."""
    items = [item for task in suite.tasks for item in suite.task_items(task)]
    norms = {item.id: suite.bank_spec_of(item.id).normalization for item in items}
    correct = scorer.score(model, items, normalization=norms).correct
    accuracy = {
        task: sum(correct[i] for i in suite.eval_ids[task]) / len(suite.eval_ids[task])
        for task in suite.tasks
    }
    return accuracy, len(items)


def record(name: str, accuracy: dict[str, float], n_items: int, seconds: float, path: Path = RESULTS) -> None:
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[name] = {
        "accuracy": {task: round(value, 4) for task, value in accuracy.items()},
        "mean": round(sum(accuracy.values()) / len(accuracy), 4),
        "items": n_items,
        "seconds": round(seconds, 1),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    suite = FitnessSuite.load(args.suite)
    scorer = Scorer(AutoTokenizer.from_pretrained(args.root / "base"), batch_size=args.batch_size)
    for name in args.models:
        model = AutoModelForCausalLM.from_pretrained(args.root / name, dtype=torch.float32).eval()
        start = time.perf_counter()
        accuracy, n_items = full_accuracy(model, suite, scorer)
        seconds = time.perf_counter() - start
        record(name, accuracy, n_items, seconds)
        print(f"{name}: {accuracy} ({n_items} items, {seconds:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
