"""Each calibration subject's answers, kept on disk as soon as they are scored.

Scoring a population on a full eval split takes minutes per model, so a calibration that stops
(Ctrl-C, a crash, a full disk) must not lose the subjects already scored, and a calibration
re-run with a few more subjects must score only those. One JSON file per subject holds its 0/1
answers and a key: the sha256 of everything the answers depend on (the banks' contents, how they
are scored, the items asked, the model's weights or the merge recipe and its models' weights, and
the dtype and device kind). A file whose key differs is stale and the subject is scored again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from evomerge.atomic import write_json_atomic

FORMAT = "evomerge-answers/1"


def answers_key(**what: Any) -> str:
    """A stable digest of what a subject's answers depend on (JSON-able values)."""
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


class AnswerCache:
    """A directory of `NAME.json` files: {"format", "key", "answers": {item id: 0/1}}."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def get(self, name: str, key: str) -> dict[str, int] | None:
        """The subject's cached answers when they were made under the same key, else None."""
        path = self._path(name)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # absent or half-written by an old crash: score again
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("key") != key:
            return None
        return data.get("answers")

    def put(self, name: str, key: str, answers: dict[str, int]) -> None:
        write_json_atomic({"format": FORMAT, "key": key, "answers": answers}, self._path(name))
