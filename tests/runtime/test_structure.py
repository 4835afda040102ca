"""The search's parts keep to their jobs: Optuna is reached through the store alone, and the
recorder writes a worker's typed result into the study and tells the optimizer."""

from __future__ import annotations

import ast
from pathlib import Path

from evomerge.optimizers import make_optimizer
from evomerge.runtime.recorder import FAILURE_LOG, Checkpointer, Recorder
from evomerge.runtime.work import TrialKind, WorkerResult
from evomerge.space import SearchSpace
from evomerge.store import TrialState, create_run, open_run

PACKAGE = Path(__file__).parents[2] / "evomerge"
STORE = PACKAGE / "store.py"
OPTIMIZERS = PACKAGE / "optimizers"  # samplers are optimizers: they may import optuna's samplers


def test_optuna_is_reached_through_the_store_alone() -> None:
    imports, private = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == STORE:
            continue
        name = str(path.relative_to(PACKAGE))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                modules = []
            if OPTIMIZERS not in path.parents and any(m.split(".")[0] == "optuna" for m in modules):
                imports.append(name)
            if isinstance(node, ast.Attribute) and node.attr in ("_storage", "_study_id"):
                private.append(f"{name}:{node.lineno}")
            # a sampler's or study's private members (e.g. a GA sampler's _get_generation_key)
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                owner = node.value
                owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
                if owner_name in ("_sampler", "sampler", "study") and node.attr != "_sampler":
                    private.append(f"{name}:{node.lineno}")
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", "") == "getattr"
                and len(node.args) > 1
            ):
                target, attribute = node.args[:2]
                own = isinstance(target, ast.Name) and target.id == "self"  # an object's own members
                if not own and isinstance(attribute, ast.Constant) and str(attribute.value).startswith("_"):
                    private.append(f"{name}:{node.lineno}")
    assert imports == [], f"optuna imported outside store.py: {imports}"
    assert private == [], f"Optuna's private members reached outside store.py: {private}"


def test_the_recorder_commits_typed_results_then_tells_the_optimizer(tmp_path, tiny_family) -> None:
    base, parents = tiny_family
    space = SearchSpace.from_dict(
        {"base": str(base), "parents": [str(p) for p in parents], "method": "ties", "search": {"weight": {}}}
    )
    tasks = ["a", "b"]
    store = create_run(tmp_path / "run", "s", tasks, {})
    optimizer = make_optimizer("random", space.dim, len(tasks), 0, {})
    optimizer.bind(store.study)
    recorder = Recorder(store, optimizer, Checkpointer(store), space, tasks, tmp_path / "run", [])

    good, bad, cut = (recorder.start_candidate(optimizer.ask()) for _ in range(3))
    assert good.kind is TrialKind.SEARCH and set(recorder.jobs) == {good.trial, bad.trial, cut.trial}
    result = WorkerResult(ok=True, worker="w0", estimates={"a": 0.5, "b": 0.75}, n_items=16)
    assert recorder.record(good.trial, result) == (good, True)
    trace = "CandidateError: NaN\nTraceback (most recent call last): ..."
    assert recorder.record(bad.trial, WorkerResult.failure("CandidateError: NaN", "w1", trace)) == (
        bad,
        False,
    )
    assert recorder.interrupt(cut.trial, "the search was stopped (Ctrl-C)") == cut
    assert recorder.jobs == {} and recorder.best == {"a": 0.5, "b": 0.75}
    assert [c.id for c in optimizer.pending()] == [cut.candidate]  # told: the two that ended

    trials = {t.number: t for t in open_run(tmp_path / "run").trials()}
    done, failed, stopped = trials[good.trial], trials[bad.trial], trials[cut.trial]
    assert done.state == TrialState.COMPLETE and done.values == [0.5, 0.75]
    assert done.user_attrs["kind"] == "search" and done.user_attrs["n_items"] == 16
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"] == "CandidateError: NaN"
    assert stopped.user_attrs["fail_reason"] == "interrupted: the search was stopped (Ctrl-C)"
    assert "Traceback (most recent call last)" in (tmp_path / "run" / FAILURE_LOG).read_text()
