"""CMA-ES restarts with twice the population when pycma signals a stop (IPOP), and a pickled
optimizer continues through a restart exactly."""

from __future__ import annotations

import numpy as np

from evomerge.optimizers import make_optimizer
from evomerge.optimizers.base import checkpoint_bytes, optimizer_from_bytes


def _tell_flat(optimizer, n: int) -> list[tuple[float, ...]]:
    """Ask and tell n candidates one at a time, every one scoring the same (a flat landscape)."""
    genomes = []
    for _ in range(n):
        candidate = optimizer.ask()
        genomes.append(candidate.genome)
        optimizer.tell(candidate.id, [0.5])
    return genomes


def test_a_stopped_run_restarts_with_twice_the_population() -> None:
    optimizer = make_optimizer("cma", 3, 1, 0, {"popsize": 4})
    first_mean = optimizer.es.mean.copy()
    _tell_flat(optimizer, 3)
    assert optimizer.restarts == 0 and optimizer.popsize == 4
    _tell_flat(optimizer, 1)  # the generation is told; flat fitness is pycma's 'tolfun' stop
    assert optimizer.restarts == 1 and optimizer.popsize == 8
    assert not optimizer.es.stop()  # the new run is live
    assert not np.allclose(optimizer.es.mean, first_mean)  # from a new random mean
    _tell_flat(optimizer, 8)
    assert optimizer.restarts == 2 and optimizer.popsize == 16
    assert all(0.0 <= g <= 1.0 for genome in _tell_flat(optimizer, 5) for g in genome)


def test_resume_across_a_restart_is_exact() -> None:
    optimizer = make_optimizer("cma", 3, 1, 7, {"popsize": 4})
    _tell_flat(optimizer, 2)
    copy = optimizer_from_bytes(checkpoint_bytes(optimizer), "test")
    # Both go through the restart (after 2 more tells) and on into the new run.
    assert _tell_flat(optimizer, 12) == _tell_flat(copy, 12)
    assert optimizer.restarts == copy.restarts == 2
    assert np.array_equal(optimizer.es.mean, copy.es.mean)
