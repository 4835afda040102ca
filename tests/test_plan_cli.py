"""`evomerge plan` and the search's memory preflight: bytes from headers, refusals in one line."""

from __future__ import annotations

import json

import pytest
from searchfixture import write_experiment
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.errors import ConfigError
from evomerge.merge.io import ModelReader
from evomerge.merge.memory import reader_bytes


def test_plan_reports_the_checkpoints_bytes_per_placement(tmp_path, tiny_family) -> None:
    path = write_experiment(tmp_path / "exp", tiny_family, trials=2)
    result = CliRunner().invoke(app, ["plan", str(path), "--format", "json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    base, parents = tiny_family
    weights = [reader_bytes(ModelReader(p)) for p in [base, *parents]]
    assert [m["bytes"] for m in data["models"]] == weights
    assert data["genes"] == 2 * 2 * 4  # weight and density, per parent, per layer (4 layers)
    rows = {row["placement"]: row for row in data["placements"]}
    assert rows["device"]["read_bytes_per_candidate"] == sum(weights)
    # device: base + parents + the live model, +5% headroom and the kernels' chunk buffers (at most
    # 32 B per entry of the largest tensor per model: large here, where one tensor is 1/26 of a model)
    reader = ModelReader(base)
    largest = max(reader.shape(n)[0] * (reader.shape(n) + (1,))[1] for n in reader.tensor_names)
    held = sum(weights) + weights[0]
    assert held <= rows["device"]["device_bytes"] <= 1.3 * held + 32 * largest * len(weights)
    assert rows["disk"]["device_bytes"] < rows["device"]["device_bytes"]
    assert data["chosen"] == "device" and data["refusal"] is None
    table = CliRunner().invoke(app, ["plan", str(path), "--device", "cpu"])
    assert table.exit_code == 0 and "placement: device" in table.output


def test_plan_reports_the_items_a_trial_and_each_rung_score(tmp_path, tiny_family) -> None:
    import yaml

    path = write_experiment(tmp_path / "exp", tiny_family, trials=2)
    spec = yaml.safe_load(path.read_text())
    spec["budget"] = {"items": 900}
    spec["promotion"] = {"rungs": [10, 30], "share": 0.3}
    path.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["plan", str(path), "--format", "json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    fitness = json.loads(result.output)["fitness"]
    assert fitness["items_per_trial"] == 16  # the quickstart suite: 8 anchors for each of 2 tasks
    assert fitness["rung_items"] == [20, 60] and fitness["promotion_share"] == 0.3
    assert fitness["budget_items"] == 900
    table = CliRunner().invoke(app, ["plan", str(path), "--device", "cpu"])
    words = " ".join(table.output.split())
    assert "16 items per trial" in words and "rungs of 20, 60 items" in words


def test_plan_names_the_fix_when_nothing_fits(tmp_path, tiny_family) -> None:
    path = write_experiment(tmp_path / "exp", tiny_family, trials=2)
    result = CliRunner().invoke(app, ["plan", str(path), "--device", "cpu", "--free-gib", "0.000001"])
    assert result.exit_code == 0, result.output
    assert "is free; use a larger device, fewer workers" in result.output


def test_search_refuses_up_front_when_the_family_does_not_fit(tmp_path, tiny_family, monkeypatch) -> None:
    """Before Ray starts or a run directory exists: one line naming need, free memory and fix."""
    import evomerge.runtime.preflight as preflight

    monkeypatch.setattr(preflight, "free_bytes", lambda device: 1024)
    path = write_experiment(tmp_path / "exp", tiny_family, trials=2)
    result = CliRunner().invoke(app, ["search", str(path), "--run-dir", str(tmp_path / "run")])
    assert isinstance(result.exception, ConfigError), result.output
    message = str(result.exception)
    assert "\n" not in message and "2 workers x" in message and "but 1 KiB is free" in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("placement", ["device", "disk"])
def test_an_explicit_placement_is_planned_as_asked(tmp_path, tiny_family, placement) -> None:
    import yaml

    path = write_experiment(tmp_path / "exp", tiny_family, trials=2)
    data = yaml.safe_load(path.read_text())
    data["workers"]["placement"] = placement
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["plan", str(path), "--format", "json", "--device", "cpu"])
    assert json.loads(result.output)["chosen"] == placement
