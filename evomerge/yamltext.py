"""YAML text read for evomerge's own files (experiments, spaces, suites, recipes)."""

from __future__ import annotations

from typing import Any

import yaml

from evomerge.errors import ConfigError


def parse_yaml(text: str, what: str) -> Any:
    """`text` parsed, or a ConfigError naming `what` and the parser's position and problem on one
    line (PyYAML's own message spans several lines, with a drawing of the spot)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = " ".join(str(getattr(error, "problem", None) or error).split())
        raise ConfigError(f"{what} is not valid YAML ({where}{problem}); fix the file") from None
