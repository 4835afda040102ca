"""Fixture runs for the inspect commands: Optuna studies written exactly as a search writes them.

A run directory holds `run.json` ({"storage", "study"}) and the SQLite `study.db`; each trial carries
the user attributes of the run contract (recipe, genome, estimates, intervals, timings, worker,
n_items, estimator, kind, label, fail_reason). Values are seeded random accuracies.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import yaml

from evomerge.store import GENE_DISTRIBUTION, gene_name

N_LAYERS = 4


def recipe_yaml(base: Path, parents: list[Path], weights: np.ndarray) -> str:
    """A per-layer task-arithmetic recipe (mergekit format); weights has shape (n_parents, N_LAYERS)."""
    return yaml.safe_dump(
        {
            "merge_method": "task_arithmetic",
            "base_model": str(base),
            "models": [
                {"model": str(p), "parameters": {"weight": [round(float(w), 4) for w in row]}}
                for p, row in zip(parents, weights, strict=True)
            ],
            "dtype": "float32",
        },
        sort_keys=False,
    )


def make_run(
    run_dir: Path,
    base: Path,
    parents: list[Path],
    objectives: list[str],
    n_search: int = 20,
    n_failed: int = 2,
    n_running: int = 1,
    seed: int = 0,
    storage: str | None = None,
) -> optuna.Study:
    """Write a run: parents, a uniform baseline, search trials, failed and running trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{run_dir / 'study.db'}"
    name = f"fixture-{seed}"
    (run_dir / "run.json").write_text(json.dumps({"storage": storage, "study": name}))
    study = optuna.create_study(storage=storage, study_name=name, directions=["maximize"] * len(objectives))
    study.set_user_attr("objectives", objectives)
    study.set_user_attr("experiment", "name: fixture\n")
    study.set_user_attr("space", "method: task_arithmetic\n")
    rng = np.random.default_rng(seed)
    n_parents = len(parents)

    def add(state, kind: str, label: str, weights: np.ndarray, values=None, extra=None) -> None:
        attrs = {
            "recipe": recipe_yaml(base, parents, weights),
            "genome": [float(w) for w in weights.ravel() / 2],
            "timings": {"merge": 0.1, "score": 0.5, "total": 0.6},
            "worker": "worker-0",
            "kind": kind,
            "label": label,
            **(extra or {}),
        }
        if values is not None:
            attrs["estimates"] = dict(zip(objectives, values, strict=True))
            attrs["intervals"] = {
                t: [max(0.0, v - 0.05), min(1.0, v + 0.05)] for t, v in attrs["estimates"].items()
            }
            attrs["n_items"] = 10 * len(objectives)
            attrs["estimator"] = "gmp-irt"
        # Search trials carry their genes as Optuna params, as the store writes them (the dashboard's
        # importance and parallel-coordinate panels read them).
        params = {gene_name(i): g for i, g in enumerate(attrs["genome"])} if kind == "search" else {}
        distributions = {name: GENE_DISTRIBUTION for name in params}
        # Trials are added one after the other, so their completion times increase with their number.
        trial = optuna.trial.create_trial(
            state=state, values=values, user_attrs=attrs, params=params, distributions=distributions
        )
        study.add_trial(trial)

    for k in range(n_parents):
        weights = np.zeros((n_parents, N_LAYERS))
        weights[k] = 1.0
        add(optuna.trial.TrialState.COMPLETE, "parent", parents[k].name, weights, _values(rng, objectives))
    if n_parents:
        add(
            optuna.trial.TrialState.COMPLETE,
            "baseline",
            "task_arithmetic",
            np.full((n_parents, N_LAYERS), 1.0 / n_parents),
            _values(rng, objectives),
        )
    for i in range(n_search):
        weights = rng.uniform(0.0, 1.0, (n_parents, N_LAYERS))
        add(optuna.trial.TrialState.COMPLETE, "search", f"search-{i}", weights, _values(rng, objectives))
    for _ in range(n_failed):
        weights = rng.uniform(0.0, 1.0, (n_parents, N_LAYERS))
        reason = {"fail_reason": "CandidateError: NaN scores"}
        add(optuna.trial.TrialState.FAIL, "search", "", weights, extra=reason)
    for _ in range(n_running):
        add(optuna.trial.TrialState.RUNNING, "search", "", rng.uniform(0.0, 1.0, (n_parents, N_LAYERS)))
    return study


def _values(rng: np.random.Generator, objectives: list[str]) -> list[float]:
    return [round(float(v), 4) for v in rng.uniform(0.2, 0.9, len(objectives))]


def write_suite(root: Path, n_items: int = 6, n_test: int = 0) -> tuple[Path, list[str]]:
    """A two-task suite of a few real eval items (arithmetic, dates), and `n_test` test items per
    task, and its task names."""
    from evomerge.fitness.banks.items import load_bank, write_bank

    fitness = Path(__file__).resolve().parents[1] / "fitness"
    root.mkdir(parents=True, exist_ok=True)
    banks = {"arith": "bigbench_arithmetic.jsonl", "dates": "bigbench_date_understanding.jsonl"}
    for name, file in banks.items():
        bank = load_bank(fitness / file)
        items = [i for i in bank if i.split == "eval"][:n_items] + [i for i in bank if i.split == "test"][
            :n_test
        ]
        write_bank(items, root / f"{name}.jsonl")
    spec = {
        "name": "audit-mini",
        "banks": {name: {"path": f"{name}.jsonl"} for name in banks},
        "tasks": {
            "arithmetic": {"banks": ["arith"], "anchors": 2},
            "dates": {"banks": ["dates"], "anchors": 2},
        },
        "estimator": "mean",
    }
    (root / "suite.yaml").write_text(yaml.safe_dump(spec))
    return root / "suite.yaml", ["arithmetic", "dates"]
