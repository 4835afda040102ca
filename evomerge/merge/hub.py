"""Models named by Hugging Face hub id (`org/name`, optionally `org/name@revision`), resolved to a
snapshot directory of the local Hugging Face cache, never downloaded: these machines may be
offline, and a merge should not fetch gigabytes behind the user's back. A recipe keeps the id as
written (as mergekit's do); only reading a model resolves it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from evomerge.errors import ModelLoadError

_HUB_ID = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")


def hf_cache_dir() -> Path:
    """The hub cache huggingface_hub uses, read from the environment now (its own constant is read
    at import): HF_HUB_CACHE, else HF_HOME/hub, else XDG_CACHE_HOME or ~/.cache + huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home) / "hub"


def is_hub_id(model: str | Path) -> bool:
    """Whether `model` reads as `org/name[@revision]` (a path that exists wins over an id)."""
    return _HUB_ID.match(str(model)) is not None


def resolve_model(model: str | Path) -> Path:
    """An existing path as given; else a hub id's cached snapshot; else a one-line ModelLoadError."""
    path = Path(model)
    match = _HUB_ID.match(str(model))
    if path.exists() or match is None:
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    cache = hf_cache_dir()
    try:
        return Path(
            snapshot_download(
                match["repo"], revision=match["revision"], cache_dir=cache, local_files_only=True
            )
        )
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError):
        raise ModelLoadError(
            f"model {str(model)!r} not found: not a local path and not in the Hugging Face cache at "
            f"{cache}; download it with `huggingface-cli download {match['repo']}` or give a path"
        ) from None
