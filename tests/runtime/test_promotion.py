"""Promotion inside the search: rungs on fresh selection-pool items, paired, within their share of
the item budget, kept exactly by resume, and what the picks read. The real driver, store and
promoter run; Ray is replaced by the inline scheduler of test_resume_exact, whose 'worker' answers
each item of a promotion by a fixed coin of (recipe, item) weighted by the recipe's analytic
accuracy, so a trial's answers are the same whenever it is scored."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from searchfixture import SUITE, write_experiment
from test_resume_exact import InlineScheduler, numbers, score, stop_after

import evomerge.runtime.scheduler
from evomerge.errors import ConfigError
from evomerge.experiment import Experiment
from evomerge.fitness.banks.suite import FitnessSuite
from evomerge.fitness.selection.plan import default_anchors
from evomerge.fitness.selection.rungs import plan_rungs
from evomerge.runtime.driver import SearchDriver
from evomerge.runtime.promotion import AttrsInMemory, Promoter
from evomerge.runtime.work import Rescore, RungKey, WorkerResult
from evomerge.runview import INCUMBENT_ATTR, PROMOTION_ATTR, RunView, rung_key
from evomerge.store import open_run

RUNGS = [10, 30]  # items per task


def coin(recipe_yaml: str, item: str) -> float:
    """A fixed coin per (recipe, item): from the recipe's numbers, not its model paths (which
    change with the test's temporary directory)."""
    recipe = yaml.safe_load(recipe_yaml)
    key = numbers([m.get("parameters", {}) for m in recipe["models"]]) + numbers(recipe.get("parameters"))
    digest = hashlib.sha256(f"{key}|{item}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def rescore(work: Rescore) -> WorkerResult:
    truth = score(work.recipe_yaml).estimates
    task = {"arithmetic": "arithmetic", "date_understanding": "dates"}
    answers = {i: int(coin(work.recipe_yaml, i) < truth[task[i.split("/")[0]]]) for i in work.items}
    return WorkerResult(ok=True, worker="inline", answers=answers, n_items=len(work.items))


class PromotingScheduler(InlineScheduler):
    submitted: list[Any] = []  # every payload, in order (class-wide: the driver makes the instance)

    def submit(self, key: Any, payload: Any) -> None:
        PromotingScheduler.submitted.append((key, payload))
        super().submit(key, payload)

    def evaluate(self, payload: Any) -> WorkerResult:
        return rescore(payload) if isinstance(payload, Rescore) else score(payload)


@pytest.fixture(autouse=True)
def promoting_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    PromotingScheduler.submitted = []
    monkeypatch.setattr(evomerge.runtime.scheduler, "Scheduler", PromotingScheduler)


def experiment(tmp_path: Path, tiny_family: Any, budget: dict, promotion: dict | None = None) -> Path:
    path = write_experiment(tmp_path / "exp", tiny_family, trials=1, optimizer={"name": "random"})
    spec = yaml.safe_load(path.read_text())
    spec["budget"] = budget
    spec["promotion"] = promotion or {"rungs": RUNGS, "share": 0.5}
    path.write_text(yaml.safe_dump(spec))
    return path


def run(path: Path, run_dir: Path, **kwargs: Any) -> Any:
    return SearchDriver(Experiment.load(path), run_dir, make_actor=lambda i: None, **kwargs).run()


def promotions() -> list[tuple[RungKey, Rescore]]:
    return [(k, p) for k, p in PromotingScheduler.submitted if isinstance(k, RungKey)]


def test_rungs_are_fresh_nested_paired_and_apart_from_anchors_and_test(tmp_path, tiny_family) -> None:
    path = experiment(tmp_path, tiny_family, {"trials": 24})
    run(path, tmp_path / "run")
    suite = FitnessSuite.load(SUITE)
    anchors = default_anchors(suite, None, 0)
    store = open_run(tmp_path / "run")
    plan = store.read_study_attr(PROMOTION_ATTR)["rungs"]
    anchor_ids = {i for ids in anchors.ids.values() for i in ids}
    test_ids = {i for ids in suite.test_ids.values() for i in ids}
    for task, ids in plan[-1].items():
        assert set(ids) <= set(suite.eval_ids[task])  # the selection pool is eval items ...
        assert not set(ids) & anchor_ids and not set(ids) & test_ids  # ... that are no anchors
        assert plan[0][task] == ids[: len(plan[0][task])]  # nested: rung 1 is a prefix of rung 2
        assert len(plan[0][task]) == RUNGS[0] and len(ids) == RUNGS[1]
    sent = promotions()
    assert sent, "no trial was promoted"
    to_top = [p for k, p in sent if k.rung == 2]
    assert to_top, "no trial reached the top rung"
    assert len({p.items for p in to_top}) == 1  # every promoted trial gets the same new items
    assert set(to_top[0].items) == {i for ids in plan[1].values() for i in ids} - {
        i for ids in plan[0].values() for i in ids
    }  # a promotion scores only what its rung adds
    attrs = store.study_attrs()
    for key, _ in sent:
        stored = attrs[rung_key(key.trial)][str(key.rung)]
        assert {t: len(bits) for t, bits in stored["answers"].items()} == {
            t: len(ids) for t, ids in plan[key.rung - 1].items()
        }


def test_promoted_trials_were_the_best_of_their_rung_and_the_view_reads_the_highest(
    tmp_path, tiny_family
) -> None:
    path = experiment(tmp_path, tiny_family, {"trials": 24})
    run(path, tmp_path / "run")
    view = RunView.from_store(open_run(tmp_path / "run"))
    promoted = [r for r in view.completed if r.rung > 0]
    rest = [r for r in view.completed if r.rung == 0]
    assert promoted and rest
    mean = lambda est: np.mean(list(est.values()))  # noqa: E731
    # the analytic scores' best trials are the promoted ones (ASHA keeps the top 1/eta)
    assert max(mean(r.search_estimates) for r in promoted) >= max(mean(r.search_estimates) for r in rest)
    for record in promoted:
        assert record.values == tuple(record.estimates[t] for t in view.objectives)
        assert record.estimates != record.search_estimates  # the rung's accuracy, not the anchors'
    top = max(r.rung for r in view.completed)
    assert {r.rung for r in view.pick_pool()} == {top}
    assert view.knee().rung == top and view.best_lower_bound().rung == top
    assert view.incumbent_record().rung == top


def test_item_budget_counts_every_job_and_promotions_hold_their_share(tmp_path, tiny_family) -> None:
    budget, share = 900, 0.4  # no final race: promotions hold their share to the end
    spec = {"rungs": RUNGS, "share": share, "race": 0}
    path = experiment(tmp_path, tiny_family, {"items": budget}, spec)
    summary = run(path, tmp_path / "run")
    store = open_run(tmp_path / "run")
    trials = store.trials()
    scored = sum(int(t.user_attrs.get("n_items") or 0) for t in trials if t.state.name == "COMPLETE")
    promoted = sum(len(p.items) for _, p in promotions())
    assert summary.items == scored + promoted
    assert budget - 16 < summary.items <= budget  # filled to within one search trial (16 anchors)
    # a promotion is handed out only while the promotions before it hold under their share of
    # everything handed out before it (finished or running: the items they score)
    promoted_before = total_before = 0
    for key, payload in PromotingScheduler.submitted:
        cost = len(payload.items) if isinstance(payload, Rescore) else 16
        if isinstance(key, RungKey):
            assert promoted_before < share * total_before
            promoted_before += cost
        total_before += cost
    assert promoted > 0 and promoted / summary.items < share + 40 / summary.items  # one job of slack


def test_resume_keeps_rungs_exactly(tmp_path, tiny_family) -> None:
    path = experiment(tmp_path, tiny_family, {"trials": 24})
    stopped = run(path, tmp_path / "run", on_progress=stop_after(12))
    assert stopped.stopped == "interrupted"
    first = open_run(tmp_path / "run").study_attrs()
    before = {k: v for k, v in first.items() if k.startswith("rungs.")}
    assert before, "nothing was promoted before the stop"
    PromotingScheduler.submitted = []
    resumed = run(path, tmp_path / "run", resume=True)
    after = open_run(tmp_path / "run").study_attrs()
    for key, rungs in before.items():  # what the first session recorded stays as it was
        assert {r: after[key][r] for r in rungs} == rungs
    again = [k for k in (k for k, _ in promotions()) if str(k.rung) in before.get(rung_key(k.trial), {})]
    assert again == []  # no rung scored twice
    assert after[PROMOTION_ATTR] == first[PROMOTION_ATTR]
    # the item count goes on from the first session's: every COMPLETE trial's and every rung's
    scored = sum(
        int(t.user_attrs.get("n_items") or 0)
        for t in open_run(tmp_path / "run").trials()
        if t.state.name == "COMPLETE"
    )
    plan = after[PROMOTION_ATTR]["rungs"]
    promoted = sum(
        sum(len(ids) for ids in plan[max(int(r) for r in rungs) - 1].values())
        for k, rungs in after.items()
        if k.startswith("rungs.")
    )
    assert resumed.items == scored + promoted
    view = RunView.from_store(open_run(tmp_path / "run"))
    assert view.incumbent_record().rung == len(plan)


def test_resume_refuses_other_rungs(tmp_path, tiny_family) -> None:
    path = experiment(tmp_path, tiny_family, {"trials": 8})
    run(path, tmp_path / "run")
    spec = yaml.safe_load(path.read_text())
    spec["promotion"]["rungs"] = [12, 30]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="promotion rungs .* differ"):
        run(path, tmp_path / "run", resume=True)


def top_promoter(n_items: int) -> Promoter:
    ids = [f"t/{i:03d}" for i in range(n_items + 5)]
    plan = plan_rungs({"t": ids}, {"t": ids[:5]}, ["all"], seed=0)
    return Promoter(AttrsInMemory(), ["t"], plan, eta=2, share=0.5, alpha=0.05)


def reach_top(promoter: Promoter, trial: int, correct: set[int]) -> str | None:
    promoter.add(trial, f"recipe {trial}", {"estimates": {"t": 0.5}, "intervals": {"t": [0.0, 1.0]}})
    items = promoter.plan.ids(1)
    answers = {item: int(k in correct) for k, item in enumerate(items)}
    key = RungKey(trial, 1)
    promoter.running[key] = len(items)
    return promoter.record(key, WorkerResult(ok=True, answers=answers, n_items=len(items)))


def test_a_challenger_replaces_the_incumbent_only_when_the_paired_test_says_better() -> None:
    promoter = top_promoter(200)
    assert "first trial" in reach_top(promoter, 0, set(range(100)))
    # 4 more items right and 2 fewer: +1 point, far from significant on 200 paired items
    assert reach_top(promoter, 1, set(range(2, 104))) is None
    assert promoter.incumbent == 0
    assert promoter.history[-1]["kept"] == 0 and promoter.history[-1]["p_value"] > 0.05
    # 30 more right, none lost: McNemar's discordant pairs all one way
    note = reach_top(promoter, 2, set(range(130)))
    assert promoter.incumbent == 2 and note is not None and "better than trial 0" in note
    assert promoter.store.attrs[INCUMBENT_ATTR]["trial"] == 2


def test_a_trial_clearly_behind_is_not_promoted() -> None:
    ids = [f"t/{i:03d}" for i in range(60)]
    promoter = Promoter(
        AttrsInMemory(), ["t"], plan_rungs({"t": ids}, {"t": ids[:5]}, [20], 0), 1.01, 0.5, 0.05
    )
    promoter.add(0, "a", {"estimates": {"t": 0.9}, "intervals": {"t": [0.85, 0.95]}})
    promoter.add(1, "b", {"estimates": {"t": 0.5}, "intervals": {"t": [0.40, 0.60]}})
    promoter.add(2, "c", {"estimates": {"t": 0.8}, "intervals": {"t": [0.50, 0.90]}})
    # eta ~1 would promote all three; trial 1's upper bound is below trial 0's lower bound
    assert [s.trial for s in promoter.candidates()] == [0, 2]


def test_rungs_hold_each_group_in_proportion() -> None:
    ids = [f"t/{g}/{i:03d}" for g, n in (("easy", 150), ("hard", 50)) for i in range(n)]
    groups = {i: i.split("/")[1] for i in ids}
    plan = plan_rungs({"t": ids}, {"t": []}, [20, 60, "all"], seed=3, groups=groups)
    for rung, size in zip(plan.rungs, (20, 60, 200), strict=True):
        hard = sum(groups[i] == "hard" for i in rung["t"])
        assert len(rung["t"]) == size and abs(hard - size / 4) <= 1  # 25% of the pool is hard


def test_rungs_that_add_nothing_are_refused() -> None:
    ids = {"t": [f"t/{i}" for i in range(30)]}
    with pytest.raises(ConfigError, match="adds no item"):
        plan_rungs(ids, {"t": ids["t"][:10]}, [20, 40], seed=0)


def test_front_shows_the_rungs_and_export_writes_the_incumbent(tmp_path, tiny_family) -> None:
    from typer.testing import CliRunner

    from evomerge.cli import app

    path = experiment(tmp_path, tiny_family, {"trials": 16})
    run(path, tmp_path / "run")
    runner = CliRunner()
    table = runner.invoke(app, ["front", str(tmp_path / "run")], env={"COLUMNS": "160"})
    words = " ".join(table.output.split())  # the caption may wrap
    assert table.exit_code == 0 and "rung" in words and "the incumbent: trial" in words
    csv_out = runner.invoke(app, ["front", str(tmp_path / "run"), "--format", "csv"])
    assert csv_out.output.splitlines()[0].startswith("number,kind,label,rung,")
    out = tmp_path / "incumbent.yaml"
    exported = runner.invoke(app, ["export", str(tmp_path / "run"), "--incumbent", "--out", str(out), "-q"])
    assert exported.exit_code == 0, exported.output
    view = RunView.from_store(open_run(tmp_path / "run"))
    assert out.read_text() == view.trial(view.incumbent).recipe


def test_final_race_challengers_beat_the_incumbent_at_their_rung_highest_rung_first() -> None:
    ids = [f"t/{i:03d}" for i in range(65)]
    plan = plan_rungs({"t": ids}, {"t": ids[:5]}, [20, "all"], seed=0)
    promoter = Promoter(AttrsInMemory(), ["t"], plan, eta=3, share=0.5, alpha=0.3, race=0.2)
    for trial, (rung0, rung1) in enumerate([(0.6, 0.6), (0.7, 0.65), (0.8, 0.5), (0.9, None), (0.5, None)]):
        promoter.add(trial, f"r{trial}", {"estimates": {"t": rung0}, "intervals": {"t": [0.0, 1.0]}})
        if rung1 is not None:
            promoter.standings[trial].levels[1] = {"t": rung1}
            promoter.standings[trial].intervals[1] = {"t": (0.0, 1.0)}
    assert [s.trial for s in promoter.challengers()] == [1, 0, 2, 3, 4]  # no incumbent: every trial
    promoter.standings[0].levels[2] = {"t": 0.6}
    promoter.standings[0].intervals[2] = {"t": (0.5, 0.7)}
    promoter.incumbent = 0
    # trial 1 leads the incumbent at rung 1 (0.65 > 0.6), trial 2 does not (0.5); at rung 0,
    # trial 3 leads (0.9 > 0.6) and trial 4 does not (0.5): the rung-1 challenger goes first
    assert [s.trial for s in promoter.challengers()] == [1, 3]
    # 20 items left: trial 1's top rung adds 40, trial 3's rung 1 adds 20
    assert [s.trial for s in promoter.challengers(limit=20)] == [3]
    key, work = promoter.next_job(racing=True)
    assert key == RungKey(1, 2) and len(work.items) == 40
    assert [s.trial for s in promoter.challengers()] == [3]  # a running one is not handed out twice


def test_final_race_spends_the_end_of_the_budget_on_challengers(tmp_path, tiny_family) -> None:
    budget, race, share = 900, 0.4, 0.2
    for name, promotion in [("plain", {"race": 0}), ("race", {"race": race})]:
        PromotingScheduler.submitted = []
        spec = {"rungs": RUNGS, "share": share, "eta": 3, **promotion}
        path = experiment(tmp_path / name, tiny_family, {"items": budget}, spec)
        summary = run(path, tmp_path / name / "run")
        costs = [len(p.items) if isinstance(p, Rescore) else 16 for _, p in PromotingScheduler.submitted]
        # the budget is spent to within one job: the race does not end the search with items left
        assert budget - max(costs) < summary.items <= budget, (name, summary.items)
        if name == "race":
            # past the share promotions go on only in the race (the last `race` of the budget)
            total = promoted = past_share = 0
            for (key, _), cost in zip(PromotingScheduler.submitted, costs, strict=True):
                if isinstance(key, RungKey):
                    if promoted >= share * total:
                        assert total >= (1 - race) * budget - max(costs), (key, total)
                        past_share += 1
                    promoted += cost
                total += cost
            assert past_share > 0
