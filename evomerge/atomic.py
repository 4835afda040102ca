"""Files written whole or not at all: through a temporary sibling, renamed over the target, so a
reader (or a run killed mid-write) never sees half a file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: str | Path, data: str | bytes, mode: int = 0o644) -> Path:
    """Write `data` (text as UTF-8) to `path`, creating its folder; `mode`: the file's permissions
    (0o644, ordinary data; 0o600 for what only its owner reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(data: Any, path: str | Path, indent: int | None = None) -> Path:
    return write_atomic(path, json.dumps(data, indent=indent))
