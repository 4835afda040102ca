"""How the CLI reads: --version, help without type noise, every option documented, --format choices
per command, commands in the user's order."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer.main
from typer._click import Context
from typer.testing import CliRunner

from evomerge import __version__
from evomerge.cli import app

runner = CliRunner()
# Typer's own type labels: `<bool>`, `<int range>`, `<path>`, `<table|json>`... (not `runs/<name>`)
TYPE_NOISE = re.compile(r"<(bool|int|float|str|path|file|dir|int range|float range|list\[\w+\])>|<\w+\|")


def commands(command: Any = None, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command of the tree with its path, the top-level group first."""
    command = command or typer.main.get_command(app)
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        found += commands(sub, (*path, name))
    return found


def test_version_prints_the_package_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"evomerge {__version__}"


def test_top_level_commands_follow_the_users_path() -> None:
    group = typer.main.get_command(app)
    assert group.list_commands(Context(group)) == [
        "search",
        "plan",
        "status",
        "front",
        "plot",
        "export",
        "audit",
        "merge",
        "calibrate",
        "irt",
        "banks",
        "dashboard",
    ]
    listed = re.findall(r"^│ (\w+) ", runner.invoke(app, ["--help"], env={"COLUMNS": "80"}).output, re.M)
    assert listed[:3] == ["search", "plan", "status"] and listed[-1] == "dashboard"


@pytest.mark.parametrize("path", [p for p, _ in commands()], ids=lambda p: " ".join(p) or "evomerge")
def test_help_has_no_type_noise_and_every_option_is_documented(path: tuple[str, ...]) -> None:
    command = dict(commands())[path]
    undocumented = [p.name for p in command.get_params(Context(command)) if not (p.help or "").strip()]
    assert undocumented == [], f"{' '.join(path)}: parameters without help text"
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert not TYPE_NOISE.search(result.output), result.output
    # every help text is printed whole: none lost to Rich markup (`[low, high]` once printed nothing)
    wide = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "1000"}).output
    flat = re.sub(r"[\s│]", "", wide)
    texts = [command.help or ""] + [p.help or "" for p in command.get_params(Context(command))]
    for text in texts:
        assert re.sub(r"\s", "", text.split("\n\n")[0]) in flat, text


def test_flags_show_no_placeholder_and_options_a_plain_one() -> None:
    text = runner.invoke(app, ["search", "--help"], env={"COLUMNS": "120"}).output
    assert re.search(r"--resume\s{2,}Continue", text)  # a flag: nothing between name and help
    assert re.search(r"--format\s+\[table\|json\]\s", text)
    assert re.search(r"--max-trials\s+INTEGER", text)
    assert "EXPERIMENT" in text


FORMATS = {
    ("search",): ["table", "json"],
    ("plan",): ["table", "json"],
    ("status",): ["table", "json"],
    ("front",): ["table", "json", "csv"],
    ("plot",): ["table", "json"],
    ("export",): ["table", "json"],
    ("audit",): ["table", "json"],
}


def test_each_format_option_offers_exactly_what_its_command_accepts() -> None:
    offered = {}
    for path, command in commands():
        for param in command.get_params(Context(command)):
            if "--format" in getattr(param, "opts", []):
                offered[path] = [c.value for c in param.type_descriptor.choices]
    assert {path: offered.get(path) for path in FORMATS} == FORMATS
    # commands added since: no csv where no csv is written
    assert all(choices == ["table", "json"] for path, choices in offered.items() if path not in FORMATS)


def test_an_unsupported_format_is_refused_before_the_command_runs(tmp_path) -> None:
    # the run directory does not exist: had the command started, it would say so instead
    result = runner.invoke(app, ["status", str(tmp_path / "nowhere"), "--format", "csv"])
    assert result.exit_code == 2
    assert "Invalid value for '--format'" in result.output and "'csv' is not one of" in result.output


def test_irt_estimate_help_shows_its_output_fields() -> None:
    text = runner.invoke(app, ["irt", "estimate", "--help"], env={"COLUMNS": "200"}).output
    assert "interval (low, high)" in text and "fractions in [0, 1]" in text
