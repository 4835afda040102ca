"""The quickstart: its demo family carries one planted skill per expert, so a per-layer merge beats
every parent and its knee is a real merge; the README's numbers are those of the report script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from evomerge.demo import SKILLS, DemoFamily, bank_text
from evomerge.recipe import MergeRecipe

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "experiments" / "quickstart_report"
SPACE = yaml.safe_load((REPO / "search_spaces" / "quickstart_demo.yaml").read_text())
sys.path.insert(0, str(REPORT))

from make_figures import readme_paragraph  # noqa: E402

ON, OFF = 0.9, 0.6  # an expert's accuracy on its own task is above ON, on another's below OFF


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_committed_banks_are_the_generated_ones() -> None:
    for skill in SPACE["demo_family"]["skills"]:
        assert (REPO / "fitness" / f"demo_{skill}.jsonl").read_text() == bank_text(skill)


def test_bad_skills_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown demo skill"):
        DemoFamily(skills=["vowels", "poetry"])
    with pytest.raises(ValueError, match="one skill per expert"):
        DemoFamily(n_parents=3, skills=list(SKILLS)[:2])


def test_readme_quotes_the_report_script() -> None:
    numbers = json.loads((REPORT / "numbers.json").read_text())
    readme = " ".join((REPO / "README.md").read_text().split())
    assert readme_paragraph(numbers) in readme
    assert numbers["knee"]["kind"] != "parent" and len(numbers["knee"]["mean_weight"]) >= 2
    assert all(w > 0 for w in numbers["knee"]["mean_weight"].values())
    for name in ("pareto.png", "history.png", "coefficients.png"):
        assert (REPORT / name).stat().st_size > 0


def _accuracies(model_dir: Path) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.fitness.scoring.evaluator import FitnessEvaluator

    evaluator = FitnessEvaluator(REPO / "fitness" / "demo.yaml", AutoTokenizer.from_pretrained(model_dir))
    return evaluator.evaluate_full(AutoModelForCausalLM.from_pretrained(model_dir).eval())


def _merge(base: Path, experts: list[Path], weights: list[list[float]], out: Path) -> Path:
    from evomerge.merge.io import merge_to_directory

    recipe = MergeRecipe.from_yaml(
        yaml.safe_dump(
            {
                "merge_method": "task_arithmetic",
                "base_model": str(base),
                "dtype": "float32",
                "models": [
                    {"model": str(e), "parameters": {"weight": w}}
                    for e, w in zip(experts, weights, strict=True)
                ],
            }
        )  # fmt: skip
    )
    return merge_to_directory(recipe, out, progress=False)


@pytest.mark.slow
def test_planted_skills_make_a_merge_better_than_every_parent(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the whole eval split: each expert solves its task only; taking layers 0-1 from the vowel
    expert and 2-3 from the digit one solves both; the equal-weight global merge solves neither."""
    monkeypatch.setenv("EVOMERGE_CACHE", str(cache))
    base, experts = DemoFamily(**SPACE["demo_family"]).ensure()
    skills = SPACE["demo_family"]["skills"]
    for skill, expert in zip(skills, experts, strict=True):
        scores = _accuracies(expert)
        assert scores[skill] > ON and all(v < OFF for task, v in scores.items() if task != skill), scores
    per_layer = _accuracies(_merge(base, experts, [[1, 1, 0, 0], [0, 0, 1, 1]], tmp_path / "per_layer"))
    assert all(v > ON for v in per_layer.values()), per_layer
    uniform = _accuracies(_merge(base, experts, [[0.5], [0.5]], tmp_path / "uniform"))
    assert all(v < OFF for v in uniform.values()), uniform


@pytest.mark.slow
def test_the_readme_quickstart_knee_is_a_merge(cache: Path, tmp_path: Path) -> None:
    """The README's command; the knee merges both experts and beats each parent off its task."""
    env = {**os.environ, "EVOMERGE_CACHE": str(cache)}
    run = tmp_path / "run"
    search = subprocess.run(
        ["evomerge", "search", "experiments/quickstart.yaml", "--run-dir", str(run), "--quiet"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert search.returncode == 0, search.stderr[-2000:]
    front = subprocess.run(
        ["evomerge", "front", str(run), "--format", "json"], cwd=REPO, env=env, capture_output=True, text=True
    )
    payload = json.loads(front.stdout)
    knee = next(r for r in payload["front"] if r["number"] == payload["knee"])
    assert knee["kind"] != "parent"
    from evomerge.store import open_run

    store = open_run(run)
    recipe = MergeRecipe.from_yaml(store.study.trials[knee["number"]].user_attrs["recipe"])
    nonzero = [m for m in recipe.models if any(w > 0 for w in _weights(m.parameters["weight"]))]
    assert len(nonzero) >= 2
    _exported_knee_runs_in_mergekit(run, env, tmp_path)
    assert all(v > ON for v in knee["estimates"].values()), knee
    for trial in store.trials():
        if trial.user_attrs.get("kind") == "parent":
            own = trial.user_attrs["label"].removeprefix("expert_")
            for task, value in zip(store.objectives, trial.values, strict=True):
                if task != own:
                    assert knee["estimates"][task] - value > ON - OFF


def _weights(value: object) -> list[float]:
    return [float(w) for w in value] if isinstance(value, list) else [float(value)]  # type: ignore[union-attr]


def test_the_demo_family_folder_reads_as_one_model_in_mergekit(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EVOMERGE_CACHE", str(tmp_path))
    root = DemoFamily(**SPACE["demo_family"]).root()
    assert "+" not in str(root) and "@" not in str(root)


def _exported_knee_runs_in_mergekit(run: Path, env: dict[str, str], tmp_path: Path) -> None:
    """`export --knee` writes a recipe that `mergekit-yaml` runs as it is, to evomerge's tensors."""
    from tiny import MERGEKIT_BIN, load_tensors

    mergekit = MERGEKIT_BIN
    if not mergekit.is_file():
        pytest.skip(f"MERGEKIT CHECK NOT RUN: {mergekit} not found (see the README's set-up)")
    recipe, ours = tmp_path / "knee.yaml", tmp_path / "ours"
    export = subprocess.run(
        ["evomerge", "export", str(run), "--knee", "--out", str(recipe), "--materialize", str(ours)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr[-2000:]
    theirs = tmp_path / "theirs"
    merged = subprocess.run(
        [str(mergekit), str(recipe), str(theirs)], capture_output=True, text=True, timeout=600
    )
    assert merged.returncode == 0, merged.stderr[-2000:]
    expected = load_tensors(theirs)
    got = load_tensors(ours)
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert (got[name].float() - tensor.float()).abs().max() <= 1e-5 * tensor.abs().max(), name
