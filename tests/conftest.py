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


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server on a loopback port for the session; skipped, with the reason, when
    it cannot start. Its directory lies directly in /tmp so the server's own user can reach it."""
    import shutil
    import tempfile

    from pgserver import Unavailable, postgres_server

    root = Path(tempfile.mkdtemp(prefix="evomerge-pg-"))
    try:
        with postgres_server(root) as url:
            yield url
    except Unavailable as reason:
        pytest.skip(f"PostgreSQL server could not start: {reason}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
