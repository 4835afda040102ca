"""The ask/tell interface every optimizer speaks, over a frozen parametrization: the unit cube.

An optimizer hands out candidates (an id and a genome in [0, 1]^dim) and is told, per id, either the
objective values (all maximized, in objective order) or `None` for a failed candidate. Asks may be
outstanding asynchronously; a candidate may be told in any order. Optimizers whose state does not
live in the run storage are checkpointed by pickling them (`save_checkpoint`), so a resumed search
continues from exactly the state of the last checkpoint.
"""

from __future__ import annotations

import pickle
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from evomerge.atomic import write_atomic
from evomerge.errors import ConfigError, StorageError
from evomerge.registry import Registry


@dataclass(frozen=True)
class Candidate:
    """One point to evaluate: `id` is the optimizer's own handle for the later `tell`."""

    id: int
    genome: tuple[float, ...]


class Optimizer(ABC):
    """Ask/tell over [0, 1]^dim, maximizing `n_objectives` values."""

    # True when the optimizer creates the study's trials itself (a candidate's id is its trial number).
    owns_trials: ClassVar[bool] = False

    def __init__(self, dim: int, n_objectives: int, seed: int) -> None:
        if dim < 1:
            raise ConfigError(f"optimizer: the search space has {dim} genes; it needs at least one")
        if n_objectives < 1:
            raise ConfigError(f"optimizer: {n_objectives} objectives; the suite needs at least one task")
        self.dim = dim
        self.n_objectives = n_objectives
        self.seed = seed
        self._next_id = 0
        self._pending: dict[int, Candidate] = {}
        self._starts: list[tuple[float, ...]] = []  # known good points to hand out first (`suggest`)

    # ----- the interface ---------------------------------------------------------------------
    def suggest(self, genome: Sequence[float]) -> None:
        """Hand out `genome` (a known recipe's point) before any proposal of the optimizer's own; it
        is evaluated and told like any candidate."""
        point = tuple(float(g) for g in genome)
        if len(point) != self.dim or not all(0.0 <= g <= 1.0 for g in point):
            raise ConfigError(f"suggest: a start point needs {self.dim} genes in [0, 1], got {list(point)}")
        self._starts.append(point)

    def ask(self) -> Candidate:
        start = self._starts.pop(0) if getattr(self, "_starts", None) else None
        proposed = self._propose() if start is None else self._propose_start(start)
        genome = np.clip(np.asarray(proposed, dtype=float), 0.0, 1.0)  # bounds policy: clip
        candidate = Candidate(self._next_id, tuple(float(g) for g in genome))
        self._next_id += 1
        self._pending[candidate.id] = candidate
        return candidate

    def tell(self, candidate_id: int, values: Sequence[float] | None) -> None:
        """Report a candidate's objective values (maximized), or `None` when it failed."""
        if candidate_id not in self._pending:
            raise ValueError(f"tell: candidate {candidate_id} was not asked or was already told")
        if values is not None:
            values = [float(v) for v in values]
            if len(values) != self.n_objectives or not all(np.isfinite(values)):
                raise ValueError(
                    f"tell: candidate {candidate_id} got values {values}; "
                    f"expected {self.n_objectives} finite numbers (or None for a failure)"
                )
        self._observe(self._pending.pop(candidate_id), values)

    def pending(self) -> list[Candidate]:
        """Candidates asked and not yet told (what a resumed search must evaluate or re-tell)."""
        return list(self._pending.values())

    def renew(self, candidate: Candidate) -> Candidate:
        """A pending candidate whose evaluation was cut short, to evaluate again (same genome).

        By default the same candidate; an optimizer that owns the trials gives it a fresh one."""
        return candidate

    def bind(self, study: Any) -> None:
        """Attach the run's Optuna study (only optimizers that keep their state there use it)."""
        return None

    def sampler(self) -> Any:
        """The Optuna sampler the run's study should be opened with (a cheap one by default)."""
        import optuna

        return optuna.samplers.RandomSampler(seed=self.seed)

    # ----- what each optimizer provides ------------------------------------------------------
    def _propose_start(self, start: tuple[float, ...]) -> Sequence[float]:
        """A start point handed out as the next candidate (optimizers note its id where needed)."""
        return start

    @abstractmethod
    def _propose(self) -> Sequence[float]:
        """A new genome (it may leave the cube slightly; `ask` clips it)."""

    @abstractmethod
    def _observe(self, candidate: Candidate, values: list[float] | None) -> None:
        """Learn from one told candidate."""


OPTIMIZERS: Registry[type[Optimizer]] = Registry("optimizer")


def make_optimizer(name: str, dim: int, n_objectives: int, seed: int, settings: dict[str, Any]) -> Optimizer:
    """Build a registered optimizer; an unknown setting is a ConfigError naming the accepted ones."""
    import inspect

    cls = OPTIMIZERS.get(name)
    accepted = [
        p
        for p in inspect.signature(cls.__init__).parameters
        if p not in ("self", "dim", "n_objectives", "seed")
    ]
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise ConfigError(
            f"optimizer.settings: unknown setting(s) {', '.join(unknown)} for optimizer {name!r}; "
            f"accepted: {', '.join(accepted) or '(none)'}"
        )
    return cls(dim, n_objectives, seed, **settings)


class Scalarizer:
    """Turns several maximized objectives into one loss to minimize, for single-objective optimizers.

    `weighted`: loss = -sum_i w_i v_i. `chebyshev`: loss = max_i w_i (z_i - v_i), z the ideal point
    (best value seen per objective), which also reaches non-convex parts of the front
    (Miettinen, Nonlinear Multiobjective Optimization, 1999, sec. 3.4). A failed candidate gets a
    penalty: the worst loss seen so far plus one, so it ranks below every real result.
    """

    METHODS = ("weighted", "chebyshev")

    def __init__(self, n_objectives: int, method: str = "weighted", weights: Sequence[float] | None = None):
        if method not in self.METHODS:
            raise ConfigError(
                f"optimizer.settings.scalarization: {method!r} is not one of {', '.join(self.METHODS)}"
            )
        w = np.ones(n_objectives) if weights is None else np.asarray(weights, dtype=float)
        if w.shape != (n_objectives,) or np.any(w < 0) or not np.any(w > 0):
            raise ConfigError(
                f"optimizer.settings.weights: {list(map(float, w.ravel()))} must be {n_objectives} "
                "non-negative numbers, at least one positive (one per task, in suite order)"
            )
        self.method = method
        self.weights = w / w.sum()
        self.ideal = np.full(n_objectives, -np.inf)
        self.worst = -np.inf

    def observe(self, values: Sequence[float]) -> None:
        self.ideal = np.maximum(self.ideal, np.asarray(values, dtype=float))

    def loss(self, values: Sequence[float] | None) -> float:
        if values is None:
            return self.worst + 1.0 if np.isfinite(self.worst) else 1.0
        v = np.asarray(values, dtype=float)
        if self.method == "weighted":
            loss = float(-(self.weights @ v))
        else:
            loss = float(np.max(self.weights * (self.ideal - v)))
        self.worst = max(self.worst, loss)
        return loss


def checkpoint_bytes(optimizer: Optimizer) -> bytes:
    """The optimizer, pickled (what a run stores to resume exactly)."""
    return pickle.dumps(optimizer, protocol=pickle.HIGHEST_PROTOCOL)


def optimizer_from_bytes(data: bytes, where: str) -> Optimizer:
    """The optimizer of `checkpoint_bytes`, read back from a checkpoint this run wrote itself."""
    try:
        optimizer = pickle.loads(data)
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as error:
        raise StorageError(
            f"optimizer checkpoint {where}: cannot be read ({error}); the run cannot resume exactly"
        ) from error
    if not isinstance(optimizer, Optimizer):
        raise StorageError(
            f"optimizer checkpoint {where}: holds {type(optimizer).__name__}, not an optimizer"
        )
    return optimizer


def save_checkpoint(optimizer: Optimizer, path: Path) -> None:
    """Pickle the optimizer atomically (its owner's alone: a pickle is code to whoever loads it)."""
    write_atomic(path, checkpoint_bytes(optimizer), mode=0o600)


def load_checkpoint(path: Path) -> Optimizer:
    """The optimizer pickled by `save_checkpoint` (a file this run wrote itself)."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise StorageError(
            f"optimizer checkpoint {path}: cannot be read ({error}); the run cannot resume exactly"
        ) from error
    return optimizer_from_bytes(data, str(path))
