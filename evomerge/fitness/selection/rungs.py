"""The selection pool and its promotion rungs: which items a promoted trial is scored on.

The selection pool of a task is its eval items that are no search anchors (the test split is
never part of it). Each task's pool is put in one seeded order, stratified by the items' groups
(subtasks): every item is placed at its fractional position in its group's own seeded shuffle, so
any prefix holds each group in proportion to its size (a random order let one SmolLM2 run's first
20 arithmetic items over-represent the easy subtasks). Rung k takes the first n_k items of that
order (capped at the pool), so rungs are nested, every promoted trial is scored on the same items
(a paired design), and a promotion from rung k to k+1 scores only the items it adds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from evomerge.errors import ConfigError

Rung = dict[str, list[str]]  # task -> the rung's item ids, in pool order


@dataclass(frozen=True)
class RungPlan:
    rungs: list[Rung]  # rung 1, 2, ... (rung 0 is the anchors)

    def ids(self, rung: int) -> list[str]:
        """Every item id of rung `rung` (>= 1), tasks in order."""
        return [i for ids in self.rungs[rung - 1].values() for i in ids]

    def new_ids(self, rung: int) -> list[str]:
        """The items rung `rung` adds to the one below it (all of rung 1's)."""
        below = set(self.ids(rung - 1)) if rung > 1 else set()
        return [i for i in self.ids(rung) if i not in below]

    def sizes(self) -> list[int]:
        return [sum(len(ids) for ids in rung.values()) for rung in self.rungs]

    def to_json(self) -> list[dict[str, list[str]]]:
        return [dict(rung) for rung in self.rungs]


def _order(task: str, ids: Sequence[str], groups: Mapping[str, str], seed: int) -> list[str]:
    """The pool in a seeded order stratified by group (systematic: by fractional position)."""
    digest = hashlib.sha256(f"rungs:{seed}:{task}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    members: dict[str, list[str]] = {}
    for item in ids:
        members.setdefault(groups.get(item, ""), []).append(item)
    keyed = []
    for group in sorted(members):
        shuffled = [members[group][i] for i in rng.permutation(len(members[group]))]
        offset = rng.random()  # where in its first slot each group starts
        keyed += [((k + offset) / len(shuffled), rng.random(), item) for k, item in enumerate(shuffled)]
    return [item for _, _, item in sorted(keyed)]


def plan_rungs(
    eval_ids: Mapping[str, Sequence[str]],
    anchors: Mapping[str, Sequence[str]],
    sizes: Sequence[int | str],
    seed: int,
    groups: Mapping[str, str] | None = None,
) -> RungPlan:
    """The rungs for items-per-task `sizes` ("all": the whole pool) over the pools of `eval_ids`
    minus `anchors`, stratified by `groups` (item id -> group); a rung that the pool's cap makes no
    larger than the one below is an error."""
    pools = {task: [i for i in ids if i not in set(anchors.get(task, ()))] for task, ids in eval_ids.items()}
    empty = [task for task, pool in pools.items() if not pool]
    if empty:
        raise ConfigError(
            f"promotion: task(s) {empty} have no eval items beyond their anchors; lower the anchors "
            "or add eval items to the banks"
        )
    orders = {task: _order(task, pool, groups or {}, seed) for task, pool in pools.items()}
    rungs: list[Rung] = []
    for size in sizes:
        n = {
            task: len(order) if size == "all" else min(int(size), len(order))
            for task, order in orders.items()
        }
        rung = {task: orders[task][: n[task]] for task in orders}
        if rungs and sum(map(len, rung.values())) <= sum(map(len, rungs[-1].values())):
            pool_sizes = {task: len(pool) for task, pool in pools.items()}
            raise ConfigError(
                f"promotion.rungs {list(sizes)}: rung {size!r} adds no item, the selection pools hold "
                f"{pool_sizes} items per task; drop it or end the rungs with 'all'"
            )
        rungs.append(rung)
    return RungPlan(rungs)


def rung_accuracy(rung: Rung, answers: Mapping[str, int]) -> dict[str, float]:
    """Per-task mean of the 0/1 answers on a rung's items."""
    return {task: float(np.mean([answers[i] for i in ids])) for task, ids in rung.items()}
