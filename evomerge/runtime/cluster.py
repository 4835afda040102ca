"""The Ray side of a search: joining or starting Ray, the worker actors, and how many fit."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from evomerge.errors import ConfigError
from evomerge.experiment import Experiment
from evomerge.space import SearchSpace


def init_ray(experiment: Experiment, address: str | None) -> bool:
    """Join `address` / RAY_ADDRESS, or start a local Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:
        num_cpus = experiment.spec.ray.num_cpus or os.cpu_count() or 1
        # Ray starts workers 15 nicer than their raylet; ours do all of the search's work, so on a
        # shared machine they starved at nice 19 behind any other job. They run at the driver's
        # priority instead (`nice evomerge search ...` still lowers it); a user's setting wins.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return True


def worker_gpus(workers: Any, resources: dict[str, float]) -> float:
    """GPUs per worker: `workers.gpus_per_worker`, else one where the cluster has any."""
    if workers.gpus_per_worker is not None:
        return workers.gpus_per_worker
    return 1.0 if resources.get("GPU", 0) > 0 else 0.0


def actor_factory(experiment: Experiment, space: SearchSpace, plan: Any) -> Callable[[int], Any]:
    """Worker actors, each made from one WorkerSpec holding the run's evaluation plan `plan`."""
    import ray

    from evomerge.runtime.worker import Worker, WorkerSpec

    workers = experiment.spec.workers
    gpus = worker_gpus(workers, ray.cluster_resources())
    threads = str(max(1, int(workers.cpus_per_worker)))
    remote = ray.remote(Worker).options(
        num_cpus=workers.cpus_per_worker,
        num_gpus=gpus,
        resources=dict(workers.resources),  # workers.resources: only nodes that carry them
        max_restarts=0,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}},
    )

    spec = WorkerSpec(
        base=space.base,
        parents=list(space.parents),
        suite=str(experiment.suite_path),
        plan=plan,
        calibration=str(experiment.calibration_path) if experiment.calibration_path else None,
        device="cuda" if gpus > 0 else "cpu",
        batch_size=workers.batch_size,
        dtype=workers.dtype,
        placement=workers.placement,
        token_budget=workers.token_budget,
    )

    def make(index: int) -> Any:
        return remote.remote(f"worker-{index}", spec)

    return make


def fit_workers(experiment: Experiment, requested: int, messages: list[str]) -> int:
    """The worker count the cluster can place at once: never more actors than its CPUs (and GPUs)
    hold, which would leave trials waiting forever; shrunk with a message, or refused."""
    import ray

    workers = experiment.spec.workers
    resources = ray.cluster_resources()
    fits = int(resources.get("CPU", 0) // workers.cpus_per_worker)
    gpus = worker_gpus(workers, resources)
    if gpus > 0:
        fits = min(fits, int(resources.get("GPU", 0) // gpus))
    has = f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"
    for name, amount in workers.resources.items():
        fits = min(fits, int(resources.get(name, 0) // amount))
        has += f", {resources.get(name, 0):g} {name}"
    if fits < 1:
        needs = f"workers.cpus_per_worker: {workers.cpus_per_worker:g}, GPUs per worker: {gpus:g}"
        needs += f", workers.resources: {dict(workers.resources)}" if workers.resources else ""
        raise ConfigError(
            f"the Ray cluster ({has}) cannot hold one worker ({needs}); lower them or raise "
            "ray.num_cpus (a cluster: ray start --num-cpus/--resources on its nodes)"
        )
    if fits < requested:
        messages.append(f"workers.count {requested} does not fit the cluster ({has}); running {fits}")
        return fits
    return requested
