"""`evomerge irt fit|anchors|estimate` and `evomerge calibrate`, including their bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from suites import write_mini_suite
from synthetic import make_population
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.errors import ConfigError, EvomergeError
from evomerge.fitness.banks.items import Item, write_bank
from evomerge.fitness.irt.calibration import Calibration

runner = CliRunner()


def _invoke(*args: str | Path) -> object:
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=True)


def _csv(path: Path, subjects: list[str], items: list[str], rows: np.ndarray) -> Path:
    lines = ["subject," + ",".join(items)]
    for subject, row in zip(subjects, rows, strict=True):
        lines.append(subject + "," + ",".join("" if np.isnan(v) else str(int(v)) for v in row))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("irtcli")
    pop = make_population(64, 60, dim=1, missing=0.05, seed=21)
    items = [f"x{k}" for k in range(60)]
    bank = write_bank(
        [
            Item.from_dict({"id": i, "task": "left" if k < 30 else "right", "prompt": "p", "target": "t"})
            for k, i in enumerate(items)
        ],
        root / "bank.jsonl",
    )
    return {
        "root": root,
        "bank": bank,
        "train": _csv(root / "train.csv", [f"s{j}" for j in range(60)], items, pop.responses[:60]),
        "test": _csv(root / "test.csv", [f"t{j}" for j in range(4)], items, pop.responses[60:]),
    }


def test_fit_anchors_estimate(data: dict[str, Path]) -> None:
    root = data["root"]
    result = _invoke(
        "irt", "fit", data["train"], "--out", root / "calib.json", "--items", data["bank"], "--dims", "1,2"
    )
    assert result.exit_code == 0, result.output
    calibration = Calibration.load(root / "calib.json")
    assert sorted(calibration.tasks) == ["left", "right"] and "bank.jsonl" in calibration.bank_hashes
    result = _invoke("irt", "anchors", root / "calib.json", "-n", "6", "--out", root / "anchors.json")
    assert result.exit_code == 0, result.output
    for estimator in ("mean", "gpirt", "mpirt"):
        extra = ["--parent", "s0", "--parent", "s1"] if estimator == "mpirt" else []
        result = _invoke(
            "irt",
            "estimate",
            root / "calib.json",
            root / "anchors.json",
            "--responses",
            data["test"],
            "--estimator",
            estimator,
            *extra,
        )
        assert result.exit_code == 0, result.output
        output = json.loads(result.output)
        assert sorted(output) == ["t0", "t1", "t2", "t3"]
        for per_task in output.values():
            assert sorted(per_task) == ["left", "right"]
            for value in per_task.values():
                assert 0.0 <= value["estimate"] <= 1.0 and value["estimator"] == estimator


def test_fit_rejects_bad_values_and_a_bank_that_does_not_match(data: dict[str, Path]) -> None:
    root = data["root"]
    bad = root / "bad.csv"
    bad.write_text("subject,x0,x1\na,1,yes\nb,0,1\n")
    result = _invoke("irt", "fit", bad, "--out", root / "never.json")
    assert isinstance(result.exception, ConfigError)
    assert "item 'x1' has value 'yes'; responses must be 0, 1 or empty" in str(result.exception)
    other = root / "other.csv"
    other.write_text("subject,x0,zz9\na,1,0\nb,0,1\n")
    result = _invoke("irt", "fit", other, "--out", root / "never.json", "--items", data["bank"])
    assert isinstance(result.exception, ConfigError)
    assert "does not match bank" in str(result.exception) and "'zz9'" in str(result.exception)
    assert not (root / "never.json").exists()


def test_anchor_and_estimate_errors(data: dict[str, Path]) -> None:
    root = data["root"]
    _invoke("irt", "fit", data["train"], "--out", root / "c2.json", "--items", data["bank"], "--dims", "1")
    result = _invoke("irt", "anchors", root / "c2.json", "-n", "31", "--out", root / "a2.json")
    assert isinstance(result.exception, ConfigError)
    assert "n=31 anchors for task 'left': must be between 1 and its 30 items" in str(result.exception)
    assert not (root / "a2.json").exists()
    _invoke("irt", "anchors", root / "c2.json", "-n", "3", "--out", root / "a2.json")
    anchors = json.loads((root / "a2.json").read_text())["tasks"]
    blank = root / "blank.csv"
    right = anchors["right"]["ids"]
    blank.write_text("subject," + ",".join(right) + "\nlonely," + ",".join("1" for _ in right) + "\n")
    result = _invoke("irt", "estimate", root / "c2.json", root / "a2.json", "--responses", blank)
    assert isinstance(result.exception, EvomergeError)
    assert "subject 'lonely': no answered anchors for task 'left'" in str(result.exception)
    unknown = root / "unknown.csv"
    unknown.write_text("subject,nope\na,1\n")
    result = _invoke("irt", "estimate", root / "c2.json", root / "a2.json", "--responses", unknown)
    assert "does not match calibration" in str(result.exception)
    # Anchors chosen on one calibration, used with another: refused.
    _invoke("irt", "fit", data["train"], "--out", root / "c3.json", "--dims", "1")
    result = _invoke("irt", "estimate", root / "c3.json", root / "a2.json", "--responses", data["test"])
    assert "selected on another calibration" in str(result.exception)


def test_calibrate_command(tiny_family: tuple[Path, list[Path]], tmp_path: Path) -> None:
    suite = write_mini_suite(tmp_path)
    base, parents = tiny_family
    out = tmp_path / "calib.json"
    result = _invoke("calibrate", suite, "--subjects", base, *parents, "--out", out, "--dims", "1")
    assert result.exit_code == 0, result.output
    assert Calibration.load(out).subject_names() == ["base", "parent_0", "parent_1"]
    result = _invoke(
        "calibrate", suite, "--subjects", base, tmp_path / "missing", "--out", tmp_path / "x.json"
    )
    assert isinstance(result.exception, ConfigError) and "are not directories" in str(result.exception)
