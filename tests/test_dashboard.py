"""`evomerge dashboard` serves the run in optuna-dashboard; headless Chromium renders its study page."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from runfixture import make_run

TASKS = ["arith", "logic"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_json(url: str, process: subprocess.Popen, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"dashboard exited early: {process.communicate()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"dashboard did not answer {url} within {timeout} s")


def test_dashboard_renders_the_study_page(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip(
            "SKIPPED LOUDLY: headless Chromium is not installed, so the dashboard page cannot be rendered; "
            "install it with `apt-get install -y chromium` (.ci/run does this)"
        )
    make_run(tmp_path / "run", tmp_path / "base", [tmp_path / "p0", tmp_path / "p1"], TASKS, n_search=12)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "evomerge.cli", "dashboard", str(tmp_path / "run"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        studies = wait_for_json(f"http://127.0.0.1:{port}/api/studies", process)
        (summary,) = studies["study_summaries"]
        url = f"http://127.0.0.1:{port}/dashboard/studies/{summary['study_id']}"
        # The page is a JavaScript app: give Chromium virtual time to fetch the trials and draw.
        common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
        shot = tmp_path / "dashboard.png"
        # Both renderings at once: the DOM to check, the screenshot to look at.
        dump = subprocess.Popen(
            [*common, f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        snap = subprocess.Popen(
            [
                *common,
                f"--user-data-dir={tmp_path / 'profile-shot'}",
                "--window-size=1400,1000",
                f"--screenshot={shot}",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        dom = dump.communicate(timeout=120)[0]
        snap.wait(timeout=120)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert summary["study_name"] in dom
    assert "Pareto Front" in dom and 'id="graph-pareto-front"' in dom
    # The command named the objectives after the tasks: the plot's axis selectors show those names.
    for task in TASKS:
        assert re.search(rf'role="combobox"[^>]*>{task}<', dom), f"no objective selector named {task}"
    # The genes are Optuna params: the importance panel is drawn with the genes' names as its bars.
    assert "Hyperparameter Importance" in dom and 'id="graph-hyperparameter-importances"' in dom
    importances = dom.split('id="graph-hyperparameter-importances"', 1)[1][:200_000]
    assert re.search(r">g\d{4}<", importances), "the importance plot shows no gene"
    assert shot.stat().st_size > 20_000
