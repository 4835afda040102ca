"""Round 4's summary: each search's pick measured on the test split against the baselines.

Reads the nine runs (runs/round4_OPT_sSEED), the test-split accuracies and per-item answers that
evaluate.py / baselines.py wrote (results/accuracy_test.json, responses/test/: float32 scoring),
and writes results/round4_summary.json: per run the pick (promotion's incumbent), its recipe, its
estimate (the top rung's accuracy on the selection pool), its test accuracy, and its paired
difference on the test split against untuned TIES and task arithmetic (the mean over tasks of the
per-task paired differences; its standard error from the per-task paired ones, fitness/selection/paired.py),
plus the baselines' and experts' test scores and which of the issue's goals held.

    python experiments/smollm2_skills/round4.py [--runs runs] [--print]
    python experiments/smollm2_skills/round4.py --run cma,0,round4_small_cma --tag test523 \
        --out round4_small_summary.json   # made when the test split held 523 items
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from evomerge.fitness.banks.suite import FitnessSuite  # noqa: E402
from evomerge.fitness.selection.paired import compare_answers  # noqa: E402
from evomerge.runview import PROMOTION_ATTR, RunView  # noqa: E402
from evomerge.store import open_run  # noqa: E402

OPTIMIZERS = ["cma", "nsga2", "random"]
SEEDS = [0, 1, 2]
BASELINES = {"ties": "ties3", "task_arithmetic": "task_arithmetic3"}
EXPERTS = ["base", "arithmetic", "reasoning", "logic"]


def pick_name(optimizer: str, seed: int, prefix: str = "round4") -> str:
    return f"{prefix}_{optimizer}_s{seed}"


def paired_mean(first: dict[str, int], second: dict[str, int], test_ids: dict[str, list[str]]) -> dict:
    """First minus second on the mean over tasks of the test accuracy, with its paired SE."""
    per_task = {task: compare_answers(first, second, ids) for task, ids in test_ids.items()}
    diff = sum(c.diff for c in per_task.values()) / len(per_task)
    se = math.sqrt(sum(c.se**2 for c in per_task.values())) / len(per_task)
    return {
        "diff": round(diff, 4),
        "se": round(se, 4),
        "z": round(diff / se, 2) if se else None,
        "tasks": {
            t: {"diff": round(c.diff, 4), "se": round(c.se, 4), "p_mcnemar": round(c.p_value, 4)}
            for t, c in per_task.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "runs")
    parser.add_argument(
        "--run",
        action="append",
        default=[],
        help="OPTIMIZER,SEED,NAME: a run (runs/NAME) and its pick's result name (default: the nine)",
    )
    parser.add_argument("--tag", default="test", help="result tag of the test-split scores")
    parser.add_argument(
        "--reference-tag", help="result tag to read the experts and baselines from where --tag lacks them"
    )
    parser.add_argument("--prefix", default="round4", help="the runs' name prefix (round5 for round 5)")
    parser.add_argument("--out", default="round4_summary.json")
    parser.add_argument("--print", action="store_true", help="print a table too")
    args = parser.parse_args()
    tag = args.tag
    runs = [(o, int(s), n) for o, s, n in (r.split(",") for r in args.run)] or [
        (opt, seed, pick_name(opt, seed, args.prefix)) for seed in SEEDS for opt in OPTIMIZERS
    ]
    suite = FitnessSuite.load(HERE / "suite_round4.yaml")
    test_ids = suite.test_ids
    accuracy = json.loads((HERE / "results" / f"accuracy_{tag}.json").read_text())

    def answers(name: str) -> dict[str, int]:
        return json.loads((HERE / "results" / "responses" / tag / f"{name}.json").read_text())

    def test_of(name: str, source: dict = accuracy) -> dict[str, float]:
        return {t: source[name]["accuracy"][t] for t in suite.tasks}

    picks = []
    for optimizer, seed, name in runs:
        run_dir = args.runs / name
        if not (run_dir / "run.json").is_file() or name not in accuracy:
            continue
        store = open_run(run_dir)
        view = RunView.from_store(store)
        record = view.incumbent_record()
        test = test_of(name)
        mean_test = sum(test.values()) / len(test)
        mean_estimate = sum(record.estimates[t] for t in suite.tasks) / len(suite.tasks)
        trials = [r for r in view.trials if r.kind == "search"]
        rungs = {str(k): sum(r.rung >= k for r in view.completed) for k in (1, 2)}
        picks.append(
            {
                "optimizer": optimizer,
                "seed": seed,
                "run": str(run_dir.relative_to(REPO)) if run_dir.is_relative_to(REPO) else str(run_dir),
                "pick_trial": record.number,
                "pick_kind": record.kind,
                "recipe": (HERE / "results" / "recipes" / f"{name}.yaml").read_text(),
                "rung": record.rung,
                "estimate": {t: round(record.estimates[t], 4) for t in suite.tasks},
                "search_estimate": {t: round(record.search_estimates[t], 4) for t in suite.tasks},
                "test": test,
                "test_mean": round(mean_test, 4),
                "estimate_error": {
                    "mean": round(mean_estimate - mean_test, 4),
                    "tasks": {t: round(record.estimates[t] - test[t], 4) for t in suite.tasks},
                },
                "vs_ties": paired_mean(answers(name), answers(BASELINES["ties"]), test_ids),
                "vs_task_arithmetic": paired_mean(
                    answers(name), answers(BASELINES["task_arithmetic"]), test_ids
                ),
                "search_trials": len(trials),
                "trials_at_rung": rungs,
                "estimator": next((r.estimator for r in view.completed if r.estimator), None),
                "promotion": store.read_study_attr(PROMOTION_ATTR)
                and {k: v for k, v in store.read_study_attr(PROMOTION_ATTR).items() if k != "rungs"},
            }
        )
    # A reference model not scored under this tag is taken from --reference-tag (the experts' test
    # scores in bfloat16, say), and says so.
    fallback_path = HERE / "results" / f"accuracy_{args.reference_tag}.json"
    fallback = json.loads(fallback_path.read_text()) if args.reference_tag and fallback_path.is_file() else {}
    reference = {}
    for label, name in {**BASELINES, **{e: e for e in EXPERTS}}.items():
        source, scored_tag = (accuracy, tag) if name in accuracy else (fallback, args.reference_tag)
        if name in source:
            reference[label] = {
                "test": test_of(name, source),
                "test_mean": source[name]["mean"],
                "tag": scored_tag,
            }
    by_optimizer = {opt: [p["test_mean"] for p in picks if p["optimizer"] == opt] for opt in OPTIMIZERS}
    means = {opt: round(sum(v) / len(v), 4) if v else None for opt, v in by_optimizer.items()}
    goals = {
        "every_pick_beats_ties_by_2se": all(p["vs_ties"]["diff"] >= 2 * p["vs_ties"]["se"] for p in picks),
        "cma_mean_ge_random": None
        if None in (means["cma"], means["random"])
        else means["cma"] >= means["random"],
        "nsga2_mean_ge_random": None
        if None in (means["nsga2"], means["random"])
        else means["nsga2"] >= means["random"],
        "every_estimate_within_1pt_mean": all(abs(p["estimate_error"]["mean"]) <= 0.01 for p in picks),
        "every_estimate_within_1pt_each_task": all(
            max(map(abs, p["estimate_error"]["tasks"].values())) <= 0.01 for p in picks
        ),
    }
    summary = {
        "split": "test",
        "test_items": {t: len(ids) for t, ids in test_ids.items()},
        "picks": picks,
        "baselines_and_experts": reference,
        "mean_test_by_optimizer": means,
        "goals": goals,
    }
    out = HERE / "results" / args.out
    out.write_text(json.dumps(summary, indent=2) + "\n")
    if args.print:
        for p in picks:
            print(
                f"{p['optimizer']:>6} s{p['seed']} trial {p['pick_trial']:>3} test {p['test_mean']:.3f} "
                f"est {sum(p['estimate'].values()) / 3:.3f} vs ties {100 * p['vs_ties']['diff']:+.1f} "
                f"+/- {100 * p['vs_ties']['se']:.1f}  vs TA {100 * p['vs_task_arithmetic']['diff']:+.1f} "
                f"+/- {100 * p['vs_task_arithmetic']['se']:.1f}"
            )
        for label, ref in reference.items():
            print(f"{label:>16} test {ref['test_mean']:.3f} {ref['test']} ({ref['tag']})")
        print(json.dumps({"means": means, "goals": goals}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
