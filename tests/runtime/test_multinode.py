"""A real two-node Ray cluster on this machine: `ray start --head` and `ray start --address` run as
separate processes, `evomerge search --ray-address` joins them, and the worker node is killed
mid-run. The candidate it was evaluating runs again on the head node: every trial COMPLETE exactly
once, the loss written in the run's failures.log, no failed trial.

Workers need the custom resource `evomerge_worker`, which each node carries once: the head has two
CPUs but hosts one worker, the other lands on the worker node. Only this test's own processes are
ever stopped (each node's session), so other Ray clusters on the machine are left alone.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml
from optuna.trial import TrialState
from searchfixture import write_experiment

from evomerge.runtime.driver import FAILURE_LOG
from evomerge.store import open_run

RAY = Path(sys.executable).with_name("ray")
RESOURCE = "evomerge_worker"
TRIALS = 4  # search trials, after the 2 parents and the baseline
JOBS = TRIALS + 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RayNode:
    """One `ray start --block` in its own session: every process of the node (raylet, agents, the
    actors' workers) is in that session, so killing the session kills exactly this node."""

    def __init__(self, log: Path, env: dict[str, str], *args: str) -> None:
        ports = ["--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port"]
        ports.append("--runtime-env-agent-port")  # fixed defaults would clash with other clusters here
        self.log = log
        self.process = subprocess.Popen(
            [str(RAY), "start", "--block", "--disable-usage-stats", "--include-log-monitor=false",
             "--object-store-memory=78643200",
             *(f"{p}={free_port()}" for p in ports), *args],
            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def wait_started(self, within: float = 120.0) -> None:
        deadline = time.time() + within
        while "Ray runtime started" not in self.log.read_text():
            assert self.process.poll() is None, f"ray start exited: {self.log.read_text()[-2000:]}"
            assert time.time() < deadline, f"ray start took over {within:g} s: {self.log.read_text()[-2000:]}"
            time.sleep(0.2)

    def processes(self) -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter():
            try:
                if os.getsid(process.pid) == self.process.pid:
                    found.append(process)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return found

    def evaluating(self) -> bool:
        """Whether a search worker on this node is evaluating a candidate now."""
        for process in self.processes():
            try:
                if process.cmdline()[:1] == ["ray::Worker.evaluate"]:
                    return True
            except psutil.Error:
                continue
        return False

    def node_id(self) -> str:
        """The raylet's node id (as its workers name their node: node-<first 8 hex digits>)."""
        for process in self.processes():
            with_id = [a for a in process.cmdline() if a.startswith("--node_id=")]
            if process.name() == "raylet" and with_id:
                return with_id[0].split("=", 1)[1]
        raise AssertionError("no raylet in this node's session")

    def kill(self) -> None:
        for process in self.processes():
            try:
                process.kill()
            except psutil.NoSuchProcess:
                continue
        self.process.wait(timeout=30)


def completed_trials(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_a_lost_worker_node_costs_nothing(tmp_path, tiny_family) -> None:
    path = write_experiment(tmp_path / "exp", tiny_family, trials=TRIALS, workers=2)
    experiment = yaml.safe_load(path.read_text())
    experiment["workers"]["resources"] = {RESOURCE: 1}
    path.write_text(yaml.safe_dump(experiment))
    run_dir, out_file, err_file = tmp_path / "run", tmp_path / "search.out", tmp_path / "search.err"
    # Token authentication, as a real cluster's nodes and driver share it; a lost node is noticed
    # after ~3 missed health checks of 1 s (Ray's defaults take ~15 s).
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    head_env = {**env, "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
    root = Path(tempfile.mkdtemp(prefix="evomerge-ray-", dir="/tmp"))  # short: Ray's socket paths
    port = free_port()
    address = f"127.0.0.1:{port}"
    env["RAY_gcs_server_port_wait_time_s"] = "120"  # the worker node waits for the head's GCS
    resources = json.dumps({RESOURCE: 1})
    nodes: list[RayNode] = []
    driver = None
    try:
        head = RayNode(
            root / "head.log", head_env, "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
            f"--resources={resources}", f"--temp-dir={root}", "--include-dashboard=false",
            f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
        )  # fmt: skip
        nodes.append(head)
        worker = RayNode(  # started with the head: both start up at once
            root / "worker.log",
            env,
            f"--address={address}",
            "--num-cpus=1",
            "--num-gpus=0",
            f"--resources={resources}",
        )
        nodes.append(worker)
        head.wait_started()
        worker.wait_started()
        head_node, worker_node = head.node_id(), worker.node_id()

        driver = subprocess.Popen(
            [sys.executable, "-m", "evomerge.cli", "search", str(path), "--run-dir", str(run_dir),
             "--ray-address", address, "--quiet", "--format", "json"],
            env=env, stdout=out_file.open("w"), stderr=err_file.open("w"), start_new_session=True,
        )  # fmt: skip
        # After the first trial, as soon as the worker node's worker is evaluating (Ray titles an
        # actor's process "ray::Class.method" while it runs one).
        deadline = time.time() + 180
        while completed_trials(run_dir / "study.db") < 1 or not worker.evaluating():
            assert driver.poll() is None, f"the search ended before the kill: {err_file.read_text()[-3000:]}"
            assert time.time() < deadline, "no evaluation on the worker node after a first trial, in 180 s"
            time.sleep(0.05)
        worker.kill()  # mid-run: the worker node's evaluation is cut short
        driver.wait(timeout=180)
    finally:
        if driver is not None and driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        for node in reversed(nodes):
            node.kill()
        shutil.rmtree(root, ignore_errors=True)

    err = err_file.read_text()
    assert driver.returncode == 0, err[-3000:]
    summary = json.loads(out_file.read_text())
    log_file = run_dir / FAILURE_LOG
    log = log_file.read_text() if log_file.exists() else ""
    assert summary["complete"] == TRIALS and summary["failed"] == 0, summary
    assert summary["retries"] == 1, (summary, log, err[-3000:])
    assert not [m for m in summary["messages"] if "does not fit" in m]  # both nodes held a worker
    trials = open_run(run_dir).trials()
    assert sorted(t.number for t in trials) == list(range(JOBS))  # nothing lost, nothing repeated
    assert all(t.state == TrialState.COMPLETE for t in trials)
    kinds = [t.user_attrs["kind"] for t in trials]
    assert kinds.count("parent") == 2 and kinds.count("baseline") == 1
    candidates = sorted(t.user_attrs["candidate"] for t in trials if t.user_attrs["kind"] == "search")
    assert candidates == list(range(TRIALS))

    # The loss is logged as such, with the worker on the killed node; its trial ends on the head.
    lost = re.findall(r"--- \S+ trial (\d+): worker lost, retried on another worker", log)
    assert len(lost) == 1, log
    assert f"/node-{worker_node[:8]}" in log and "its node was lost" in log, log
    retried = next(t for t in trials if t.number == int(lost[0]))
    assert retried.user_attrs["worker"].endswith(f"/node-{head_node[:8]}")
    assert any(f"trial {lost[0]}: its worker" in m and "was lost" in m for m in summary["messages"])


def write_auto_experiment(root: Path, family: Any) -> Path:
    """The tiny family's search on a calibrated two-task suite whose estimator is `auto`."""
    from suites import write_mini_suite

    from evomerge.fitness.banks.suite import FitnessSuite
    from evomerge.fitness.population import calibrate_suite

    root.mkdir(parents=True)
    suite_path = write_mini_suite(root)
    suite = yaml.safe_load(suite_path.read_text())
    (root / "suite.yaml").write_text(yaml.safe_dump({**suite, "estimator": "auto"}))
    base, parents = family
    calibrate_suite(FitnessSuite.load(root / "suite.yaml"), [base, *parents], dims=(1,)).save(
        root / "calib.json"
    )
    path = write_experiment(root, family, trials=2, workers=1)
    experiment = yaml.safe_load(path.read_text())
    experiment.update(suite=str(root / "suite.yaml"), calibration=str(root / "calib.json"))
    experiment["workers"]["resources"] = {RESOURCE: 1}  # only the worker node carries it
    path.write_text(yaml.safe_dump(experiment))
    return path


def test_workers_on_another_node_score_on_the_drivers_plan(tmp_path, tiny_family) -> None:
    """The worker node has an empty home and cache: its worker scores with the estimator and
    anchors of the plan the driver stored in the study, and decides nothing (its cache stays empty)."""
    path = write_auto_experiment(tmp_path / "exp", tiny_family)
    run_dir = tmp_path / "run"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    node_home = tmp_path / "node_home"
    node_home.mkdir()
    node_env = {**env, "HOME": str(node_home), "EVOMERGE_CACHE": str(node_home / ".cache" / "evomerge")}
    root = Path(tempfile.mkdtemp(prefix="evomerge-ray-", dir="/tmp"))  # short: Ray's socket paths
    port = free_port()
    nodes: list[RayNode] = []
    try:
        head = RayNode(
            root / "head.log", env, "--head", f"--port={port}", "--num-cpus=1", "--num-gpus=0",
            f"--temp-dir={root}", "--include-dashboard=false", f"--dashboard-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
        )  # fmt: skip
        nodes.append(head)
        worker = RayNode(
            root / "worker.log", {**node_env, "RAY_gcs_server_port_wait_time_s": "120"},
            f"--address=127.0.0.1:{port}", "--num-cpus=1", "--num-gpus=0",
            f"--resources={json.dumps({RESOURCE: 1})}",
        )  # fmt: skip
        nodes.append(worker)
        head.wait_started()
        worker.wait_started()
        worker_node = worker.node_id()
        search = subprocess.run(
            [sys.executable, "-m", "evomerge.cli", "search", str(path), "--run-dir", str(run_dir),
             "--ray-address", f"127.0.0.1:{port}", "--quiet", "--format", "json"],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        for node in reversed(nodes):
            node.kill()
        shutil.rmtree(root, ignore_errors=True)
    assert search.returncode == 0, search.stderr[-3000:]
    store = open_run(run_dir)
    plan = store.read_study_attr("evaluation_plan")
    assert plan["requested"] == "auto" and plan["estimator"] in ("mean", "pirt", "gpirt")
    assert [check["estimator"] for check in plan["checks"]] == ["mean", "pirt", "gpirt"]
    anchors = {i for task in plan["anchors"]["tasks"].values() for i in task["ids"]}
    trials = store.trials()
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)
    for trial in trials:
        assert trial.user_attrs["worker"].endswith(f"/node-{worker_node[:8]}")
        assert trial.user_attrs["estimator"] == plan["estimator"]
        assert set(trial.user_attrs["answers"]) == anchors
    assert not [p for p in node_home.rglob("*") if p.is_file()], "the worker node decided something itself"
