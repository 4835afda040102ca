"""Experiments over the tiny model family, written the way users write them."""

from __future__ import annotations

from pathlib import Path

import yaml

SUITE = Path(__file__).parents[1] / "fitness" / "quickstart.yaml"


def write_experiment(
    directory: Path, family, trials: int, optimizer: dict | None = None, workers: int = 2, minutes=None
) -> Path:
    base, parents = family
    directory.mkdir(parents=True, exist_ok=True)
    space = {
        "name": "tiny_ties",
        "base": str(base),
        "parents": [str(p) for p in parents],
        "method": "ties",
        "search": {"weight": {}, "density": {}},
    }
    (directory / "space.yaml").write_text(yaml.safe_dump(space))
    experiment = {
        "name": "tiny",
        "space": "space.yaml",
        "suite": str(SUITE),
        "optimizer": optimizer or {"name": "cma", "settings": {"popsize": 4}},
        "budget": {"trials": trials, **({"minutes": minutes} if minutes else {})},
        "workers": {"count": workers, "cpus_per_worker": 1, "batch_size": 8},
        "ray": {"num_cpus": 2},
    }
    path = directory / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    return path
