"""NSGA-II's duplicate children are not evaluated again: their trial is pruned and NSGA-II asked again."""

from __future__ import annotations

from evomerge.optimizers import make_optimizer


def test_duplicate_children_are_not_handed_out() -> None:
    # 4 genes, a population of 4: a child without crossover (probability 0.1) or of a parent
    # with itself is that parent unless one of its genes mutates (each with probability 1/4).
    optimizer = make_optimizer("optuna", 4, 1, 0, {"population_size": 4})
    evaluated: list[tuple[float, ...]] = []
    for _ in range(40):
        candidate = optimizer.ask()
        evaluated.append(candidate.genome)
        optimizer.tell(candidate.id, [-sum((g - 0.3) ** 2 for g in candidate.genome)])
    assert len(set(evaluated)) == len(evaluated)  # nothing evaluated twice
    trials = optimizer.study.get_trials()
    duplicates = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert duplicates  # the situation the test is about did arise
    by_number = {t.number: t for t in trials}
    for trial in duplicates:
        original = by_number[trial.user_attrs["duplicate_of"]]
        assert trial.state.name == "PRUNED" and original.state.name == "COMPLETE"
        assert trial.params == original.params
    assert len(trials) == len(evaluated) + len(duplicates)
