"""Optimizers behind one ask/tell interface, registered by name in `OPTIMIZERS`."""

from evomerge.optimizers import cma_es, ng, nsga2, random_search  # noqa: F401  (registers them)
from evomerge.optimizers.base import (
    OPTIMIZERS,
    Candidate,
    Optimizer,
    Scalarizer,
    checkpoint_bytes,
    load_checkpoint,
    make_optimizer,
    optimizer_from_bytes,
    save_checkpoint,
)

__all__ = [
    "OPTIMIZERS",
    "Candidate",
    "Optimizer",
    "Scalarizer",
    "checkpoint_bytes",
    "load_checkpoint",
    "make_optimizer",
    "optimizer_from_bytes",
    "save_checkpoint",
]
