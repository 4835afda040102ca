"""Promotion's pick rule under noise: a simulated search, scored by its true accuracy.

The real `Promoter` (evomerge/runtime/promotion.py) runs over a simulated search with one worker,
handed out as the search loop hands them out: a promotion while promotions hold under their share
of the items scored, else a new trial. Nothing is merged; each trial is a model of known quality:

- 3 tasks; per task 154 eval items (15 anchors + 139 in the selection pool, as the round-4 banks)
  and 2000 held-out items for the true accuracy. An item has a 2PL response curve with a guessing
  floor (P = 0.25 + 0.75 * sigmoid(a (theta - b)); a ~ U(0.5, 2), b ~ N(0, 1)), so two models'
  answers on one item are correlated, as real paired answers are;
- trials 0-2 are experts (one task's ability high, the others low), trial 3 the uniform baseline
  (theta 0 on every task), then search trials whose abilities drift from -0.6 to +0.4 over their
  first 100 (an optimizer finding better regions) with per-task noise of sd 0.35; promotions take
  up to `--share` of the items (0.4, eta 3: the round-4 searches').

Rules compared, each on the same simulated runs:
- `first`: today's rule: the first trial at the top rung is the incumbent; a later one replaces
  it only by the paired test at alpha;
- `best`: the top-rung trial with the best mean, no test (the winner's curse it invites);
- `after3`: no incumbent until 3 trials reach the top rung; then the best lower bound of the
  three, and the paired test for each later one;
- `lcb`: `front --lcb`'s pick among the top-rung trials (the best sum of the tasks' lower
  interval ends);
- `oracle`: the best true accuracy among the trials that reached the top rung (what a perfect
  test would pick among the same trials);
- `race R`: `first` in a search with the final race on its last fraction R of the budget (`--race`,
  the same trials and answers): from there no new trial starts while a challenger (a trial whose
  estimate at its rung beats the incumbent's there) is left, and challengers go up to the top rung.

It prints, per budget (items scored), each rule's pick against the baseline (true mean accuracy,
points; comparable across settings), its regret against the best true trial the search evaluated,
how often its pick is below the baseline's true accuracy, and how optimistic its estimate at the
top rung is (estimate - truth, points).

    python benchmarks/bench_promotion.py [--runs 200] [--budgets 1000 3000 6000] [--rungs 40 139]
        [--race 0.1 0.2 0.3]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import numpy as np

from evomerge.experiment import Promotion
from evomerge.fitness.irt.estimators import interval
from evomerge.fitness.selection.rungs import plan_rungs
from evomerge.runtime.promotion import AttrsInMemory, Promoter
from evomerge.runtime.work import WorkerResult

TASKS = ["arithmetic", "logic", "dates"]
ANCHORS, EVAL_ITEMS, TRUTH_ITEMS = 15, 154, 2000
GUESS = 0.25
HORIZON = 100  # search trials until the drift tops out


@dataclass
class Items:
    a: np.ndarray  # (tasks, items) discrimination
    b: np.ndarray  # (tasks, items) difficulty

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int) -> Items:
        return cls(rng.uniform(0.5, 2.0, (len(TASKS), n)), rng.normal(0.0, 1.0, (len(TASKS), n)))

    def p_correct(self, theta: np.ndarray) -> np.ndarray:
        return GUESS + (1 - GUESS) / (1 + np.exp(-self.a * (theta[:, None] - self.b)))


def abilities(rng: np.random.Generator, budget: int) -> list[np.ndarray]:
    """Experts, the baseline, then search trials drifting from -0.6 to +0.4 over their first
    HORIZON trials (an optimizer's progress per trial, whatever the budget or promotions' share),
    staying there after."""
    experts = [np.where(np.arange(3) == k, 1.2, -0.8) for k in range(3)]
    count = budget // (ANCHORS * len(TASKS)) + 1
    drift = -0.6 + 1.0 * np.minimum(np.arange(count) / HORIZON, 1.0)
    search = [d + rng.normal(0.0, 0.35, 3) for d in drift]
    return [*experts, np.zeros(3), *search]


def crowned_after(promoter: Promoter, arrivals: list[int], m: int, lower: dict[int, float]) -> int | None:
    """The incumbent had none been crowned before m trials reached the top rung: then the best
    lower bound among those m, and after them the paired test for each newcomer, as today."""
    if len(arrivals) < m:
        return max(arrivals, key=lower.get) if arrivals else None
    incumbent = max(arrivals[:m], key=lower.get)
    for trial in arrivals[m:]:
        if promoter.replaces(promoter.paired_test(promoter.standings[trial], promoter.standings[incumbent])):
            incumbent = trial
    return incumbent


@dataclass
class World:
    """One simulated search's trials: their abilities and every answer they would give (drawn
    once, alike for every rule and every race)."""

    thetas: list[np.ndarray]
    answers: list[np.ndarray]  # per trial, (tasks, eval items) 0/1
    anchors: dict[str, list[str]]
    plan: Any

    def bits(self, trial: int, item_ids: tuple[str, ...] | list[str]) -> dict[str, int]:
        out = {}
        for item in item_ids:
            task, j = item.split("/")
            out[item] = int(self.answers[trial][TASKS.index(task), int(j)])
        return out


def search(world: World, budget: int, alpha: float, eta: float, share: float, race: float) -> tuple:
    """The promoter after a search of `budget` items, and the number of search trials it ran; the
    jobs handed out as `evomerge/runtime/loop.py` hands them out to one worker."""
    promoter = Promoter(AttrsInMemory(), TASKS, world.plan, eta=eta, share=share, alpha=alpha, race=race)
    items_done, trial = 0, 0
    while True:
        left = budget - items_done
        racing = race > 0 and left <= race * budget
        job = promoter.next_job(racing, left) if racing or promoter.under_share(items_done) else None
        if job is not None and len(job[1].items) <= left:
            key, rescore = job
            promoter.record(key, WorkerResult(ok=True, answers=world.bits(key.trial, rescore.items)))
            items_done += len(rescore.items)
            continue
        if job is not None:
            promoter.cancel(job[0])
        if left < ANCHORS * len(TASKS) or trial >= len(world.thetas):
            break
        got = world.bits(trial, [i for t in TASKS for i in world.anchors[t]])
        estimates = {t: float(np.mean([got[i] for i in world.anchors[t]])) for t in TASKS}
        result = WorkerResult(
            ok=True, estimates=estimates, intervals={t: interval(e, ANCHORS) for t, e in estimates.items()}
        )
        promoter.completed(trial, f"trial {trial}", result)
        items_done += ANCHORS * len(TASKS)
        trial += 1
    return promoter, trial


def simulate(
    rng: np.random.Generator,
    budget: int,
    rungs: list[int],
    alpha: float,
    eta: float,
    share: float,
    races: list[float],
) -> dict[str, tuple]:
    """One search; for each rule (true mean of its pick, true best, baseline's true mean, estimate)."""
    items, truth_items = Items.draw(rng, EVAL_ITEMS), Items.draw(rng, TRUTH_ITEMS)
    ids = {t: [f"{t}/{j}" for j in range(EVAL_ITEMS)] for t in TASKS}
    anchors = {t: ids[t][:ANCHORS] for t in TASKS}
    plan = plan_rungs(ids, anchors, rungs, seed=int(rng.integers(1 << 30)))
    thetas = abilities(rng, budget)
    answers = [(rng.random(items.a.shape) < items.p_correct(th)).astype(int) for th in thetas]
    world = World(thetas, answers, anchors, plan)
    promoter, trial = search(world, budget, alpha, eta, share, race=0.0)
    raced = {race: search(world, budget, alpha, eta, share, race) for race in races}
    true_mean = [float(truth_items.p_correct(th).mean()) for th in thetas[:trial]]
    top = [s for s in promoter.standings.values() if s.rung == promoter.top]
    estimate = {s.trial: float(np.mean(list(s.levels[promoter.top].values()))) for s in top}
    # `front --lcb`'s score: the sum of the tasks' lower interval ends, at the top rung
    lower = {s.trial: sum(s.intervals[promoter.top][t][0] for t in TASKS) for s in top}
    arrivals = [entry["trial"] for entry in promoter.history]  # the top rung's trials, in order
    replayed = crowned_after(promoter, arrivals, 1, lower)
    assert replayed == promoter.incumbent, (replayed, promoter.incumbent)  # the replay is the rule
    picks = {
        "first": promoter.incumbent,
        "after3": crowned_after(promoter, arrivals, 3, lower),
        "best": max(estimate, key=estimate.get) if estimate else None,
        "lcb": max(lower, key=lower.get) if lower else None,
        "oracle": max(estimate, key=lambda t: true_mean[t]) if estimate else None,
    }
    best, baseline = max(true_mean), true_mean[3]
    outcomes = {
        rule: (true_mean[pick], best, baseline, estimate[pick])
        for rule, pick in picks.items()
        if pick is not None
    }
    for race, (raced_promoter, raced_trials) in raced.items():
        pick = raced_promoter.incumbent
        if pick is not None:
            top_mean = np.mean(list(raced_promoter.standings[pick].levels[raced_promoter.top].values()))
            true_raced = [float(truth_items.p_correct(th).mean()) for th in thetas[:raced_trials]]
            outcomes[f"race {race:g}"] = (true_raced[pick], max(true_raced), baseline, float(top_mean))
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000, 3000, 6000])
    parser.add_argument("--rungs", type=int, nargs="+", default=[40, 139])
    parser.add_argument("--alpha", type=float, default=Promotion.model_fields["alpha"].default)
    parser.add_argument("--eta", type=float, default=3.0)
    parser.add_argument("--share", type=float, default=0.4)
    parser.add_argument("--race", type=float, nargs="*", default=[0.1, 0.2, 0.3])
    args = parser.parse_args()
    print(
        f"{args.runs} simulated searches per budget; rungs {args.rungs} items per task; alpha {args.alpha}; "
        f"eta {args.eta}; share {args.share}"
    )
    print()
    print(
        "| budget | rule | pick - baseline (points) | best trial - pick | below baseline | estimate - truth |"
    )
    print("|---:|---|---:|---:|---:|---:|")
    for budget in args.budgets:
        rng = np.random.default_rng(budget)
        outcomes: dict[str, list[tuple]] = {}
        for _ in range(args.runs):
            run = simulate(rng, budget, args.rungs, args.alpha, args.eta, args.share, args.race)
            for rule, outcome in run.items():
                outcomes.setdefault(rule, []).append(outcome)
        if not outcomes:
            print(f"| {budget} | (no trial reached the top rung) | | | | |")
        for rule, rows in outcomes.items():
            data = np.array(rows)
            gain = 100 * np.mean(data[:, 0] - data[:, 2])
            regret = 100 * np.mean(data[:, 1] - data[:, 0])
            below = np.mean(data[:, 0] < data[:, 2])
            optimism = 100 * np.mean(data[:, 3] - data[:, 0])
            print(f"| {budget} | {rule} | {gain:+.2f} | {regret:.2f} | {below:.0%} | {optimism:+.2f} |")


if __name__ == "__main__":
    main()
