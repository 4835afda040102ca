"""Print the report's tables (markdown) from the committed result files, so REPORT.md quotes them verbatim.

python experiments/smollm2_skills/tables.py [--tag eval100]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable
from pathlib import Path

from evomerge.fitness.banks.suite import FitnessSuite

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SUITE = HERE.parents[1] / "fitness" / "skills.yaml"
ORDER = [
    "base",
    "arithmetic",
    "reasoning",
    "logic",
    "task_arithmetic",
    "ties",
    "task_arithmetic3",
    "ties3",
    "cma_knee",
    "nsga2_knee",
    "random_knee",
    "cma_irt_knee",
    "nsga2_irt_knee",
    "random_irt_knee",
    "cma_mean_knee",
    "cma_irt3_knee",
    "nsga2_irt3_knee",
    "random_irt3_knee",
    "nsga2_irt3_a30_knee",
]


def _ordered(available: Iterable[str], models: list[str] | None) -> list[str]:
    """The available models in report order (ORDER, then the rest by name), only `models` if given."""
    available = set(available)
    names = [n for n in ORDER if n in available] + sorted(available - set(ORDER))
    return [n for n in names if models is None or n in models]


def accuracy_table(tag: str, models: list[str] | None = None) -> str:
    results = json.loads((RESULTS / f"accuracy_{tag}.json").read_text())
    names = _ordered(results, models)
    tasks = list(results[names[0]]["accuracy"])
    responses = {n: json.loads((RESULTS / "responses" / tag / f"{n}.json").read_text()) for n in names}
    answered = next(iter(responses.values()))
    eval_ids = FitnessSuite.load(SUITE).eval_ids
    n_items = {t: sum(1 for i in eval_ids[t] if i in answered) for t in tasks}  # items scored per task
    lines = [
        "| model | " + " | ".join(tasks) + " | mean | items | seconds |",
        "|---" * (len(tasks) + 4) + "|",
    ]
    for name in names:
        row = results[name]
        # binomial standard error of each measured accuracy: sqrt(p(1-p)/n)
        cells = [
            f"{row['accuracy'][t]:.3f} ± {_standard_error(row['accuracy'][t], n_items[t]):.3f}" for t in tasks
        ]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {row['mean']:.3f} | {row['items']} | {row['seconds']} |"
        )
    return "\n".join(lines)


def _standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy p measured on n items: sqrt(p(1-p)/n)."""
    return math.sqrt(p * (1 - p) / n)


def experts_table() -> str:
    experts = json.loads((RESULTS / "experts.json").read_text())["experts"]
    lines = [
        "| expert | train items | steps x batch | lr | loss first 5 -> last 5 | s/step | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in experts.items():
        t = e["train"]
        lines.append(
            f"| {name} | {e['train_items']} | {t['steps']} x {t['batch_size']} | {t['lr']} | "
            f"{e['loss_first5']} -> {e['loss_last5']} | {e['seconds_per_step']} | {e['train_seconds']} |"
        )
    return "\n".join(lines)


def dump_trials(run_dir: Path, out: Path) -> None:
    """Every trial of a search run (kind, label, estimates, timings, genome) as a small JSON table."""
    from evomerge.store import open_run

    keys = ("kind", "label", "estimates", "timings", "n_items", "genome")
    rows = [
        {"number": t.number, "state": t.state.name, **{k: t.user_attrs.get(k) for k in keys}}
        for t in open_run(run_dir).study.trials
    ]
    out.write_text(json.dumps(rows) + "\n")


def search_table(
    names: tuple[str, ...] = (
        "cma",
        "nsga2",
        "random",
        "cma_irt",
        "nsga2_irt",
        "random_irt",
        "cma_mean",
        "cma_irt3",
        "nsga2_irt3",
        "random_irt3",
        "nsga2_irt3_a30",
    ),
) -> str:
    """Per search (results/search_NAME_trials.json): trials, median timings, items scored, best mean."""
    import statistics

    lines = [
        "| search | trials (parents+baseline / search) | median merge s | median score s | items scored "
        "| same trials on the full split | best mean estimate (trial) |",
        "|---|---|---|---|---|---|---|",
    ]
    full = sum(len(ids) for ids in FitnessSuite.load(SUITE).eval_ids.values())
    for name in names:
        path = RESULTS / f"search_{name}_trials.json"
        if not path.is_file():
            continue
        done = [t for t in json.loads(path.read_text()) if t["state"] == "COMPLETE"]
        search = [t for t in done if t["kind"] == "search"]
        best = max(done, key=lambda t: sum(t["estimates"].values()) / len(t["estimates"]))
        best_mean = sum(best["estimates"].values()) / len(best["estimates"])
        items = sum(t["n_items"] for t in done)
        lines.append(
            f"| {name} | {len(done)} ({len(done) - len(search)} / {len(search)}) "
            f"| {statistics.median(t['timings']['merge'] for t in search):.2f} "
            f"| {statistics.median(t['timings']['score'] for t in search):.1f} "
            f"| {items} | {full * len(done)} | {best_mean:.3f} ({best['number']}) |"
        )
    return "\n".join(lines)


def paired_table(tag: str, reference: str, models: list[str] | None = None) -> str:
    """The reference model against every other one, paired over the same items: per task, items only
    the reference gets right / only the other gets right, and the difference of the task-mean
    accuracy with its standard error (sum of the tasks' paired-difference variances, over 3^2)."""
    responses = {
        p.stem: json.loads(p.read_text()) for p in sorted((RESULTS / "responses" / tag).glob("*.json"))
    }
    if reference not in responses:
        return f"({reference} not scored under {tag})"
    eval_ids = FitnessSuite.load(SUITE).eval_ids
    ref = responses[reference]
    lines = [
        f"| {reference} vs | " + " | ".join(f"{t}: +/-" for t in eval_ids) + " | mean diff ± se |",
        "|---" * (len(eval_ids) + 2) + "|",
    ]
    for name, other in responses.items():
        if name == reference or (models is not None and name not in models):
            continue
        cells, diffs, variances = [], [], []
        for task_ids in eval_ids.values():
            ids = [i for i in task_ids if i in ref]  # the scored items (all of them for "full")
            n = len(ids)
            gained = sum(1 for i in ids if ref[i] and not other[i])
            lost = sum(1 for i in ids if other[i] and not ref[i])
            cells.append(f"{gained} / {lost}")
            diffs.append((gained - lost) / n)
            variances.append((gained + lost - (gained - lost) ** 2 / n) / n**2)
        mean, se = sum(diffs) / len(diffs), math.sqrt(sum(variances)) / len(diffs)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean:+.3f} ± {se:.3f} |")
    return "\n".join(lines)


def heldout_table(
    tag: str, search_suite: Path, calibration: Path | None = None, models: list[str] | None = None
) -> str:
    """Accuracy per task on the scored items that are NOT anchors of the search's suite (items the
    search never selected on), so a knee's number carries no selection bias from its own anchors.
    `calibration`: the one the search's anchors were clustered on (its IRT suites)."""
    from evomerge.fitness.irt.anchors import select_for_suite
    from evomerge.fitness.irt.calibration import Calibration

    calibrated = Calibration.load(calibration) if calibration else None
    search = FitnessSuite.load(search_suite)
    groups = {i.id: i.group or "" for i in search.items.values()}
    n = {task: search.n_anchors(task) for task in search.tasks}
    used = {
        i
        for ids in select_for_suite(search.eval_ids, n, groups, calibrated, search.seed).ids.values()
        for i in ids
    }
    responses = {
        p.stem: json.loads(p.read_text()) for p in sorted((RESULTS / "responses" / tag).glob("*.json"))
    }
    eval_ids = FitnessSuite.load(SUITE).eval_ids
    first = next(iter(responses.values()))
    kept = {t: [i for i in ids if i in first and i not in used] for t, ids in eval_ids.items()}
    lines = [
        "| model | " + " | ".join(f"{t} (n={len(ids)})" for t, ids in kept.items()) + " | mean |",
        "|---" * (len(kept) + 2) + "|",
    ]
    for name in _ordered(responses, models):
        accuracy = [sum(responses[name][i] for i in ids) / len(ids) for ids in kept.values()]
        cells = " | ".join(f"{a:.3f}" for a in accuracy)
        lines.append(f"| {name} | {cells} | {sum(accuracy) / len(accuracy):.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default="eval100")
    parser.add_argument("--paired", help="also compare this model with every other one, item by item")
    parser.add_argument("--heldout", type=Path, help="also: accuracy without this search suite's anchors")
    parser.add_argument("--calibration", type=Path, help="the calibration --heldout's anchors came from")
    parser.add_argument("--models", nargs="+", help="only these models in the accuracy tables")
    parser.add_argument(
        "--trials", nargs=2, type=Path, metavar=("RUN_DIR", "OUT"), help="dump a run's trials"
    )
    args = parser.parse_args()
    if args.trials:
        dump_trials(*args.trials)
    print(experts_table(), end="\n\n")
    print(search_table(), end="\n\n")
    print(accuracy_table(args.tag, args.models))
    if args.paired:
        print("\n" + paired_table(args.tag, args.paired, args.models))
    if args.heldout:
        print("\n" + heldout_table(args.tag, args.heldout, args.calibration, args.models))


if __name__ == "__main__":
    main()
