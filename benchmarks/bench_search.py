"""Search overhead and worker utilization.

1. Optimizer + storage overhead per trial with a 180-gene space (per-layer TIES, 3 experts x
   30 layers x {weight, density}): ask, decode to a validated recipe, create the trial, write the
   result attributes, complete it, tell, checkpoint the optimizer. SQLite (run directory) and a
   throwaway PostgreSQL server (tests/pgserver.py; skipped, with the reason, where it cannot start).
   Reported as trials/s and as a share of a SmolLM2-135M trial (stated below).
2. Worker utilization: the real search loop (SearchDriver + Scheduler on a local Ray) with 4 workers
   (the 3 parents and the baseline first, then the search) whose evaluations take heterogeneous
   times (seeded log-normal, 0.2-1.5 s). Steady-state utilization: the workers' evaluation seconds
   over 4 x the time from the first evaluation's start to the last one's start (work was waiting
   all along); overall: over 4 x wall time, actor start-up and the final drain included.

Run: python benchmarks/bench_search.py [--trials 60] [--jobs 60]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

# A SmolLM2-135M trial: 100 anchor items at 0.67 items/s (README, fitness scorer benchmark on
# 2 CPU cores) = about 150 s, merge excluded.
SMOLLM2_TRIAL_SECONDS = 150.0
TASKS = ["arithmetic", "dates"]


def big_space(directory: Path):
    from evomerge.space import SearchSpace

    data = {
        "base": "models/base",
        "parents": ["models/e0", "models/e1", "models/e2"],
        "method": "ties",
        "num_layers": 30,
        "search": {"weight": {}, "density": {}},
        "fixed": {"normalize": True},
    }
    return SearchSpace.from_dict(data, root=directory)


def overhead(url: str | None, optimizer_name: str, n: int, directory: Path) -> float:
    """Seconds per trial of optimizer + storage work (no evaluation)."""
    from evomerge.optimizers import make_optimizer, save_checkpoint
    from evomerge.store import create_run

    space = big_space(directory)
    settings = {"optuna": {"population_size": 20}, "nevergrad": {"budget": n, "num_workers": 4}}
    optimizer = make_optimizer(optimizer_name, space.dim, len(TASKS), 0, settings.get(optimizer_name, {}))
    name = f"bench-{optimizer_name}-{time.time_ns()}"
    store = create_run(
        directory / name, name, TASKS, {"experiment": "bench"}, storage=url, sampler=optimizer.sampler()
    )
    optimizer.bind(store.study)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(n):
        candidate = optimizer.ask()
        save_checkpoint(optimizer, store.checkpoint_path)
        recipe = space.decode(candidate.genome).to_yaml()
        own = candidate.id if optimizer.owns_trials else None
        number = store.start_trial(candidate.genome, recipe, "search", "", candidate.id, own)
        values = rng.random(len(TASKS))
        result = {
            "estimates": dict(zip(TASKS, values.tolist(), strict=True)),
            "intervals": {t: [0.0, 1.0] for t in TASKS},
            "timings": {"merge": 1.0, "score": 2.0, "total": 3.0},
            "worker": "bench",
            "n_items": 100,
            "estimator": "mean",
        }
        store.complete_trial(number, result)
        optimizer.tell(candidate.id, values.tolist())
        save_checkpoint(optimizer, store.checkpoint_path)
    return (time.perf_counter() - start) / n


def utilization(n_jobs: int, directory: Path) -> tuple[float, float, float, float]:
    """(steady-state and overall utilization, wall s, mean evaluation s) of the real loop, 4 fake workers."""
    import ray

    from evomerge.experiment import Experiment
    from evomerge.runtime.driver import SearchDriver

    @ray.remote(num_cpus=0)
    class TimedWorker:
        """Evaluation time drawn from the recipe's hash (heterogeneous, seeded)."""

        def evaluate(self, recipe_yaml: str) -> dict:
            seed = int(hashlib.sha256(recipe_yaml.encode()).hexdigest()[:8], 16)
            seconds = float(np.clip(np.random.default_rng(seed).lognormal(-0.8, 0.6), 0.2, 1.5))
            began = time.time()
            time.sleep(seconds)
            value = (seed % 1000) / 1000
            return {
                "ok": True,
                "estimates": {t: value for t in TASKS},
                "intervals": {t: [0.0, 1.0] for t in TASKS},
                "timings": {"merge": 0.0, "score": seconds, "total": seconds, "began": began},
                "worker": "timed",
                "n_items": 1,
                "estimator": "mean",
            }

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "space.yaml").write_text(
        yaml.safe_dump(
            {"base": "m/b", "parents": ["m/e0", "m/e1", "m/e2"], "method": "ties", "num_layers": 30,
             "search": {"weight": {}, "density": {}}}
        )
    )  # fmt: skip
    (directory / "exp.yaml").write_text(
        yaml.safe_dump(
            {"name": "util", "space": "space.yaml", "suite": str(ROOT / "fitness" / "quickstart.yaml"),
             "optimizer": {"name": "cma"}, "budget": {"trials": n_jobs}, "workers": {"count": 4}}
        )
    )  # fmt: skip
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        driver = SearchDriver(
            Experiment.load(directory / "exp.yaml"),
            directory / "run",
            make_actor=lambda i: TimedWorker.remote(),
        )
        start = time.perf_counter()
        driver.run()
        wall = time.perf_counter() - start
    finally:
        ray.shutdown()
    from evomerge.store import open_run

    spans = [(t["began"], t["began"] + t["total"]) for t in
             (r.user_attrs["timings"] for r in open_run(directory / "run").trials())]  # fmt: skip
    # Steady state: from the first evaluation's start to the last one's start (work was waiting).
    low, high = min(a for a, _ in spans), max(a for a, _ in spans)
    steady = sum(max(0.0, min(b, high) - max(a, low)) for a, b in spans) / (4 * (high - low))
    overall = sum(b - a for a, b in spans) / (4 * wall)
    return steady, overall, wall, float(np.mean([b - a for a, b in spans]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--jobs", type=int, default=60)
    args = parser.parse_args()
    from pgserver import Unavailable, postgres_server

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        tmp = Path(tmp)
        dim = big_space(tmp).dim
        backends: list[tuple[str, str | None]] = [("sqlite", None)]
        pg_root = Path(tempfile.mkdtemp(prefix="evomerge-pg-"))
        try:
            with postgres_server(pg_root) as url:
                backends.append(("postgresql", url))
                rows = [
                    (backend, name, overhead(url_, name, args.trials, tmp))
                    for backend, url_ in backends
                    for name in ("cma", "optuna", "nevergrad", "random")
                ]
        except Unavailable as reason:
            print(f"PostgreSQL skipped: {reason}", file=sys.stderr)
            rows = [
                ("sqlite", name, overhead(None, name, args.trials, tmp))
                for name in ("cma", "optuna", "nevergrad", "random")
            ]
        print(f"\nOptimizer + storage overhead per trial, {dim} genes, {args.trials} trials each")
        print(f"(share of a SmolLM2-135M trial of ~{SMOLLM2_TRIAL_SECONDS:.0f} s; goal < 2%)\n")
        print("| storage | optimizer | ms/trial | trials/s | share of a SmolLM2 trial |")
        print("|---|---|---:|---:|---:|")
        for backend, name, seconds in rows:
            share = 100 * seconds / SMOLLM2_TRIAL_SECONDS
            print(f"| {backend} | {name} | {1000 * seconds:.1f} | {1 / seconds:.1f} | {share:.3f}% |")
        steady, overall, wall, mean_eval = utilization(args.jobs, tmp / "util")
        print(
            f"\nWorker utilization, 4 workers, {args.jobs} jobs, "
            f"evaluation 0.2-1.5 s (mean {mean_eval:.2f} s)\n"
        )
        print(
            "| workers | jobs | wall s | steady-state utilization (goal >= 90%) | overall (start-up, drain) |"
        )
        print("|---:|---:|---:|---:|---:|")
        print(f"| 4 | {args.jobs} | {wall:.1f} | {100 * steady:.1f}% | {100 * overall:.1f}% |")


if __name__ == "__main__":
    main()
