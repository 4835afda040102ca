"""Fitness suites: which banks make which objectives, how they are scored and estimated.

A suite is a YAML file (bank paths are relative to it):

    name: skills
    banks:
      arithmetic: {path: bigbench_arithmetic.jsonl, normalization: mean}
      dates: {path: bigbench_date_understanding.jsonl, normalization: mean, mode: choice}
    tasks:                       # the objectives, in this order
      arithmetic: {banks: [arithmetic], anchors: 50}
      dates: {banks: [dates], anchors: 25}
    estimator: gpirt             # see estimators.ESTIMATORS; auto: chosen on the calibration
    seed: 0

`normalization` is how a choice's log-likelihood is reduced: `mean` (per token, needed where
answers are tokenized digit by digit and so differ in length), `sum` (lm-eval's `acc`) or `chars`
(per character of the choice text: lm-eval's `acc_norm`). `mode: generate` scores
an item's `target` by greedy decoding and exact match instead of its choices; `mode: code` runs
the greedy completion of a code item (HumanEval: tests and entry point in `meta`) with its tests
in a sandbox, pass@1 (give it `max_new_tokens: 384` or so). `train` items exist to make experts
and are never scored. The item roles are kept apart here, in one place: `eval_ids` (split `eval`
or none) is the selection pool that calibration, anchors and the search read; `test_ids` (split
`test`) is read only by `audit` and `export --verify`.

A suite with code banks may set the sandbox's limits (`evomerge/fitness/banks/sandbox.py`):

    sandbox: {timeout_s: 10, cpu_s: 5, memory_mb: 1024, nproc: 32, fsize_mb: 16, network: isolate}

`network: allow` lets code run on a machine where no network namespace can be made (otherwise
the suite is refused there); where one can be made, the code is isolated either way.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evomerge.errors import ConfigError
from evomerge.fitness.banks.code import check_code_item
from evomerge.fitness.banks.items import Item, items_sha256, load_bank
from evomerge.fitness.banks.sandbox import Limits
from evomerge.yamltext import parse_yaml


class BankSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    normalization: Literal["mean", "sum", "chars"] = "mean"
    mode: Literal["choice", "generate", "code"] = "choice"
    max_new_tokens: int = Field(default=16, ge=1)


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    banks: list[str] = Field(min_length=1)
    anchors: int = Field(default=25, ge=1)


class SandboxSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float = Field(default=Limits.timeout_s, gt=0)
    cpu_s: int = Field(default=Limits.cpu_s, ge=1)
    memory_mb: int = Field(default=Limits.memory_mb, ge=64)
    nproc: int = Field(default=Limits.nproc, ge=4)
    fsize_mb: int = Field(default=Limits.fsize_mb, ge=1)
    network: Literal["isolate", "allow"] = "isolate"

    def limits(self) -> Limits:
        return Limits(self.timeout_s, self.cpu_s, self.memory_mb, self.nproc, self.fsize_mb)


class SuiteSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    banks: dict[str, BankSpec] = Field(min_length=1)
    tasks: dict[str, TaskSpec] = Field(min_length=1)
    estimator: str = "auto"  # fitness/selection/plan.py: checked on the calibration; the mean without one
    seed: int = 0
    sandbox: SandboxSpec = SandboxSpec()

    @model_validator(mode="after")
    def _tasks_name_known_banks(self) -> SuiteSpec:
        for task, spec in self.tasks.items():
            for bank in spec.banks:
                if bank not in self.banks:
                    raise ValueError(
                        f"task {task!r} names bank {bank!r}, which is not under 'banks' "
                        f"(defined: {sorted(self.banks)})"
                    )
        return self


class FitnessSuite:
    """A loaded suite: validated spec, its banks, and the eval items of every task."""

    def __init__(self, spec: SuiteSpec, root: Path, source: str = "<dict>") -> None:
        self.spec = spec
        self.root = root
        self.source = source
        self.name = spec.name
        self.tasks: list[str] = list(spec.tasks)
        self.estimator = spec.estimator
        self.seed = spec.seed
        self._banks = {name: load_bank(self.bank_path(name)) for name in spec.banks}
        self.items: dict[str, Item] = {}
        self._bank_of: dict[str, str] = {}
        for bank, items in self._banks.items():
            for item in items:
                if item.id in self.items:
                    raise ConfigError(
                        f"suite {source}: item id {item.id!r} occurs in banks {self._bank_of[item.id]!r} "
                        f"and {bank!r}; ids must be unique across a suite's banks"
                    )
                if spec.banks[bank].mode == "choice" and not item.is_choice:
                    raise ConfigError(
                        f"suite {source}: bank {bank!r} is scored by choices but item {item.id!r} "
                        "has none; set mode: generate for that bank"
                    )
                if spec.banks[bank].mode == "code":
                    check_code_item(item, f"suite {source}: bank {bank!r}")
                elif spec.banks[bank].mode == "generate" and item.target is None:
                    raise ConfigError(
                        f"suite {source}: bank {bank!r} has mode: generate but item {item.id!r} has no target"
                    )
                self.items[item.id] = item
                self._bank_of[item.id] = bank
        for task in self.tasks:
            if len(self.task_items(task)) < spec.tasks[task].anchors:
                raise ConfigError(
                    f"suite {source}: task {task!r} asks for {spec.tasks[task].anchors} anchors but has "
                    f"only {len(self.task_items(task))} eval items; lower 'anchors'"
                )

    @classmethod
    def load(cls, path: str | Path) -> FitnessSuite:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"fitness suite {str(path)!r} does not exist; give a suite YAML (e.g. fitness/skills.yaml)"
            )
        raw = parse_yaml(path.read_text(encoding="utf-8"), f"fitness suite {str(path)!r}")
        return cls.from_dict(raw, root=path.parent, source=str(path))

    @classmethod
    def from_dict(cls, raw: object, root: str | Path = ".", source: str = "<dict>") -> FitnessSuite:
        try:
            spec = SuiteSpec.model_validate(raw)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in error.errors()
            )
            raise ConfigError(f"fitness suite {source}: {problems}") from None
        return cls(spec, Path(root), source)

    def bank_path(self, bank: str) -> Path:
        return (self.root / self.spec.banks[bank].path).resolve()

    def bank_spec_of(self, item_id: str) -> BankSpec:
        return self.spec.banks[self._bank_of[item_id]]

    def n_anchors(self, task: str) -> int:
        return self.spec.tasks[task].anchors

    def task_items(self, task: str, split: str = "eval") -> list[Item]:
        """A task's items of one split, in bank order (items without a split count as eval)."""
        if task not in self.spec.tasks:
            raise ConfigError(f"unknown task {task!r}; suite {self.name!r} has {self.tasks}")
        return [item for bank in self.spec.tasks[task].banks for item in self._bank_items(bank, split)]

    def _bank_items(self, bank: str, split: str) -> list[Item]:
        """A bank's items of one split (items without a split count as eval)."""
        return [item for item in self._banks[bank] if (item.split or "eval") == split]

    @cached_property
    def eval_ids(self) -> dict[str, list[str]]:
        """The selection pool of every task: what calibration, anchors and the search may read."""
        return self.split_ids("eval")

    @cached_property
    def test_ids(self) -> dict[str, list[str]]:
        """The held-out items of every task (empty lists for a bank without a test split)."""
        return self.split_ids("test")

    def split_ids(self, split: str) -> dict[str, list[str]]:
        return {task: [item.id for item in self.task_items(task, split)] for task in self.tasks}

    def has_test_split(self) -> bool:
        return all(self.test_ids.values())

    def bank_hashes(self) -> dict[str, str]:
        """sha256 of every bank's evaluation items, so a calibration made on other items is detected.

        Only the items a calibration reads count: a bank whose test split grows (or whose train
        items change) keeps its calibrations.
        """
        return {bank: items_sha256(self._bank_items(bank, "eval")) for bank in self._banks}
