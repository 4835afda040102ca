"""Every command of docs/*.md: the ```bash blocks run in order on a tiny family, the cluster page's
```console lines are parsed by the CLIs they call (they need several machines and a database).

Pages name models with $BASE, $EXPERT_A, $EXPERT_B and the checkout with $EVOMERGE_REPO
(docs/README.md); the test sets them and runs each page in one fresh directory."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import make_family

from evomerge.recipe import MergeRecipe

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = ("merge.md", "search.md", "own-task.md", "front-and-pick.md", "cluster.md")


def blocks(page: str, lang: str) -> list[str]:
    text = (DOCS / page).read_text(encoding="utf-8")
    return re.findall(rf"^```{lang}\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base, (expert_a, expert_b) = make_family(tmp_path_factory.mktemp("family"), n_parents=2)
    cache = tmp_path_factory.mktemp("cache")
    return {
        **os.environ,
        "BASE": str(base),
        "EXPERT_A": str(expert_a),
        "EXPERT_B": str(expert_b),
        "EVOMERGE_REPO": str(REPO),
        "EVOMERGE_CACHE": str(cache),
        # the documented `evomerge` is this interpreter's, also where its venv is not activated
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def run_page(page: str, cwd: Path, env: dict[str, str]) -> None:
    scripts = blocks(page, "bash")
    assert scripts, f"docs/{page} has no ```bash block"
    for script in scripts:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, f"docs/{page}:\n{script}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def test_every_page_exists_and_is_linked() -> None:
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    for page in PAGES:
        assert (DOCS / page).is_file() and f"]({page})" in index


def test_merge_page(tmp_path: Path, env: dict[str, str]) -> None:
    run_page("merge.md", tmp_path, env)
    recipe = MergeRecipe.from_yaml((tmp_path / "recipe.yaml").read_text())
    assert recipe.merge_method == "ties" and recipe.base_model == env["BASE"]
    assert [m.model for m in recipe.models] == [env["EXPERT_A"], env["EXPERT_B"]]
    assert (tmp_path / "merged" / "config.json").is_file()
    assert list((tmp_path / "merged").glob("*.safetensors"))


def test_own_task_page(tmp_path: Path, env: dict[str, str]) -> None:
    run_page("own-task.md", tmp_path, env)
    calibration = json.loads((tmp_path / "calib.json").read_text())
    assert len(calibration["subjects"]) == 3
    assert calibration["tasks"] == {"colours": ["c1", "c2", "c3", "c4"]}
    assert len(calibration["responses"]) == 3 and all(len(r) == 4 for r in calibration["responses"])


@pytest.mark.slow
def test_search_then_front_pages(tmp_path: Path, env: dict[str, str]) -> None:
    """search.md makes runs/mine with a local Ray; front-and-pick.md reads it and exports from it."""
    run_page("search.md", tmp_path, env)
    assert (tmp_path / "runs" / "mine" / "study.db").is_file()
    run_page("front-and-pick.md", tmp_path, env)
    with open(tmp_path / "front.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows  # one row per front trial (the columns are the inspect commands' to format)
    assert (tmp_path / "plots" / "pareto.png").stat().st_size > 0
    knee = MergeRecipe.from_yaml((tmp_path / "knee.yaml").read_text())
    assert {m.model for m in knee.models} <= {env["EXPERT_A"], env["EXPERT_B"]}
    assert MergeRecipe.from_yaml((tmp_path / "weighted.yaml").read_text()).models
    for model in ("weighted", "knee"):
        assert (tmp_path / model / "config.json").is_file() and list((tmp_path / model).glob("*.safetensors"))


def _cluster_lines() -> list[list[str]]:
    text = "\n".join(blocks("cluster.md", "console"))
    return [shlex.split(line) for line in text.splitlines() if line.strip()]


def test_cluster_page_parses() -> None:
    """Each line parses in its CLI (options, types, subcommands), so a renamed flag fails here."""
    import typer
    from ray.scripts.scripts import start

    from evomerge.cli import app

    lines = _cluster_lines()
    assert {line[0] for line in lines} == {"ray", "evomerge"} and len(lines) == 6
    group = typer.main.get_command(app)
    for words in lines:
        if words[:2] == ["ray", "start"]:
            start.make_context("start", words[2:])
            continue
        assert words[0] == "evomerge", words
        with group.make_context("evomerge", list(words[1:]), resilient_parsing=True) as ctx:
            command = group.get_command(ctx, words[1])
            assert command is not None, words
            command.make_context(words[1], words[2:], parent=ctx)
