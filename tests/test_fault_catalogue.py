"""The fault catalogue (issue 15): every fault and bad input ends fast and clearly.

Each row breaks one thing on the tiny model family and runs the real `evomerge` entry point
(`evomerge.cli.main`, in process, with its own argv) and checks what a user sees:
- the exit code: 2 for bad input (refused before anything starts), 1 for a search that ran and
  failed, 0 for a clean finish;
- a refusal is ONE line on stderr (`error: ...`) naming the problem, and no traceback anywhere;
- nothing is half-written: every file under the row's output folder is as it was before (no run
  directory for a refused start, no partial model or recipe, a previous file left intact).

Search rows that must run workers share one local Ray session. The NaN rows run the real worker
(a real merge whose weights are NaN); the crash and timeout rows replace only the worker actor by a
light one that dies or hangs in `evaluate`, so the real scheduler, driver and CLI handle them.
The full-disk export writes into a 64 KiB tmpfs where this process may mount one (root); elsewhere
the model writer's files raise ENOSPC on write, in process (the error a full disk gives). The
read-only run directory is a read-only tmpfs (root) or a folder without write permission; as root
without mount it is skipped, with that reason.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

SUITE = Path(__file__).parents[1] / "fitness" / "quickstart.yaml"


# ----- light stand-ins for the model worker (no torch in their processes) -----------------------
class CrashingWorker:
    """Dies in every evaluation, the way a segfaulting or OOM-killed worker does."""

    def ping(self) -> str:
        return "ready"

    def evaluate(self, payload: Any) -> Any:
        os._exit(1)


class StuckWorker:
    """Never finishes an evaluation."""

    def ping(self) -> str:
        return "ready"

    def evaluate(self, payload: Any) -> Any:
        time.sleep(600)


# ----- the context a row builds its fault in ----------------------------------------------------
@dataclass
class Ctx:
    root: Path  # the test's scratch directory
    family: tuple[Path, list[Path]]
    run: Path  # a finished run (read by export, dashboard)
    monkeypatch: pytest.MonkeyPatch
    request: pytest.FixtureRequest
    watched: list[Path] = field(default_factory=list)  # folders that must be left as they were

    @property
    def out(self) -> Path:
        """Where a row's command writes: watched for half-written files."""
        path = self.root / "out"
        path.mkdir(exist_ok=True)
        return path

    def clone(self, model: Path, name: str, drop: tuple[str, ...] = ()) -> Path:
        """A copy of a model directory to break, without the files named in `drop`."""
        target = self.root / "models" / name
        shutil.copytree(model, target, ignore=shutil.ignore_patterns(*drop))
        return target

    def experiment(
        self,
        *,
        trials: int = 2,
        workers: int = 1,
        space: dict[str, Any] | None = None,
        changes: dict[str, Any] | None = None,
        family: tuple[Path, list[Path]] | None = None,
        suite: Path = SUITE,
    ) -> Path:
        """The tiny TIES experiment, with keys of its space and experiment replaced."""
        from searchfixture import write_experiment

        path = write_experiment(self.root / "exp", family or self.family, trials=trials, workers=workers)
        space_file = path.parent / "space.yaml"
        space_data = yaml.safe_load(space_file.read_text())
        space_data.update(space or {})
        space_file.write_text(yaml.safe_dump(space_data))
        data = yaml.safe_load(path.read_text())
        data["suite"] = str(suite)
        for key, value in (changes or {}).items():  # "budget.trials": 3 sets a nested key
            *parents, last = key.split(".")
            node = data
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        path.write_text(yaml.safe_dump(data))
        return path

    def search(self, experiment: Path, *extra: str, run_dir: Path | None = None) -> list[str]:
        run_dir = run_dir or self.out / "run"
        return ["search", str(experiment), "--run-dir", str(run_dir), "--quiet", *extra]

    def with_ray(self) -> None:
        self.request.getfixturevalue("local_ray")

    def worker_actor(self, cls: type) -> None:
        """Search workers become `cls` actors (everything else about the search stays real)."""
        import evomerge.runtime.driver

        # The worker processes cannot import this test module: its classes travel by value.
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        self.request.addfinalizer(lambda: ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__]))
        remote = ray.remote(cls).options(num_cpus=0, max_restarts=0)
        self.monkeypatch.setattr(
            evomerge.runtime.driver,
            "actor_factory",
            lambda experiment, space, plan: lambda i: remote.remote(),
        )


def broken_suite(ctx: Ctx, bank_lines: list[str] | None = None, **spec: Any) -> Path:
    """A one-task suite in the scratch folder: its bank is `bank_lines`, its spec updated by `spec`."""
    folder = ctx.root / "suite"
    folder.mkdir(exist_ok=True)
    items = [
        {
            "id": f"q{k}",
            "task": "t",
            "prompt": f"Q: {k} + 1?\nA:",
            "choices": [f" {k + 1}", " 0"],
            "answer": 0,
        }
        for k in range(4)
    ]
    lines = bank_lines if bank_lines is not None else [json.dumps(item) for item in items]
    (folder / "bank.jsonl").write_text("\n".join(lines) + "\n")
    data = {
        "name": "broken",
        "banks": {"b": {"path": "bank.jsonl"}},
        "tasks": {"t": {"banks": ["b"], "anchors": 2}},
    }
    data.update(spec)
    (folder / "suite.yaml").write_text(yaml.safe_dump(data))
    return folder / "suite.yaml"


def nan_family(ctx: Ctx) -> tuple[Path, list[Path]]:
    """The tiny family with one parent whose every weight is NaN: each merge with it is NaN."""
    import torch
    from safetensors.torch import load_file, save_file

    base, parents = ctx.family
    poisoned = ctx.clone(parents[1], "nan_parent")
    file = poisoned / "model.safetensors"
    tensors = {name: torch.full_like(t, float("nan")) for name, t in load_file(file).items()}
    save_file(tensors, file, metadata={"format": "pt"})
    return base, [parents[0], poisoned]


def rewrite_header(file: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit a safetensors file's JSON header in place (the data stays as it was)."""
    raw = file.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    file.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + size :])


def export(ctx: Ctx, *extra: str) -> list[str]:
    return ["export", str(ctx.run), "--quiet", *extra]


def recipe_file(ctx: Ctx, models: list[str], method: str = "task_arithmetic") -> Path:
    path = ctx.root / "recipe.yaml"
    recipe = {
        "merge_method": method,
        "base_model": str(ctx.family[0]),
        "models": [{"model": m, "parameters": {"weight": 0.5}} for m in models],
        "dtype": "float32",
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def mount_tmpfs(ctx: Ctx, path: Path, options: str) -> bool:
    """A tmpfs at `path` for this test (True), or False where this process cannot mount one."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        return False
    ctx.request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(path)], capture_output=True))
    return True


# ----- the faults -------------------------------------------------------------------------------
def truncated_safetensors(ctx: Ctx) -> list[str]:
    parent = ctx.clone(ctx.family[1][1], "truncated")
    file = parent / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    return ctx.search(ctx.experiment(space={"parents": [str(ctx.family[1][0]), str(parent)]}))


def lying_header(ctx: Ctx) -> list[str]:
    parent = ctx.clone(ctx.family[1][1], "lying")
    name = "model.layers.0.mlp.down_proj.weight"
    rewrite_header(parent / "model.safetensors", lambda h: h[name].update(shape=[64, 64]))
    return ctx.search(ctx.experiment(space={"parents": [str(ctx.family[1][0]), str(parent)]}))


def missing_parent(ctx: Ctx) -> list[str]:
    return ctx.search(ctx.experiment(space={"parents": [str(ctx.family[1][0]), str(ctx.root / "nowhere")]}))


def other_hidden_size(ctx: Ctx) -> list[str]:
    from tiny import make_family

    wide = make_family(ctx.root / "wide", n_parents=1, hidden=64)[1][0]
    return ctx.search(ctx.experiment(space={"parents": [str(ctx.family[1][0]), str(wide)]}))


def other_vocabulary(ctx: Ctx) -> list[str]:
    parent = ctx.clone(ctx.family[1][1], "vocab")
    config = json.loads((parent / "config.json").read_text())
    config["vocab_size"] = 300
    (parent / "config.json").write_text(json.dumps(config))
    return ctx.search(ctx.experiment(space={"parents": [str(ctx.family[1][0]), str(parent)]}))


TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "vocab.json", "merges.txt")


def base_without_tokenizer(ctx: Ctx) -> list[str]:
    base = ctx.clone(ctx.family[0], "base_no_tok", drop=TOKENIZER_FILES)
    return ctx.search(ctx.experiment(space={"base": str(base)}))


def config_not_json(ctx: Ctx) -> list[str]:
    parent = ctx.clone(ctx.family[1][1], "bad_config")
    (parent / "config.json").write_text("{ this is not json")
    return ctx.search(ctx.experiment(space={"parents": [str(ctx.family[1][0]), str(parent)]}))


def no_weights(ctx: Ctx) -> list[str]:
    parent = ctx.clone(ctx.family[1][1], "no_weights", drop=("*.safetensors",))
    return ctx.search(ctx.experiment(space={"parents": [str(ctx.family[1][0]), str(parent)]}))


def missing_bank(ctx: Ctx) -> list[str]:
    suite = broken_suite(ctx, banks={"b": {"path": "gone.jsonl"}})
    return ctx.search(ctx.experiment(suite=suite))


def bank_line_not_json(ctx: Ctx) -> list[str]:
    good = json.dumps({"id": "q0", "task": "t", "prompt": "Q?", "choices": [" a", " b"], "answer": 0})
    return ctx.search(ctx.experiment(suite=broken_suite(ctx, bank_lines=[good, "{oops"])))


def suite_not_yaml(ctx: Ctx) -> list[str]:
    suite = broken_suite(ctx)
    suite.write_text("banks: {b: [unclosed\n")
    return ctx.search(ctx.experiment(suite=suite))


def item_without_answer(ctx: Ctx) -> list[str]:
    line = json.dumps({"id": "q0", "task": "t", "prompt": "Q?", "choices": [" a", " b"]})
    return ctx.search(ctx.experiment(suite=broken_suite(ctx, bank_lines=[line])))


def unknown_bank_in_task(ctx: Ctx) -> list[str]:
    suite = broken_suite(ctx, tasks={"t": {"banks": ["nope"], "anchors": 2}})
    return ctx.search(ctx.experiment(suite=suite))


def too_few_items_for_anchors(ctx: Ctx) -> list[str]:
    return ctx.search(ctx.experiment(suite=broken_suite(ctx, tasks={"t": {"banks": ["b"], "anchors": 50}})))


def unknown_estimator(ctx: Ctx) -> list[str]:
    return ctx.search(ctx.experiment(suite=broken_suite(ctx, estimator="magic")))


def missing_calibration(ctx: Ctx) -> list[str]:
    return ctx.search(ctx.experiment(changes={"calibration": "nowhere.json"}))


def calibration_for_other_items(ctx: Ctx) -> list[str]:
    import numpy as np

    from evomerge.fitness.irt.calibration import fit_calibration

    ids = [f"other/{k}" for k in range(6)]
    responses = np.random.default_rng(0).integers(0, 2, (3, 6)).astype(float)
    subjects = [{"name": f"s{k}"} for k in range(3)]
    calibration = fit_calibration(responses, ids, {"t": ids}, subjects, dims=[1])
    path = calibration.save(ctx.root / "calib.json")
    suite = broken_suite(ctx, estimator="pirt")
    return ctx.search(ctx.experiment(suite=suite, changes={"calibration": str(path)}))


def space_not_yaml(ctx: Ctx) -> list[str]:
    experiment = ctx.experiment()
    (experiment.parent / "space.yaml").write_text("method: ties\nsearch: {weight: {}\n")
    return ctx.search(experiment)


def unknown_method(ctx: Ctx) -> list[str]:
    return ctx.search(ctx.experiment(space={"method": "tiez"}))


def gene_range_outside_unit(ctx: Ctx) -> list[str]:
    return ctx.search(ctx.experiment(space={"search": {"weight": {}, "density": {"low": 0.2, "high": 1.5}}}))


def unknown_experiment_key(ctx: Ctx) -> list[str]:
    return ctx.search(ctx.experiment(changes={"budget.trails": 3}))


def wrong_type_in_experiment(ctx: Ctx) -> list[str]:
    return ctx.search(ctx.experiment(changes={"workers.count": "two"}))


def experiment_not_yaml(ctx: Ctx) -> list[str]:
    path = ctx.root / "bad.yaml"
    path.write_text("name: [unclosed\n")
    return ctx.search(path)


def unknown_optimizer(ctx: Ctx) -> list[str]:
    return ctx.search(ctx.experiment(changes={"optimizer": {"name": "genetic"}}))


def read_only_run_dir(ctx: Ctx) -> list[str]:
    folder = ctx.root / "readonly"
    ctx.watched.append(folder)
    experiment = ctx.experiment()
    if not mount_tmpfs(ctx, folder, "size=1m,ro"):
        if os.geteuid() == 0:
            pytest.skip("root writes through permissions and this process cannot mount a read-only tmpfs")
        folder.chmod(0o500)
        ctx.request.addfinalizer(lambda: folder.chmod(0o700))
    return ctx.search(experiment, run_dir=folder / "run")


def run_dir_in_use(ctx: Ctx) -> list[str]:
    (ctx.out / "run").mkdir()
    (ctx.out / "run" / "run.json").write_text('{"storage": null, "study": "x"}')
    return ctx.search(ctx.experiment())


def resume_without_a_run(ctx: Ctx) -> list[str]:
    return ctx.search(ctx.experiment(), "--resume")


def resume_of_an_unknown_study(ctx: Ctx) -> list[str]:
    storage = f"sqlite:///{ctx.root / 'shared.db'}"
    return ctx.search(ctx.experiment(), "--resume", "--storage", storage, "--study", "never-ran")


def unreachable_postgres(ctx: Ctx) -> list[str]:
    return ctx.search(ctx.experiment(), "--storage", "postgresql://evomerge:s3cret@127.0.0.1:9/runs")


def malformed_storage_url(ctx: Ctx) -> list[str]:
    return ctx.search(ctx.experiment(), "--storage", "not-a-url")


def second_driver(ctx: Ctx) -> list[str]:
    from evomerge.experiment import Experiment
    from evomerge.runtime.driver import SearchDriver
    from evomerge.runtime.lease import DriverLease
    from evomerge.store import open_run

    experiment = ctx.experiment()
    SearchDriver(Experiment.load(experiment), ctx.out / "run", make_actor=lambda i: None)  # creates the run
    DriverLease(open_run(ctx.out / "run")).take()  # a live driver elsewhere holds the study
    return ctx.search(experiment, "--resume")


def status_of_no_run(ctx: Ctx) -> list[str]:
    return ["status", str(ctx.root / "nowhere")]


def export_unwritable(ctx: Ctx) -> list[str]:
    return export(ctx, "--trial", "6", "--out", "/proc/evomerge/recipe.yaml")


class FullDisk:
    """A file opened for writing on a disk that has no space left: every write raises ENOSPC."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._handle.name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def export_full_disk(ctx: Ctx) -> list[str]:
    disk = ctx.root / "disk"
    ctx.watched.append(disk)
    if not mount_tmpfs(ctx, disk, "size=64k"):  # no tmpfs here: the model writer's files are full
        import builtins

        import evomerge.merge.io

        def full_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            handle = builtins.open(file, mode, *args, **kwargs)  # noqa: SIM115 - the caller closes it
            writing = any(flag in mode for flag in "wax") and Path(file).is_relative_to(disk)
            return FullDisk(handle) if writing else handle

        ctx.monkeypatch.setattr(evomerge.merge.io, "open", full_open, raising=False)
    return export(ctx, "--trial", "6", "--out", str(disk / "r.yaml"), "--materialize", str(disk / "model"))


def export_missing_trial(ctx: Ctx) -> list[str]:
    return export(ctx, "--trial", "999", "--out", str(ctx.out / "r.yaml"))


def export_failed_trial(ctx: Ctx) -> list[str]:
    from evomerge.store import open_run

    failed = next(t.number for t in open_run(ctx.run).trials() if t.state.name == "FAIL")
    return export(ctx, "--trial", str(failed), "--out", str(ctx.out / "r.yaml"))


def export_over_a_recipe(ctx: Ctx) -> list[str]:
    (ctx.out / "r.yaml").write_text("the previous recipe\n")
    return export(ctx, "--trial", "6", "--out", str(ctx.out / "r.yaml"))


def export_unknown_task_weight(ctx: Ctx) -> list[str]:
    return export(ctx, "--weights", "maths=1", "--out", str(ctx.out / "r.yaml"))


def dashboard_busy_port(ctx: Ctx) -> list[str]:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    ctx.request.addfinalizer(busy.close)
    return ["dashboard", str(ctx.run), "--port", str(busy.getsockname()[1])]


def merge_missing_model(ctx: Ctx) -> list[str]:
    recipe = recipe_file(ctx, [str(ctx.family[1][0]), str(ctx.root / "gone")])
    return ["merge", str(recipe), str(ctx.out / "merged"), "--no-progress"]


def merge_unknown_method(ctx: Ctx) -> list[str]:
    recipe = recipe_file(ctx, [str(p) for p in ctx.family[1]], method="frankenmerge")
    return ["merge", str(recipe), str(ctx.out / "merged"), "--no-progress"]


def merge_recipe_not_yaml(ctx: Ctx) -> list[str]:
    recipe = ctx.root / "recipe.yaml"
    recipe.write_text("merge_method: linear\nmodels:\n  - model: [a\n")
    return ["merge", str(recipe), str(ctx.out / "merged"), "--no-progress"]


def merge_over_a_model(ctx: Ctx) -> list[str]:
    (ctx.out / "merged").mkdir()
    (ctx.out / "merged" / "config.json").write_text("{}")
    recipe = recipe_file(ctx, [str(p) for p in ctx.family[1]])
    return ["merge", str(recipe), str(ctx.out / "merged"), "--no-progress"]


def plan_missing_model(ctx: Ctx) -> list[str]:
    return ["plan", str(ctx.experiment(space={"base": str(ctx.root / "gone")}))]


def nan_merge(ctx: Ctx) -> list[str]:
    ctx.with_ray()
    changes = {"budget.max_consecutive_failures": 2}
    return ctx.search(ctx.experiment(family=nan_family(ctx), trials=20, changes=changes))


# Four light workers on the 2-CPU Ray: the parents, the baseline and a first candidate fail at once,
# and the candidate's failure stops the search.
ONE_ROUND = {"budget.max_consecutive_failures": 1, "workers.cpus_per_worker": 0.5}


def crashing_worker(ctx: Ctx) -> list[str]:
    ctx.with_ray()
    ctx.worker_actor(CrashingWorker)
    return ctx.search(ctx.experiment(trials=20, workers=4, changes=ONE_ROUND))


def evaluation_timeout(ctx: Ctx) -> list[str]:
    ctx.with_ray()
    ctx.worker_actor(StuckWorker)
    changes = {**ONE_ROUND, "workers.evaluation_timeout_s": 1}
    return ctx.search(ctx.experiment(trials=20, workers=4, changes=changes))


# ----- what a finished, failed search leaves ----------------------------------------------------
def failed_trials_logged(reason: str) -> Callable[[Ctx], None]:
    """Every failed trial failed for `reason` (or was cut short by the stop), and the failure log
    holds it."""

    def check(ctx: Ctx) -> None:
        from evomerge.store import open_run

        trials = open_run(ctx.out / "run").trials()
        failed = [t for t in trials if t.state.name == "FAIL"]
        assert failed and all(
            reason in t.user_attrs["fail_reason"] or "interrupted" in t.user_attrs["fail_reason"]
            for t in failed
        )
        log = (ctx.out / "run" / "failures.log").read_text()
        assert log.count("reason: ") >= 1 and reason in log

    return check


def nan_trials(ctx: Ctx) -> None:
    """The NaN parent and every merge with it are failed trials with their reasons (in the study and
    the failure log, with tracebacks); the clean parent completed; the search stopped at the limit."""
    from evomerge.store import open_run

    trials = open_run(ctx.out / "run").trials()
    parents = {t.user_attrs["label"]: t for t in trials if t.user_attrs["kind"] == "parent"}
    assert parents["parent_0"].state.name == "COMPLETE"
    assert "non-finite log-likelihood" in parents["nan_parent"].user_attrs["fail_reason"]
    search = [t for t in trials if t.user_attrs["kind"] == "search"]
    assert all(t.state.name == "FAIL" and t.user_attrs["fail_reason"] for t in search)
    # a TIES merge with the NaN parent names it: no threshold exists in its task vector
    merged = [t for t in search if not t.user_attrs["fail_reason"].startswith("interrupted")]
    assert merged and all("NaN entries" in t.user_attrs["fail_reason"] for t in merged)
    assert len(search) < 20  # stopped long before the budget
    log = (ctx.out / "run" / "failures.log").read_text()
    assert "non-finite log-likelihood" in log and "Traceback (most recent call last)" in log


@dataclass(frozen=True)
class Fault:
    name: str
    make: Callable[[Ctx], list[str]]
    exit: int
    message: str  # part of the one-line error (exit 2) or of the search's summary (exit 1)
    check: Callable[[Ctx], None] | None = None  # what must hold besides "nothing else written"

    def __str__(self) -> str:
        return self.name


FAULTS = [
    # models, opened by the preflight before anything starts
    Fault("truncated safetensors", truncated_safetensors, 2, "the file is corrupt or not safetensors"),
    Fault("safetensors header lies about a shape", lying_header, 2, "invalid shape, data type, or offset"),
    Fault("missing parent directory", missing_parent, 2, "does not exist; check the path"),
    Fault("parent with another hidden size", other_hidden_size, 2, "has hidden_size=64 but"),
    Fault("parent with another vocabulary", other_vocabulary, 2, "vocabulary sizes differ"),
    Fault("base without a tokenizer", base_without_tokenizer, 2, "tokenizer"),
    Fault("config.json is not JSON", config_not_json, 2, "config.json"),
    Fault("model directory without weights", no_weights, 2, "holds no model.safetensors"),
    # the fitness suite, its banks and calibration
    Fault("missing bank", missing_bank, 2, "gone.jsonl' does not exist"),
    Fault("bank line is not JSON", bank_line_not_json, 2, "bank.jsonl:2: not valid JSON"),
    Fault("suite is not YAML", suite_not_yaml, 2, "is not valid YAML (line 2, column 1"),
    Fault("bank item without an answer", item_without_answer, 2, "q0"),
    Fault("suite task names an unknown bank", unknown_bank_in_task, 2, "names bank 'nope'"),
    Fault("more anchors than items", too_few_items_for_anchors, 2, "asks for 50 anchors"),
    Fault("unknown estimator", unknown_estimator, 2, "magic"),
    Fault("missing calibration file", missing_calibration, 2, "calibration: 'nowhere.json' does not exist"),
    Fault("calibration for other items", calibration_for_other_items, 2, "are not calibrated"),
    # the search space and the experiment
    Fault("search space is not YAML", space_not_yaml, 2, "is not valid YAML (line 3, column 1"),
    Fault("unknown merge method", unknown_method, 2, "tiez"),
    Fault("gene range outside [0, 1]", gene_range_outside_unit, 2, "search.density"),
    Fault("experiment with an unknown key", unknown_experiment_key, 2, "budget.trails: unknown key"),
    Fault("experiment value of the wrong type", wrong_type_in_experiment, 2, "workers.count"),
    Fault("experiment is not YAML", experiment_not_yaml, 2, "is not valid YAML (line 2, column 1"),
    Fault("unknown optimizer", unknown_optimizer, 2, "genetic"),
    # run directories and storage
    Fault("read-only run directory", read_only_run_dir, 2, "cannot be created"),
    Fault(
        "run directory in use without --resume", run_dir_in_use, 2, "a run already exists there; add --resume"
    ),
    Fault("--resume of a run that does not exist", resume_without_a_run, 2, "holds no run"),
    Fault("--resume of a study that does not exist", resume_of_an_unknown_study, 2, "never-ran"),
    Fault("unreachable PostgreSQL server", unreachable_postgres, 2, "cannot reach the storage"),
    Fault("malformed storage URL", malformed_storage_url, 2, "not-a-url"),
    Fault("second driver on a leased study", second_driver, 2, "is running this study"),
    # inspecting and exporting
    Fault("status of a run that does not exist", status_of_no_run, 2, "nowhere"),
    Fault("export to an unwritable path", export_unwritable, 2, "cannot write '/proc/evomerge/recipe.yaml'"),
    Fault("export to a full disk", export_full_disk, 2, "No space left on device"),
    Fault("export of a trial that does not exist", export_missing_trial, 2, "--trial 999: no such trial"),
    Fault("export of a failed trial", export_failed_trial, 2, "FAIL"),
    Fault("export over an existing recipe", export_over_a_recipe, 2, "pass --force to overwrite it"),
    Fault("export weighted by an unknown task", export_unknown_task_weight, 2, "unknown task 'maths'"),
    Fault("dashboard on a busy port", dashboard_busy_port, 2, "pass another --port"),
    # merging and planning
    Fault("merge of a recipe whose model is missing", merge_missing_model, 2, "gone' does not exist"),
    Fault("merge of a recipe with an unknown method", merge_unknown_method, 2, "frankenmerge"),
    Fault("merge of a recipe that is not YAML", merge_recipe_not_yaml, 2, "recipe is not valid YAML"),
    Fault("merge to an output path that exists", merge_over_a_model, 2, "already exists"),
    Fault("plan of a space whose base is missing", plan_missing_model, 2, "gone/config.json"),
    # searches whose candidates fail
    Fault("NaN-producing merge", nan_merge, 1, "stopped after 2 failed trials in a row", nan_trials),
    Fault(
        "worker that crashes every time",
        crashing_worker,
        1,
        "stopped after 1 failed trials in a row",
        failed_trials_logged("worker died twice"),
    ),
    Fault(
        "evaluation timeout",
        evaluation_timeout,
        1,
        "the evaluation ran past 1 s",
        failed_trials_logged("TimeoutError"),
    ),
]


# ----- the test ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tiny_family, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from runfixture import make_run

    base, parents = tiny_family
    root = tmp_path_factory.mktemp("finished")
    make_run(root / "run", base, list(parents), ["arith", "logic"], n_search=8, seed=3)
    return root / "run"


@pytest.fixture(autouse=True)
def eager_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Merges run their kernels eagerly: compiling them would cost more than any fault here."""
    monkeypatch.setenv("EVOMERGE_COMPILE", "0")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray for the search rows; workers run their merges eagerly (no compile time)."""
    previous = os.environ.get("EVOMERGE_COMPILE")
    os.environ["EVOMERGE_COMPILE"] = "0"  # read by the worker processes Ray starts from here
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    if previous is None:
        os.environ.pop("EVOMERGE_COMPILE", None)
    else:
        os.environ["EVOMERGE_COMPILE"] = previous


SQLITE_SIDECARS = ("-wal", "-shm", "-journal")  # SQLite's own lock and log files, not outputs


def snapshot(folders: list[Path]) -> dict[str, str]:
    """Every path under `folders` with its content digest (directories as 'dir'); SQLite's
    sidecar files are left out: a refused driver that only read the database may touch them."""
    seen: dict[str, str] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")) if folder.exists() else []:
            if path.name.endswith(SQLITE_SIDECARS):
                continue
            digest = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
            seen[str(path)] = digest
    return seen


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`evomerge ARGV` through the console-script entry point: (exit code, stdout, stderr). An
    exception escaping `main` is a traceback the user would see, and fails the test as it is."""
    from evomerge.cli import main

    saved = sys.argv
    sys.argv = ["evomerge", *argv]
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = saved
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("fault", FAULTS, ids=str)
def test_a_fault_ends_fast_and_clearly(
    fault: Fault, tmp_path, tiny_family, finished_run, monkeypatch, request, capsys
) -> None:
    ctx = Ctx(tmp_path, tiny_family, finished_run, monkeypatch, request)
    argv = fault.make(ctx)
    watched = [ctx.out, *ctx.watched]
    before = snapshot(watched)
    monkeypatch.chdir(tmp_path)  # a default output (runs/, plots/) would land here, not in the repo
    start = time.perf_counter()
    code, out, err = run_cli(argv, capsys)
    seconds = time.perf_counter() - start
    shown = out + err
    said = [line for line in shown.splitlines() if fault.message in line] or shown.strip().splitlines()[-1:]
    print(f"exit {code} in {seconds:.1f} s: {said[0] if said else ''}")  # the outcome, shown by -rP
    assert "Traceback" not in shown, shown
    assert code == fault.exit, shown
    if fault.exit == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert fault.message in lines[0], lines[0]
        assert snapshot(watched) == before, "a refused command wrote or changed files"
        assert not (tmp_path / "runs").exists()
        assert seconds < 20, f"refused after {seconds:.1f} s"
    else:
        assert fault.message in shown, shown
    if fault.check is not None:
        fault.check(ctx)
