"""Run store: the run contract (run.json, study attributes, trial attributes), retries, errors."""

from __future__ import annotations

import json

import pytest
import sqlalchemy.exc
from optuna.trial import TrialState

from evomerge.errors import RunNotFoundError, StorageError
from evomerge.runtime.work import WorkerResult
from evomerge.store import create_run, open_run, retry

RESULT = WorkerResult(
    ok=True,
    estimates={"a": 0.5, "b": 0.25},
    intervals={"a": (0.4, 0.6), "b": (0.1, 0.4)},
    timings={"merge": 0.1, "score": 0.2, "total": 0.3},
    worker="worker-0@host:1",
    n_items=16,
    estimator="mean",
)


def test_run_contract_round_trip(tmp_path) -> None:
    store = create_run(
        tmp_path / "run", "s1", ["a", "b"], {"experiment": "name: x\n", "space": "method: ties\n"}
    )
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (
        meta["study"] == "s1"
        and meta["storage"] is None  # the run's own study.db, found relative to the directory
        and (tmp_path / "run/study.db").is_file()
    )
    n = store.start_trial([0.1, 0.9], "merge_method: ties\n", "search", "", candidate=7)
    store.complete_trial(n, RESULT)
    m = store.start_trial(None, "merge_method: linear\n", "parent", "p0")
    store.fail_trial(m, "CandidateError: NaN scores", {"worker": "w"})
    r = store.start_trial([0.5, 0.5], "x: 1\n", "search", "", candidate=8)

    again = open_run(tmp_path / "run")
    assert again.objectives == ["a", "b"] and again.directions == ["maximize", "maximize"]
    assert again.study.user_attrs["space"] == "method: ties\n" and again.experiment_yaml == "name: x\n"
    done, failed, running = again.trials()
    assert done.state == TrialState.COMPLETE and done.values == [0.5, 0.25]
    assert done.user_attrs | RESULT.trial_attrs() == done.user_attrs  # every result attribute stored
    assert done.user_attrs["genome"] == [0.1, 0.9] and done.user_attrs["candidate"] == 7
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"].startswith("CandidateError")
    assert failed.user_attrs["kind"] == "parent" and failed.user_attrs["label"] == "p0"
    assert running.number == r and running.state == TrialState.RUNNING
    [was_running] = again.mark_interrupted()
    assert was_running.number == r
    assert again.trials()[2].state == TrialState.FAIL
    assert again.trials()[2].user_attrs["fail_reason"].startswith("interrupted")
    by_url = open_run(storage=store.storage, study="s1")
    assert len(by_url.trials()) == 3


def test_missing_runs_and_duplicates_are_clear_errors(tmp_path) -> None:
    with pytest.raises(RunNotFoundError, match="has no run.json"):
        open_run(tmp_path)
    create_run(tmp_path / "run", "s1", ["a"], {})
    with pytest.raises(RunNotFoundError, match="study 'nope' not found .* studies there: s1"):
        open_run(storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}", study="nope")
    with pytest.raises(StorageError, match="already exists"):
        create_run(tmp_path / "run", "s1", ["a"], {})


def test_retry_with_backoff_then_a_clean_error() -> None:
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("database is locked"))
        return "ok"

    assert retry(flaky, "testing", first_wait=0.01) == "ok" and len(calls) == 3

    def down():
        raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("connection refused"))

    with pytest.raises(StorageError, match="storage unavailable while testing after 2 retries"):
        retry(down, "testing", retries=2, first_wait=0.01)


@pytest.mark.postgres
def test_run_on_a_real_postgresql_server(tmp_path, postgres_url) -> None:
    store = create_run(tmp_path / "run", "pg", ["a", "b"], {"experiment": "e"}, storage=postgres_url)
    n = store.start_trial([0.2], "r: 1\n", "search", "", candidate=0)
    store.complete_trial(n, RESULT)
    again = open_run(tmp_path / "run")
    assert again.storage == postgres_url
    [trial] = again.trials()
    assert trial.values == [0.5, 0.25] and trial.user_attrs["worker"] == RESULT.worker


def test_a_moved_or_copied_run_reads_its_own_database(tmp_path) -> None:
    """run.json names the run's own study.db relatively (null): a moved run opens, and a copy reads
    the copy, not the original."""
    import json
    import shutil

    from evomerge.store import create_run, open_run

    store = create_run(tmp_path / "a", "s", ["t"], {"k": 1})
    store.start_trial([0.5], "recipe: 1", "search")
    assert json.loads((tmp_path / "a" / "run.json").read_text())["storage"] is None
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    open_run(tmp_path / "copy").start_trial([0.1], "recipe: 2", "search")
    assert len(open_run(tmp_path / "a").trials()) == 1 and len(open_run(tmp_path / "copy").trials()) == 2
    (tmp_path / "a").rename(tmp_path / "moved")
    assert len(open_run(tmp_path / "moved").trials()) == 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("notaurl", "is not a storage URL evomerge can use; use sqlite:///"),
        (
            "postgresql://u:secret@127.0.0.1:1/db",
            "cannot reach the storage postgresql://u:***@127.0.0.1:1/db",
        ),
    ],
)
def test_a_bad_storage_url_is_one_line_and_leaves_nothing(tmp_path, url, message) -> None:
    from evomerge.errors import EvomergeError
    from evomerge.store import create_run

    with pytest.raises(EvomergeError) as raised:
        create_run(tmp_path / "run", "s", ["t"], {}, storage=url)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert "secret" not in str(raised.value)
    assert not (tmp_path / "run").exists()
