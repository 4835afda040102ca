"""Calibration artifacts and the FitnessEvaluator on tiny models: round trip, staleness, contract."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from suites import FITNESS, write_mini_suite
from transformers import AutoModelForCausalLM

from evomerge.errors import CandidateError, ConfigError
from evomerge.fitness.banks.items import load_bank, write_bank
from evomerge.fitness.banks.suite import FitnessSuite
from evomerge.fitness.irt.calibration import Calibration, read_responses_csv
from evomerge.fitness.population import calibrate_suite
from evomerge.fitness.scoring.answer_cache import AnswerCache
from evomerge.fitness.scoring.evaluator import FitnessEvaluator, FitnessResult
from evomerge.fitness.selection.plan import make_plan


@pytest.fixture(scope="module")
def calibrated(
    tiny_family: tuple[Path, list[Path]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("calib")
    subjects = []
    for source in [tiny_family[0], *tiny_family[1]]:  # copies: the staleness test edits one
        subjects.append(Path(shutil.copytree(source, root / "models" / source.name)))
    suite_path = write_mini_suite(root)
    calibration = calibrate_suite(FitnessSuite.load(suite_path), subjects, dims=(1,))
    calibration.save(root / "calib.json")
    return suite_path, root / "calib.json"


def test_calibration_round_trip(calibrated: tuple[Path, Path]) -> None:
    suite_path, calib_path = calibrated
    calibration = Calibration.load(calib_path)
    assert calibration.subject_names() == ["base", "parent_0", "parent_1"]
    assert calibration.responses.shape == (3, 20)
    assert set(np.unique(calibration.responses)) <= {0.0, 1.0}
    assert calibration.tasks == FitnessSuite.load(suite_path).eval_ids
    assert calibration.suite == "mini" and set(calibration.bank_hashes) == {"arith", "dates"}
    copy = calibration.save(calib_path.parent / "copy.json")
    assert Calibration.load(copy).sha256() == calibration.sha256()


def test_evaluator_contract_with_calibration(
    calibrated: tuple[Path, Path], tiny_family: tuple[Path, list[Path]]
) -> None:
    suite_path, calib_path = calibrated
    parents = [calib_path.parent / "models" / "parent_0", calib_path.parent / "models" / "parent_1"]
    model = AutoModelForCausalLM.from_pretrained(tiny_family[1][0]).eval()
    for estimator in ("gpirt", "gmpirt", "anchor"):
        evaluator = FitnessEvaluator(
            suite_path,
            tiny_family[0],
            calibration=calib_path,
            estimator=estimator,
            parents=parents,
            batch_size=3,
        )
        result = evaluator.evaluate(model)
        assert isinstance(result, FitnessResult) and result.estimator == estimator
        assert list(result.estimates) == ["arithmetic", "dates"]
        assert all(0.0 <= v <= 1.0 for v in result.estimates.values())
        assert all(lo <= result.estimates[t] <= hi for t, (lo, hi) in result.intervals.items())
        assert set(result.answers) == {i for ids in evaluator.anchor_ids.values() for i in ids}
        assert result.n_items == 8 and result.seconds > 0
    full = evaluator.evaluate_full(model)
    answers = evaluator.score_eval_split(model)
    assert full["dates"] == pytest.approx(np.mean([answers[i] for i in evaluator.suite.eval_ids["dates"]]))


def test_estimator_auto_is_resolved_on_the_calibration(
    calibrated: tuple[Path, Path], tiny_family: tuple[Path, list[Path]]
) -> None:
    suite_path, calib_path = calibrated
    suite = FitnessSuite.load(suite_path)
    auto = FitnessSuite.from_dict({**suite.spec.model_dump(), "estimator": "auto"}, root=suite.root)
    evaluator = FitnessEvaluator(auto, tiny_family[0], calibration=calib_path, batch_size=3)
    plan = evaluator.plan
    assert plan.requested == "auto" and evaluator.estimator == plan.estimator
    assert [c.estimator for c in plan.checks] == ["mean", "pirt", "gpirt"]
    assert plan.estimator == min(plan.checks, key=lambda c: c.mae).estimator
    model = AutoModelForCausalLM.from_pretrained(tiny_family[1][0]).eval()
    assert evaluator.evaluate(model).estimator == plan.estimator
    # the driver's plan for the same suite, calibration and seed: the same anchors and estimator
    calibration = Calibration.load(calib_path)
    assert make_plan(auto, calibration, auto.seed) == plan
    # without a calibration there is nothing to check an IRT estimator on: the subsample mean
    bare = FitnessEvaluator(auto, tiny_family[0]).plan
    assert (bare.requested, bare.estimator, bare.checks, bare.anchors["method"]) == (
        "auto",
        "mean",
        (),
        "random",
    )


def test_stale_calibration_is_detected(
    calibrated: tuple[Path, Path], tiny_family: tuple[Path, list[Path]]
) -> None:
    suite_path, calib_path = calibrated
    root = suite_path.parent
    items = load_bank(root / "arith.jsonl")
    backup = (root / "arith.jsonl").read_bytes()
    try:
        write_bank(items[:-1], root / "arith.jsonl")  # the bank changed after calibration
        with pytest.raises(ConfigError, match="does not match bank 'arith'.*re-run evomerge calibrate"):
            FitnessEvaluator(suite_path, tiny_family[0], calibration=calib_path)
    finally:
        (root / "arith.jsonl").write_bytes(backup)
    parent = root / "models" / "parent_1"
    weights = next(parent.glob("*.safetensors"))
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(ConfigError, match="changed since calibration"):
            FitnessEvaluator(suite_path, tiny_family[0], calibration=calib_path, parents=[parent])
    finally:
        weights.write_bytes(original)
    with pytest.raises(ConfigError, match="not a subject of calibration"):
        FitnessEvaluator(suite_path, tiny_family[0], calibration=calib_path, parents=["nobody"])


def test_evaluator_without_calibration(tiny_family: tuple[Path, list[Path]]) -> None:
    quick = FITNESS / "quickstart.yaml"
    first = FitnessEvaluator(quick, tiny_family[0], seed=5)
    assert first.anchor_ids == FitnessEvaluator(quick, tiny_family[0], seed=5).anchor_ids
    assert first.anchor_ids != FitnessEvaluator(quick, tiny_family[0], seed=6).anchor_ids
    assert {t: len(v) for t, v in first.anchor_ids.items()} == {"arithmetic": 8, "dates": 8}
    broken = AutoModelForCausalLM.from_pretrained(tiny_family[0]).eval()
    with torch.no_grad():
        broken.lm_head.weight.fill_(float("inf"))
    with pytest.raises(CandidateError):
        first.evaluate(broken)
    with pytest.raises(ConfigError, match="needs a calibration"):
        FitnessEvaluator(FITNESS / "skills.yaml", tiny_family[0])
    with pytest.raises(ConfigError, match="the model is on cpu but the evaluator was made for device='meta'"):
        FitnessEvaluator(quick, tiny_family[0], device="meta").evaluate(broken)
    assert (
        FitnessEvaluator(quick, tiny_family[0]).anchor_ids
        == FitnessEvaluator(quick, tiny_family[0], seed=0).anchor_ids
    )


def test_responses_csv_errors(tmp_path: Path) -> None:
    good = tmp_path / "ok.csv"
    good.write_text("subject,i1,i2\nm1,1,0\nm2,,1\n")
    subjects, items, matrix = read_responses_csv(good)
    assert subjects == ["m1", "m2"] and items == ["i1", "i2"] and np.isnan(matrix[1, 0])
    bad = tmp_path / "bad.csv"
    bad.write_text("subject,i1,i2\nm1,1,0.5\n")
    with pytest.raises(
        ConfigError, match="subject 'm1', item 'i2' has value '0.5'; responses must be 0, 1 or empty"
    ):
        read_responses_csv(bad)
    bad.write_text("model,i1\nm1,1\n")
    with pytest.raises(ConfigError, match="first column must be named 'subject'"):
        read_responses_csv(bad)


def test_calibrate_cli_scores_space_filling_merges(
    tiny_family: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    """`evomerge calibrate --space S --merges N --dtype bfloat16`: the subjects, then N in-memory
    merges spread over the space (distinct recipes, none written to disk), all in the response matrix."""
    import yaml
    from typer.testing import CliRunner

    from evomerge.cli import app

    base, parents = tiny_family
    space_path = tmp_path / "space.yaml"
    space_path.write_text(
        yaml.safe_dump(
            {
                "base": str(base),
                "parents": [str(p) for p in parents],
                "method": "ties",
                "granularity": "global",
                "search": {"weight": {"low": 0.0, "high": 1.0}, "density": {}},
                "fixed": {"normalize": True},
            }
        )
    )
    out = tmp_path / "calib.json"
    args = ["calibrate", write_mini_suite(tmp_path), "--subjects", base, *parents]
    args += ["--space", space_path, "--merges", 3, "--dtype", "bfloat16", "--dims", "1", "--out", out]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    calibration = Calibration.load(out)
    names = ["base", "parent_0", "parent_1", "merge_00", "merge_01", "merge_02"]
    assert calibration.subject_names() == names and calibration.responses.shape == (6, 20)
    recipes = [s["recipe"] for s in calibration.subjects[3:]]
    weights = [r["models"][0]["parameters"]["weight"] for r in recipes]
    assert len(set(weights)) == 3 and all(0.0 <= w <= 1.0 for w in weights)  # one per stratum
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "arith.jsonl",
        "calib.answers",
        "calib.json",
        "dates.jsonl",
        "mini.yaml",
        "space.yaml",
    ]
    result = CliRunner().invoke(app, [str(a) for a in [*args[:4], "--merges", 2, "--out", out]])
    assert result.exit_code != 0 and "--merges needs --space" in str(result.exception or result.output)


def test_calibration_keeps_answers_and_rescores_only_what_changed(
    tiny_family: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    """Answers are saved per subject as scored; a re-run reuses current ones (even edited ones,
    proving they are read) and re-scores a subject whose weights changed, and the merges of it."""
    from evomerge.space import SearchSpace

    subjects = [
        Path(shutil.copytree(s, tmp_path / "models" / s.name)) for s in [tiny_family[0], *tiny_family[1]]
    ]
    space = SearchSpace.from_dict(
        {
            "base": str(subjects[0]),
            "parents": [str(p) for p in subjects[1:]],
            "method": "linear",
            "granularity": "global",
            "search": {"weight": {"low": 0.0, "high": 1.0}},
        }
    )
    suite = FitnessSuite.load(write_mini_suite(tmp_path))
    cache = AnswerCache(tmp_path / "answers")

    def run() -> tuple[Calibration, list[str]]:
        scored: list[str] = []

        def progress(message: str) -> None:
            if message.startswith("scoring"):
                scored.append(message.split()[1])

        calibration = calibrate_suite(
            suite, subjects, dims=(1,), space=space, merges=2, answers=cache, progress=progress
        )
        return calibration, scored

    first, scored = run()
    assert scored == ["base", "parent_0", "parent_1", "merge_00", "merge_01"]
    assert sorted(p.name for p in cache.directory.iterdir()) == [f"{n}.json" for n in sorted(scored)]
    again, scored = run()
    assert scored == [] and np.array_equal(first.responses, again.responses)

    saved = cache.directory / "parent_0.json"
    data = json.loads(saved.read_text())
    data["answers"] = {item: 1 - value for item, value in data["answers"].items()}
    saved.write_text(json.dumps(data))
    edited, scored = run()
    assert scored == [] and np.array_equal(edited.responses[1], 1 - first.responses[1])

    config = subjects[2] / "config.json"  # parent_1 re-trained: its answers and the merges' are stale
    config.write_text(config.read_text() + "\n")
    _, scored = run()
    assert scored == ["parent_1", "merge_00", "merge_01"]
