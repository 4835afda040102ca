"""`evomerge search` bad input: a clear ConfigError (the CLI prints it as one line, exit code 2),
nothing started or written."""

from __future__ import annotations

import pytest
from searchfixture import write_experiment
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.errors import ConfigError


def fails(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert isinstance(result.exception, ConfigError), result.output
    return str(result.exception)


def test_missing_experiment(tmp_path) -> None:
    assert "nope.yaml' does not exist" in fails("search", str(tmp_path / "nope.yaml"))


def test_resume_without_a_run_and_a_run_dir_in_use(tmp_path, tiny_family) -> None:
    path = write_experiment(tmp_path / "exp", tiny_family, trials=2)
    message = fails("search", str(path), "--run-dir", str(tmp_path / "run"), "--resume")
    assert "holds no run (run.json missing); drop --resume" in message
    assert not (tmp_path / "run" / "run.json").exists()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "run.json").write_text("{}")
    assert "a run already exists there; add --resume" in fails(
        "search", str(path), "--run-dir", str(tmp_path / "used")
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"learning_rate": 0.1},
            "unknown setting(s) learning_rate for optimizer 'cma'; accepted: sigma0, popsize",
        ),
        ({"sigma0": 3.0}, "sigma0: 3.0 must be in (0, 1]"),
        ({"weights": [1.0]}, "must be 2 non-negative numbers"),
    ],
)
def test_bad_optimizer_settings(tmp_path, tiny_family, settings, message) -> None:
    path = write_experiment(
        tmp_path / "exp", tiny_family, trials=2, optimizer={"name": "cma", "settings": settings}
    )
    assert message in fails("search", str(path), "--run-dir", str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("fault", ["missing parent", "other hidden size"])
def test_a_bad_parent_is_refused_before_anything_starts(tmp_path, tiny_family, fault) -> None:
    """Preflight reads every model's config and headers: a one-line error, no run directory, no
    Ray, no trial (before, this ran a minute of 'worker died twice' and exited 0)."""
    import yaml
    from tiny import make_family

    from evomerge.errors import EvomergeError

    path = write_experiment(tmp_path / "exp", tiny_family, trials=2)
    space = yaml.safe_load((tmp_path / "exp" / "space.yaml").read_text())
    if fault == "missing parent":
        space["parents"][1] = str(tmp_path / "nowhere")
        expected = "does not exist; check the path"
    else:
        space["parents"][1] = str(make_family(tmp_path / "wide", n_parents=1, hidden=64)[1][0])
        expected = "has hidden_size=64 but"
    (tmp_path / "exp" / "space.yaml").write_text(yaml.safe_dump(space))
    result = CliRunner().invoke(app, ["search", str(path), "--run-dir", str(tmp_path / "run")])
    assert isinstance(result.exception, EvomergeError), result.output
    assert expected in str(result.exception) and "\n" not in str(result.exception)
    assert not (tmp_path / "run").exists()
