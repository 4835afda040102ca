"""Merge methods: small pure functions over the tensors of one weight, registered by name.

Each method declares its parameters (`ParamSpec`, mergekit's names and semantics); the
declaration is what recipe validation and the search space's genes read. Methods compute in
the tensors' dtype (float32 in practice) and return the merged tensor.

Task-vector methods (mergekit's "generalized task arithmetic") share one pipeline:
delta_i = model_i - base; sparsify each delta; weight; optionally keep only the entries that
agree with the majority sign (TIES, Yadav et al. 2023); sum, optionally divide by the summed
weights ("normalize"), scale by lambda, add to the base.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from evomerge.errors import CandidateError, ConfigError
from evomerge.merge import kernels
from evomerge.registry import Registry


@dataclass(frozen=True)
class ParamSpec:
    """One declared merge parameter (mergekit name; scope 'model' = per model, 'global' = recipe-wide)."""

    name: str
    scope: Literal["model", "global"]
    kind: Literal["float", "bool"]
    default: float | bool | None = None
    low: float | None = None
    high: float | None = None
    search_low: float | None = None
    search_high: float | None = None

    def check(self, value: object, where: str) -> None:
        """Raise ConfigError (a ValueError) when `value` is not a valid setting of this parameter."""
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: {self.name!r} must be true or false, got {value!r}")
            return
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{where}: {self.name!r} must be a finite number, got {value!r}")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ConfigError(
                f"{where}: {self.name!r} = {value} is out of range [{self.low}, {self.high}]; "
                f"use a value inside it"
            )


class DeltaStats:
    """What a candidate merge needs from one model's tensor that does not depend on the candidate.

    The task vector, its sorted magnitudes (a TIES/breadcrumbs density is then an index lookup, not
    a top-k), their running sums (the L1 norm kept by any magnitude band), DELLA's row ranks and the
    uniform draws of the random methods are computed on first use and kept, so a resident parent
    (LiveMerger) pays for them once and a streamed tensor only when needed.
    """

    def __init__(self, tensor: Tensor, base: Tensor) -> None:
        self.tensor = tensor
        self.base = base
        self._delta: Tensor | None = None
        self._sorted_abs: Tensor | None = None
        self._cumulative_abs: Tensor | None = None
        self._row_rank: Tensor | None = None
        self._uniform: tuple[int, Tensor] | None = None

    @property
    def delta(self) -> Tensor:
        if self._delta is None:
            self._delta = self.tensor - self.base
        return self._delta

    @property
    def sorted_abs(self) -> Tensor:
        """|delta| flattened, ascending: the k-th magnitude is a lookup, not a top-k."""
        if self._sorted_abs is None:
            self._sorted_abs = self.delta.abs().flatten().sort().values
        return self._sorted_abs

    def l1_between(self, low: float, high: float) -> tuple[float, float]:
        """(L1 norm of the entries with low <= |delta| <= high, L1 norm of all entries), in float64."""
        if self._cumulative_abs is None:
            self._cumulative_abs = torch.cat(
                [self.sorted_abs.new_zeros(1, dtype=torch.float64), self.sorted_abs.double().cumsum(0)]
            )
        values, sums = self.sorted_abs, self._cumulative_abs
        first = int(torch.searchsorted(values, low))
        last = int(torch.searchsorted(values, high, right=True))
        return float(sums[max(last, first)] - sums[first]), float(sums[-1])

    @property
    def row_rank(self) -> Tensor:
        """Rank of |delta| within its row (last dim; whole tensor for vectors), scaled to [0, 1]."""
        if self._row_rank is None:
            rows = self.delta.abs().reshape(-1, self.delta.shape[-1]) if self.delta.dim() > 1 else None
            rows = rows if rows is not None else self.delta.abs().reshape(1, -1)
            ranks = rows.argsort(dim=1).argsort(dim=1).to(self.delta.dtype)
            width = max(rows.shape[1] - 1, 1)
            self._row_rank = (ranks / width).reshape(self.delta.shape)
        return self._row_rank

    def uniform(self, seed: int) -> Tensor:
        """Uniform [0, 1) draws, one per entry, from `seed` (the last seed's draws are kept). Half
        precision (steps of at most 2^-11, ample for a keep probability) halves the memory the
        fused kernel reads for them and what a resident parent keeps."""
        if self._uniform is None or self._uniform[0] != seed:
            delta = self.delta
            generator = torch.Generator(device=delta.device).manual_seed(seed)
            draws = torch.rand(delta.shape, generator=generator, device=delta.device, dtype=torch.float16)
            self._uniform = (seed, draws)
        return self._uniform[1]


@dataclass
class TensorInputs:
    """Everything a method sees for one output tensor."""

    name: str
    base: Tensor | None
    tensors: list[Tensor]  # the merged models' tensors (the base excluded for base-relative methods)
    model_params: list[dict[str, Any]]  # resolved per-model parameters, aligned with `tensors`
    global_params: dict[str, Any]
    stats: list[DeltaStats] = field(default_factory=list)  # aligned with `tensors` when a base exists
    seeds: list[int] | None = None  # per merged model, for the random methods (aligned with `tensors`)
    out: Tensor | None = None  # where to write the result (a live parameter); a new tensor if None

    def output(self) -> Tensor:
        reference = self.base if self.base is not None else self.tensors[0]
        return self.out if self.out is not None else torch.empty_like(reference)


@dataclass(frozen=True)
class MergeMethod:
    name: str
    params: tuple[ParamSpec, ...]
    needs_base: bool
    random: bool
    fn: Callable[[TensorInputs], kernels.KernelCall]  # what to compute; kernels.py computes it
    n_models: int | None = None  # exact number of merged models (besides the base), if fixed

    def param(self, name: str) -> ParamSpec:
        for spec in self.params:
            if spec.name == name:
                return spec
        raise ConfigError(f"merge method {self.name!r} has no parameter {name!r}")

    def call(self, inputs: TensorInputs) -> kernels.KernelCall:
        """The fused-kernel call that merges this tensor (run alone, or stacked with its layer peers)."""
        return self.fn(inputs)

    def merge(self, inputs: TensorInputs) -> Tensor:
        return kernels.run(inputs.output(), self.fn(inputs))


METHODS: Registry[MergeMethod] = Registry("merge method")

# --- parameter declarations ----------------------------------------------------------------

WEIGHT = ParamSpec("weight", "model", "float", None, search_low=0.0, search_high=1.0)
DENSITY = ParamSpec("density", "model", "float", 1.0, 0.0, 1.0, 0.1, 1.0)
GAMMA = ParamSpec("gamma", "model", "float", 0.01, 0.0, 1.0, 0.0, 0.1)
EPSILON = ParamSpec("epsilon", "model", "float", 0.15, 0.0, 1.0, 0.01, 0.2)
LAMBDA = ParamSpec("lambda", "global", "float", 1.0, search_low=0.5, search_high=1.5)
T = ParamSpec("t", "global", "float", None, 0.0, 1.0, 0.0, 1.0)


def _normalize(default: bool) -> ParamSpec:
    return ParamSpec("normalize", "global", "bool", default)


def _rescale(default: bool) -> ParamSpec:
    return ParamSpec("rescale", "global", "bool", default)


# --- sparsification (one task vector at a time) ---------------------------------------------
# A sparsifier turns one model's parameters into how the fused kernel keeps its task vector:
# (kind, parameter row, uniform draws, row ranks). The kernel then does every pass at once.


@dataclass(frozen=True)
class Sparsity:
    kind: str
    values: dict[str, float] = field(default_factory=dict)  # kernels.parameter_row keywords
    uniform: Tensor | None = None
    rank: Tensor | None = None


# density >= 1 keeps every entry, expressed in the method's own kind (the neutral parameters keep
# each entry exactly), so one recipe never mixes kernel structures (each would compile anew).
KEEP_ALL = Sparsity(kernels.KEEP_ALL)
FULL_BAND = Sparsity(kernels.BAND)
EMPTY_BAND = Sparsity(kernels.BAND, {"lo": math.inf})


def _band(stats: DeltaStats, low: float, high: float, rescale: bool) -> Sparsity:
    """Keep low <= |delta| <= high; with rescale, times L1(delta) / L1(kept) (the norm is kept)."""
    scale = 1.0
    if rescale:
        kept, total = stats.l1_between(low, high)
        scale = total / kept if kept >= 1e-7 else 1.0
    return Sparsity(kernels.BAND, {"lo": low, "hi": high, "scale": scale})


def _magnitude(stats: DeltaStats, p: dict[str, Any], _: int | None) -> Sparsity:
    """TIES trim: keep the top `density` fraction of entries by magnitude."""
    density, n = p["density"], stats.delta.numel()
    if density >= 1:
        return FULL_BAND
    k = int(density * n)
    if k == 0:
        return EMPTY_BAND
    return _band(stats, float(stats.sorted_abs[n - k]), math.inf, p["rescale"])


def _magnitude_outliers(stats: DeltaStats, p: dict[str, Any], _: int | None) -> Sparsity:
    """Model Breadcrumbs (Davari & Belilovsky 2023): drop the largest `gamma` fraction and the
    smallest entries so that a `density` fraction remains."""
    density, n = p["density"], stats.delta.numel()
    if density >= 1:
        return FULL_BAND
    n_top = int(p["gamma"] * n)
    n_bottom = n - int(density * n) - n_top
    if n_bottom < 0:  # gamma larger than what density leaves: cut less from the top
        n_top += n_bottom
        n_bottom = 0
    if n - n_top <= n_bottom:
        return EMPTY_BAND
    low, high = float(stats.sorted_abs[n_bottom]), float(stats.sorted_abs[n - n_top - 1])
    return _band(stats, low, high, p["rescale"])


def _random_drop(stats: DeltaStats, p: dict[str, Any], seed: int | None) -> Sparsity:
    """DARE (Yu et al. 2024): keep each entry with probability `density`, rescale by 1/density."""
    density = min(p["density"], 1.0)  # 1: every draw in [0, 1) is kept, times 1
    assert seed is not None
    scale = 1.0 / density if p["rescale"] and density > 0 else 1.0
    return Sparsity(kernels.RANDOM, {"density": density, "scale": scale}, stats.uniform(seed))


def _magnitude_prune(stats: DeltaStats, p: dict[str, Any], seed: int | None) -> Sparsity:
    """DELLA MAGPRUNE (Deep et al. 2024): keep probability rises linearly with the entry's magnitude
    rank in its row, from density - epsilon to density + epsilon; survivors rescaled by 1/p."""
    density, epsilon = p["density"], p["epsilon"]
    if density >= 1:  # keep probability 1 everywhere: every entry kept, divided by 1
        density, epsilon = 1.0, 0.0
    elif density - epsilon <= 0 or density + epsilon > 1:
        raise ConfigError(
            f"della needs 0 < density - epsilon and density + epsilon <= 1, got density={density}, "
            f"epsilon={epsilon}; lower epsilon"
        )
    assert seed is not None
    kind = kernels.RANKED_RESCALED if p["rescale"] else kernels.RANKED
    return Sparsity(kind, {"density": density, "epsilon": epsilon}, stats.uniform(seed), stats.row_rank)


Sparsifier = Callable[[DeltaStats, dict[str, Any], int | None], Sparsity]


def _task_arithmetic(
    sparsify: Sparsifier | None, sign_consensus: bool
) -> Callable[[TensorInputs], kernels.KernelCall]:
    """Task arithmetic (Ilharco et al. 2023) with optional sparsification and TIES sign election:
    base + lambda * sum_i w_i m_i d_i / divisor, with m_i the sign-agreement mask (all ones without
    consensus) and divisor = sum_i w_i m_i when normalizing; one fused kernel (kernels.py)."""

    def merge(inputs: TensorInputs) -> kernels.KernelCall:
        assert inputs.base is not None  # guaranteed by needs_base
        normalize = inputs.global_params["normalize"]
        weights = [float(p["weight"]) for p in inputs.model_params]
        seeds = inputs.seeds or [None] * len(weights)
        kept = [
            sparsify(stats, inputs.global_params | params, seed) if sparsify else KEEP_ALL
            for stats, params, seed in zip(inputs.stats, inputs.model_params, seeds, strict=True)
        ]
        if not sign_consensus and normalize:  # fold the normalization into the coefficients
            total = sum(weights)
            weights = [w / (1.0 if abs(total) < 1e-8 else total) for w in weights]
        lam = float(inputs.global_params["lambda"])
        return kernels.KernelCall(
            operands=[stats.delta for stats in inputs.stats],
            rows=[kernels.parameter_row(w, lam=lam, **k.values) for w, k in zip(weights, kept, strict=True)],
            base=inputs.base,
            kinds=tuple(k.kind for k in kept),
            consensus=sign_consensus,
            normalize=normalize,
            uniforms=[k.uniform for k in kept],
            ranks=[k.rank for k in kept],
        )

    return merge


def _linear(inputs: TensorInputs) -> kernels.KernelCall:
    """Weighted average of the models' weights (Wortsman et al. 2022, model soups)."""
    weights = [float(p["weight"]) for p in inputs.model_params]
    scale = 1.0
    if inputs.global_params["normalize"]:
        total = sum(weights)
        if total == 0:
            raise CandidateError(
                f"linear merge of {inputs.name!r}: the weights sum to 0, cannot normalize; "
                f"change the weights or set normalize: false"
            )
        scale = 1.0 / total
    return _weighted(inputs.tensors, [w * scale for w in weights])


def _weighted(tensors: list[Tensor], coefficients: list[float]) -> kernels.KernelCall:
    return kernels.KernelCall(operands=tensors, rows=[kernels.parameter_row(c) for c in coefficients])


def _slerp(inputs: TensorInputs, dot_threshold: float = 0.9995, eps: float = 1e-8) -> kernels.KernelCall:
    """Spherical interpolation from the base (t=0) to the other model (t=1) (Shoemake 1985);
    falls back to linear interpolation for nearly parallel tensors."""
    assert inputs.base is not None
    t = float(inputs.global_params["t"])
    v0, v1 = inputs.base, inputs.tensors[0]
    n0, n1 = v0.norm(), v1.norm()
    u0 = v0 / n0 if n0 > eps else v0
    u1 = v1 / n1 if n1 > eps else v1
    dot = float((u0 * u1).sum())
    if abs(dot) > dot_threshold:
        c0, c1 = 1 - t, t
    else:
        theta = math.acos(dot)
        c0, c1 = math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)
    return _weighted([v0, v1], [c0, c1])


# --- the registry ---------------------------------------------------------------------------

METHODS.add("linear", MergeMethod("linear", (WEIGHT, _normalize(True)), False, False, _linear))
METHODS.add("slerp", MergeMethod("slerp", (T,), True, False, _slerp, n_models=1))


def _add_task_method(
    name: str,
    sparsify: Sparsifier | None,
    consensus: bool,
    normalize: bool,
    rescale: bool | None,
    extra: tuple[ParamSpec, ...] = (),
) -> None:
    params = (WEIGHT,)
    if sparsify is not None:
        params += (DENSITY, *extra, _rescale(bool(rescale)))
    params += (_normalize(normalize), LAMBDA)
    random = sparsify in (_random_drop, _magnitude_prune)
    METHODS.add(name, MergeMethod(name, params, True, random, _task_arithmetic(sparsify, consensus)))


_add_task_method("task_arithmetic", None, False, False, None)
_add_task_method("ties", _magnitude, True, True, False)
_add_task_method("dare_ties", _random_drop, True, False, True)
_add_task_method("dare_linear", _random_drop, False, False, True)
_add_task_method("breadcrumbs", _magnitude_outliers, False, False, False, (GAMMA,))
_add_task_method("breadcrumbs_ties", _magnitude_outliers, True, False, False, (GAMMA,))
_add_task_method("della", _magnitude_prune, True, True, True, (EPSILON,))
_add_task_method("della_linear", _magnitude_prune, False, False, True, (EPSILON,))
