"""An experiment: search space + fitness suite + optimizer + budget + workers + storage + seed.

name: quickstart
space: ../search_spaces/quickstart_demo.yaml   # paths are relative to this file
suite: ../fitness/quickstart.yaml
calibration: null                              # a calibration directory, for IRT estimators
optimizer: {name: cma, settings: {popsize: 8}}    # optional start: [baseline, recipes/x.yaml]
budget: {trials: 24, minutes: 10}               # stop at whichever comes first (also `items`:
                                               # items scored); all count the whole run, over
                                               # --resume sessions
promotion: {rungs: [40, all], eta: 3, share: 0.5}  # optional: re-score promising trials on more
                                               # selection-pool items (evomerge/runtime/promotion.py)
workers: {count: 2, cpus_per_worker: 1, batch_size: 16}
ray: {num_cpus: 2}                             # the embedded local Ray
storage: null                                  # default: SQLite in the run directory
seed: 0
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evomerge.errors import ConfigError
from evomerge.yamltext import parse_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptimizerSpec(_Strict):
    name: str = "cma"
    settings: dict[str, Any] = Field(default_factory=dict)
    # Known recipes evaluated as the first search candidates (and learned from like any other):
    # "uniform" (the space's method with weights 1/n and default parameters), "baseline" (the
    # run's baseline recipe) or recipe YAML paths relative to the experiment file. A baseline or
    # recipe must be a point of the search space (its method, values within the search bounds).
    start: list[str] = Field(default_factory=list)


class Budget(_Strict):
    trials: int | None = Field(default=None, ge=1)
    minutes: float | None = Field(default=None, gt=0)
    # Items scored by the whole run: search trials, parents, baseline and promotion rungs alike, so
    # optimizers (and promotion settings) are compared at equal compute.
    items: int | None = Field(default=None, ge=1)
    # Stop (exit 1, with the last reason) after this many search trials failed in a row: a broken
    # setup should not burn the whole budget. None: never.
    max_consecutive_failures: int | None = Field(default=10, ge=1)

    @model_validator(mode="after")
    def _some_limit(self) -> Budget:
        if self.trials is None and self.minutes is None and self.items is None:
            raise ValueError("set 'trials', 'minutes' and/or 'items'; a search needs a stopping point")
        return self


class Workers(_Strict):
    count: int = Field(default=1, ge=1)
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float | None = Field(default=None, ge=0)  # None: 1 where the cluster has GPUs
    batch_size: int = Field(default=16, ge=1)
    # Padded tokens per scoring batch (items per batch then vary with their length, at most
    # batch_size). None: 16384 on a GPU, where batches are sized by memory; a fixed batch_size on CPU.
    token_budget: int | None = Field(default=None, ge=16)
    # The live model's dtype for scoring (merges are computed in the recipe's dtype, float32 in the
    # search spaces). auto: bfloat16 on a GPU, else the checkpoint's own dtype. bfloat16 scores ~2-3x
    # faster on CPUs with AVX512-BF16/AMX and on GPUs, at a small cost in log-likelihood precision;
    # ~5x slower on CPUs without those units (the search says so: preflight.dtype_warning).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Where each worker holds the base and parents (evomerge/merge/memory.py): auto picks the
    # cheapest that fits the free memory of the worker's device: device, then host, then disk.
    placement: Literal["auto", "device", "host", "disk"] = "auto"
    # An evaluation running longer fails (its worker is replaced). None: no limit.
    evaluation_timeout_s: float | None = Field(default=1800.0, gt=0)
    # Custom Ray resources each worker needs, e.g. {evomerge_worker: 1}: workers then run only on
    # the nodes started with them (`ray start --resources='{"evomerge_worker": 2}'`).
    resources: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)


class Promotion(_Strict):
    """Multi-fidelity racing (see evomerge/runtime/promotion.py): a completed trial is re-scored on
    more items of the selection pool (the eval items that are no anchors) in rungs."""

    # Items per task of each rung, growing (capped at the task's pool); "all": the whole pool.
    rungs: list[Annotated[int, Field(ge=1)] | Literal["all"]] = Field(min_length=1)
    # Promote the best 1/eta of the trials that reached a rung (ASHA).
    eta: float = Field(default=3.0, gt=1)
    # Promotions get at most this fraction of the items scored (the rest go to new search trials).
    share: float = Field(default=0.5, gt=0, lt=1)
    # One-sided level of the paired test a trial must pass to replace the incumbent at the top rung.
    # 0.3, measured (benchmarks/bench_promotion.py, 400 simulated searches of 6000 items): at 0.05
    # the first trial to reach the top rung held on, and the pick was 1.3 points above the baseline
    # (28% of runs below it); at 0.3, 2.4 points (19%); no test at all, 2.6 points (17%).
    alpha: float = Field(default=0.3, gt=0, lt=0.5)
    # The final race: once the items (or minutes) left fall to this fraction of the budget, no new
    # trial starts while a challenger is left; the rest takes challengers (trials whose estimate at
    # their rung beats the incumbent's there) up to the top rung, past `share` and eta. 0: no race.
    # benchmarks/bench_promotion.py (300 simulated searches, rungs 30 and 139 items per task): at 6000
    # items the pick is 2.93 points above the baseline with the race on the last 0.1 (16% of runs
    # below it), 2.59 at 0.2, 2.53 at 0.3 and 2.13 without (22%); at 3000, -1.45 with 0.1 and without.
    race: float = Field(default=0.1, ge=0, lt=1)
    # Task weights of the incumbent's weighted mean accuracy (all 1 by default).
    weights: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _growing(self) -> Promotion:
        sizes = [10**9 if r == "all" else r for r in self.rungs]
        if any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)):
            raise ValueError(f"rungs {self.rungs} must grow (e.g. [40, 150, all])")
        return self


class RaySpec(_Strict):
    num_cpus: int | None = Field(default=None, ge=1)


class ExperimentSpec(_Strict):
    name: str
    space: str
    suite: str
    calibration: str | None = None
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    budget: Budget
    workers: Workers = Field(default_factory=Workers)
    promotion: Promotion | None = None
    ray: RaySpec = Field(default_factory=RaySpec)
    storage: str | None = None
    seed: int = 0


class Experiment:
    """A validated experiment with its paths resolved (relative to the experiment file)."""

    def __init__(self, spec: ExperimentSpec, root: Path, source: str, text: str) -> None:
        from evomerge.optimizers import OPTIMIZERS

        self.spec = spec
        self.source = source
        self.text = text
        self.root = root
        OPTIMIZERS.get(spec.optimizer.name)  # an unknown optimizer fails here, listing the known ones
        self.space_path = self._existing(spec.space, "space")
        self.suite_path = self._existing(spec.suite, "suite")
        self.calibration_path = self._existing(spec.calibration, "calibration") if spec.calibration else None

    def _existing(self, value: str, key: str) -> Path:
        path = (self.root / value).resolve()
        if not path.exists():
            raise ConfigError(
                f"{self.source}: {key}: {value!r} does not exist (resolved to {path}); fix the path"
            )
        return path

    @property
    def name(self) -> str:
        return self.spec.name

    @classmethod
    def load(cls, path: str | Path) -> Experiment:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"experiment {str(path)!r} does not exist; pass a YAML file under experiments/")
        text = path.read_text()
        return cls.from_text(text, root=path.parent, source=str(path))

    @classmethod
    def from_text(cls, text: str, root: Path, source: str = "<experiment>") -> Experiment:
        data = parse_yaml(text, f"experiment {source}")
        if not isinstance(data, dict):
            raise ConfigError(f"experiment {source}: expected a mapping, got {type(data).__name__}")
        try:
            spec = ExperimentSpec.model_validate(data)
        except ValidationError as error:
            parts = []
            for item in error.errors():
                where = ".".join(str(p) for p in item["loc"]) or "experiment"
                msg = "unknown key; remove it" if item["type"] == "extra_forbidden" else item["msg"]
                parts.append(f"{where}: {msg}")
            raise ConfigError(f"experiment {source}: " + "; ".join(parts)) from None
        return cls(spec, root, source, text)

    def with_overrides(self, **changes: Any) -> Experiment:
        """A copy with top-level fields replaced (CLI --seed, --storage); budget.trials via `trials`."""
        data = self.spec.model_dump()
        trials = changes.pop("trials", None)
        if trials is not None:
            data["budget"]["trials"] = trials
        data.update({k: v for k, v in changes.items() if v is not None})
        return Experiment(ExperimentSpec.model_validate(data), self.root, self.source, self.text)
