"""Shared fixtures: a tiny model family written once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import make_family  # noqa: E402


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A base tiny llama and two parents, as safetensors HF directories."""
    return make_family(tmp_path_factory.mktemp("family"), n_parents=2)
