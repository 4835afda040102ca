"""What a search checks before any worker starts: each worker's memory against the free memory.

The bytes come from the checkpoints' safetensors headers (nothing is loaded; see
`evomerge/merge/memory.py`). A local run checks the driver's own devices; a worker on a cluster
checks its device again when it starts (LiveMerger refuses in one line before loading).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from evomerge.errors import ConfigError
from evomerge.merge.io import ModelReader, check_compatible
from evomerge.merge.memory import MemoryPlan, choose_placement, free_bytes


def live_dtype(name: str, device: str) -> torch.dtype | None:
    """The live model's dtype for `workers.dtype`; None keeps the checkpoint's (auto on a CPU)."""
    if name != "auto":
        return getattr(torch, name)
    return torch.bfloat16 if device.startswith("cuda") else None


def local_worker_device(gpus_per_worker: float | None) -> str:
    """Where a local worker runs: a GPU when this machine has one and the experiment allows it."""
    return "cuda" if torch.cuda.is_available() and gpus_per_worker != 0 else "cpu"


def workers_per_device(count: int, device: str) -> int:
    """CPU workers all share the host's RAM; GPU workers are spread one set per GPU."""
    return count if device == "cpu" else math.ceil(count / max(torch.cuda.device_count(), 1))


def model_readers(space: Any) -> list[ModelReader]:
    """The space's base (or first parent) and parents, opened header-only and checked compatible."""
    paths = ([space.base] if space.base else []) + [p for p in space.parents if p != space.base]
    readers = {str(path): ModelReader(path) for path in paths}
    check_compatible(readers)
    return list(readers.values())


def check_worker_memory(experiment: Any, space: Any, device: str, free: int | None = None) -> MemoryPlan:
    """One worker's memory plan for the experiment's placement on `device` (free memory measured
    unless given), or a ConfigError whose one line names the need, the free memory and the fix."""
    workers = experiment.spec.workers
    sharing = workers_per_device(workers.count, device)
    free = free_bytes(device) if free is None else free
    readers = model_readers(space)
    plan = choose_placement(
        readers, workers.placement, device, live_dtype(workers.dtype, device), free, sharing
    )
    refusal = plan.refusal(free, sharing)
    if refusal is not None:
        raise ConfigError(refusal)
    return plan
