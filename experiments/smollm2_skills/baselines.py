"""Untuned merge baselines of the experts, measured on the full eval split.

- task_arithmetic: uniform task arithmetic (Ilharco et al., 2023) without tuning the scale: every
  expert's task vector at weight 1/n (lambda 1, no normalization), the search's own baseline.
- ties: TIES-merging (Yadav et al., 2023) with the engine's declared defaults (density 1.0, so
  trimming is off, sign election on, normalize on) and weight 1.0 per expert.

Each recipe is applied in memory (LiveMerger, no disk) and scored like the base and experts; the
recipes are written to results/recipes/NAME.yaml with the cache paths replaced by the model names.

    python experiments/smollm2_skills/baselines.py [--experts A B ...] [--suffix S] [--per-task N]
    python experiments/smollm2_skills/baselines.py --recipe knee=KNEE.yaml   # e.g. an exported search result
    python experiments/smollm2_skills/baselines.py --baselines --suffix 3 --recipe pick=PICK.yaml ...

A recipe that merges to the very same weights as one scored before in the same call (a search's pick
that is its baseline trial, or a recipe given under two names) is scored once.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from build_base import DEFAULT_ROOT  # noqa: E402
from evaluate import RESULTS_DIR, add_dtype_option, make_evaluator, measure, record, tagged  # noqa: E402

from evomerge.merge.live import LiveMerger  # noqa: E402
from evomerge.recipe import MergeRecipe  # noqa: E402


def baseline_recipes(base: Path, experts: list[Path]) -> dict[str, MergeRecipe]:
    def models(**parameters: float) -> list[dict]:
        return [{"model": str(path), "parameters": dict(parameters)} for path in experts]

    common = {"base_model": str(base), "dtype": "float32"}
    return {
        "task_arithmetic": MergeRecipe.from_dict(
            {**common, "merge_method": "task_arithmetic", "models": models(weight=round(1 / len(experts), 6))}
        ),
        "ties": MergeRecipe.from_dict({**common, "merge_method": "ties", "models": models(weight=1.0)}),
    }


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's tensors (names and bytes): equal digests mean equal answers."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", nargs="+", default=["arithmetic", "reasoning"])
    parser.add_argument("--only", nargs="+", help="baseline names to run (default: all)")
    parser.add_argument(
        "--suffix",
        default="",
        help="appended to the baselines' result names (e.g. 3: ties3 over three experts)",
    )
    parser.add_argument(
        "--recipe",
        action="append",
        default=[],
        help="NAME=PATH: score this recipe YAML instead of the baselines",
    )
    parser.add_argument(
        "--baselines", action="store_true", help="with --recipe: score the untuned baselines first too"
    )
    parser.add_argument(
        "--root", type=Path, default=DEFAULT_ROOT, help="cache root (env EVOMERGE_SMOLLM2_CACHE)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--per-task", type=int, help="score a seeded stratified subset of N eval items per task"
    )
    add_dtype_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("EVOMERGE_THREADS", "2")))
    base, experts = args.root / "base", [args.root / name for name in args.experts]
    merger = LiveMerger(base, experts, model_dtype=getattr(torch, args.dtype))
    evaluator, tag = make_evaluator(base, args.per_task, args.batch_size, split=args.split)
    tag = tagged(tag, args.dtype)
    (RESULTS_DIR / "recipes").mkdir(parents=True, exist_ok=True)
    recipes = {}
    if args.baselines or not args.recipe:
        recipes = {name + args.suffix: recipe for name, recipe in baseline_recipes(base, experts).items()}
    recipes |= {k: MergeRecipe.from_yaml(Path(v)) for k, v in (r.split("=", 1) for r in args.recipe)}
    # weights digest -> (accuracy, answers, merge seconds, total seconds), each model scored once
    measured: dict[str, tuple[dict[str, float], dict[str, int], float, float]] = {}
    for name, recipe in recipes.items():
        if args.only and name not in args.only:
            continue
        yaml_text = recipe.to_yaml()
        start = time.perf_counter()
        model = merger.apply(recipe)
        merge_seconds = time.perf_counter() - start
        digest = weights_digest(model)
        if digest in measured:
            print(f"{name}: the same weights as a model scored above", flush=True)
        else:
            accuracy, answers = measure(model, evaluator, tag)
            measured[digest] = (accuracy, answers, merge_seconds, time.perf_counter() - start)
        accuracy, answers, merge_seconds, seconds = measured[digest]
        record(name, accuracy, answers, seconds, tag)
        text = yaml_text.replace(str(args.root.resolve()) + "/", "")
        (RESULTS_DIR / "recipes" / f"{name}.yaml").write_text(text)
        print(f"{name}: {accuracy} (merge {merge_seconds:.1f} s, total {seconds:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
