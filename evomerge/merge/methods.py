"""Merge methods: small pure functions over the tensors of one weight, registered by name.

Each method declares its parameters (`ParamSpec`, mergekit's names and semantics); the
declaration is what recipe validation and the search space's genes read. Methods read the
tensors in their storage dtype and compute in the recipe's `dtype` (`TensorInputs.compute_dtype`)
inside the fused kernels.

Task-vector methods (mergekit's "generalized task arithmetic") share one pipeline:
delta_i = model_i - base; sparsify each delta; weight; optionally keep only the entries that
agree with the majority sign (TIES, Yadav et al. 2023); sum, optionally divide by the summed
weights ("normalize"), scale by lambda, add to the base.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator
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


class MagnitudeIndex:
    """A few KB that make an exact magnitude selection cheap, instead of a sorted copy of |delta|.

    `edges` are <= 257 ascending values of |delta| (quantiles of a strided sample, edges[0] = 0);
    `below[j]` counts the entries with |delta| < edges[j] and `upto[j]` those with |delta| <= edges[j]
    (below[-1] = upto[-1] = all entries), from one pass over the tensor. The entry at a rank then
    either sits on an edge (answered from the counts, no pass: in bf16, where a few values hold most
    entries, nearly always) or strictly between two edges, in a bracket of ~1/256 of the entries that
    one pass per candidate selects and `kthvalue` finishes exactly.
    """

    BUCKETS = 256
    SAMPLE = 1 << 16

    def __init__(self, edges: Tensor, below: list[int], upto: list[int], total_l1: float) -> None:
        self.edges = edges
        self.below = below
        self.upto = upto
        self.total_l1 = total_l1

    @classmethod
    def build(cls, stats: DeltaStats) -> MagnitudeIndex:
        flat_tensor, flat_base = stats.tensor.reshape(-1), stats.base.reshape(-1)
        stride = max(1, flat_tensor.numel() // cls.SAMPLE)
        sample = (flat_tensor[::stride].to(stats.compute) - flat_base[::stride].to(stats.compute)).abs()
        sample = sample[~sample.isnan()].sort().values
        # ~1 edge per 1024 entries, at most BUCKETS: an index stays under 1% of any tensor over a
        # few thousand entries (a small tensor gets none: its one bracket is the whole tensor)
        count = min(cls.BUCKETS, stats.numel // 1024, sample.numel())  # see bytes_for
        positions = torch.linspace(0, sample.numel() - 1, count, device=sample.device).long()
        picks = sample[positions]
        edges = torch.unique(torch.cat([picks.new_zeros(1), picks]))  # sorted, strictly increasing
        size = edges.numel() + 1
        strictly = torch.zeros(size, dtype=torch.int64, device=edges.device)
        at_most = torch.zeros(size, dtype=torch.int64, device=edges.device)
        total = 0.0
        for magnitude in stats.magnitudes():
            # bucketize(right=True) = number of edges <= x, so x < edges[j] exactly when it is <= j;
            # bucketize(right=False) = number of edges < x, so x <= edges[j] exactly when it is <= j
            strictly += torch.bincount(torch.bucketize(magnitude, edges, right=True), minlength=size)
            at_most += torch.bincount(torch.bucketize(magnitude, edges), minlength=size)
            total += float(magnitude.double().sum())
        edge_count = edges.numel()
        below = strictly.cumsum(0)[:edge_count].tolist() + [stats.numel]
        upto = at_most.cumsum(0)[:edge_count].tolist() + [stats.numel]
        return cls(edges, below, upto, total)

    @property
    def nbytes(self) -> int:
        return self.edges.numel() * self.edges.element_size() + 8 * (len(self.below) + len(self.upto))

    @classmethod
    def bytes_for(cls, numel: int) -> int:
        """At most what the index of a tensor of `numel` entries weighs (float32 edges)."""
        edges = min(cls.BUCKETS, numel // 1024) + 1
        return 4 * edges + 16 * (edges + 1)


@dataclass(frozen=True)
class Cut:
    """The entry at one rank of |delta| in ascending (magnitude, position) order: its magnitude,
    how many entries of that magnitude come before it by position (`tie`), and how many there are."""

    value: float
    tie: int
    ties: int


class DeltaStats:
    """One model's task vector for one tensor, as the sparsifiers query it: nothing full-size kept.

    The task vector is never stored: it is recomputed, chunk by chunk, from the resident tensor and
    the base (in the merge's compute dtype), so a parent costs one tensor in its storage dtype. The
    only thing kept across candidates is the `MagnitudeIndex` (a few KB), handed in by a resident
    merger (LiveMerger) or built on first use and reported through `on_index`.
    """

    CHUNK = 1 << 22  # entries per pass step: temporaries stay ~16 MB

    def __init__(
        self,
        tensor: Tensor,
        base: Tensor,
        compute_dtype: torch.dtype | None = None,
        index: MagnitudeIndex | None = None,
        on_index: Callable[[MagnitudeIndex], None] | None = None,
    ) -> None:
        self.tensor = tensor
        self.base = base
        self.compute = compute_dtype or tensor.dtype
        self._index = index
        self._on_index = on_index

    @property
    def numel(self) -> int:
        return self.tensor.numel()

    def chunks(self) -> Iterator[tuple[Tensor, Tensor]]:
        """(tensor, base) as flat chunks in their storage dtype."""
        flat_tensor, flat_base = self.tensor.reshape(-1), self.base.reshape(-1)
        for start in range(0, flat_tensor.numel(), self.CHUNK):
            part = slice(start, start + self.CHUNK)
            yield flat_tensor[part], flat_base[part]

    def magnitudes(self) -> Iterator[Tensor]:
        """|tensor - base| in the compute dtype, flat, one chunk at a time."""
        for tensor, base in self.chunks():
            yield (tensor.to(self.compute) - base.to(self.compute)).abs()

    @property
    def index(self) -> MagnitudeIndex:
        if self._index is None:
            self._index = MagnitudeIndex.build(self)
            if self._on_index is not None:
                self._on_index(self._index)
        return self._index

    def cut_at(self, rank: int) -> Cut:
        """The entry at 0-based `rank` of |delta| sorted ascending, ties in position order, exactly."""
        index = self.index
        bucket = bisect.bisect_right(index.below, rank) - 1
        if rank < index.upto[bucket]:  # on the edge itself: the counts answer it
            below = index.below[bucket]
            return Cut(float(index.edges[bucket]), rank - below, index.upto[bucket] - below)
        low = float(index.edges[bucket])
        high = float(index.edges[bucket + 1]) if bucket + 1 < index.edges.numel() else math.inf
        values = torch.cat([kernels.between(t, b, low, high, self.compute) for t, b in self.chunks()])
        value = values.kthvalue(rank - index.upto[bucket] + 1).values
        below = index.upto[bucket] + int((values < value).sum())
        return Cut(float(value), rank - below, int((values == value).sum()))

    def tie_position(self, cut: Cut) -> int:
        """The position in the flat tensor of the `cut.tie`-th entry (0-based) of magnitude `cut.value`."""
        seen = 0
        for start, magnitude in zip(range(0, self.numel, self.CHUNK), self.magnitudes(), strict=True):
            equal = magnitude == cut.value
            count = int(equal.sum())
            if seen + count > cut.tie:
                return start + int(equal.nonzero()[cut.tie - seen])
            seen += count
        raise AssertionError(f"no entry {cut.tie} of magnitude {cut.value}: the index is stale")

    def l1_between(self, low: float, high: float) -> tuple[float, float]:
        """(L1 norm of the entries with low <= |delta| <= high, L1 norm of all entries), in float64."""
        kept = sum(kernels.band_l1(t, b, low, high, self.compute) for t, b in self.chunks())
        return kept, self.index.total_l1


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
    compute_dtype: torch.dtype | None = None  # the merge arithmetic's dtype; None: the tensors' own
    out_dtype: torch.dtype | None = None  # the result's dtype when `out` is None; None: compute dtype

    def output(self) -> Tensor:
        if self.out is not None:
            return self.out
        reference = self.base if self.base is not None else self.tensors[0]
        dtype = self.out_dtype or self.compute_dtype or reference.dtype
        return torch.empty(reference.shape, dtype=dtype, device=reference.device)


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
# (kind, parameter row, draw seed). The kernel then does every pass at once.


@dataclass(frozen=True)
class Sparsity:
    kind: str
    values: dict[str, float] = field(default_factory=dict)  # kernels.parameter_row keywords
    seed: int | None = None  # the random kinds' draws: a hash of (seed, position) inside the kernel
    cuts: tuple[int, int] = kernels.NO_CUTS  # BAND: the positions that split ties at lo and hi


# density >= 1 keeps every entry, expressed in the method's own kind (the neutral parameters keep
# each entry exactly), so one recipe never mixes kernel structures (each would compile anew).
KEEP_ALL = Sparsity(kernels.KEEP_ALL)
FULL_BAND = Sparsity(kernels.BAND)
EMPTY_BAND = Sparsity(kernels.BAND, {"lo": math.inf})


def _band(stats: DeltaStats, low: Cut, high: Cut | None, rescale: bool) -> Sparsity:
    """Keep the entries from `low` to `high` (None: to the largest) in ascending (|delta|, position)
    order: exactly the ranks the method defines, ties at either end split by position. With
    rescale, times L1(delta) / L1(kept) (the norm is kept)."""
    high_value = math.inf if high is None else high.value
    # a cut that takes the first (last) of its ties takes them all: no position pass needed then
    low_position = 0 if low.tie == 0 else stats.tie_position(low)
    last = high is None or high.tie == high.ties - 1
    high_position = kernels.NO_CUTS[1] if last else stats.tie_position(high)
    scale = 1.0
    if rescale:
        kept, total = stats.l1_between(low.value, high_value)
        kept -= low.tie * low.value  # the ties before the low cut are dropped
        if high is not None:
            kept -= (high.ties - 1 - high.tie) * high.value  # and those after the high cut
        scale = total / kept if kept >= 1e-7 else 1.0
    values = {"lo": low.value, "hi": high_value, "scale": scale}
    return Sparsity(kernels.BAND, values, cuts=(low_position, high_position))


def _magnitude(stats: DeltaStats, p: dict[str, Any], _: int | None) -> Sparsity:
    """TIES trim: keep the k = max(1, int(density * n)) entries of largest magnitude (mergekit's k:
    a positive density keeps at least one entry)."""
    density, n = p["density"], stats.numel
    if density >= 1:
        return FULL_BAND
    if density <= 0 or n == 0:
        return EMPTY_BAND
    k = max(1, int(density * n))
    return _band(stats, stats.cut_at(n - k), None, p["rescale"])


def _magnitude_outliers(stats: DeltaStats, p: dict[str, Any], _: int | None) -> Sparsity:
    """Model Breadcrumbs (Davari & Belilovsky 2023): drop the largest `gamma` fraction and the
    smallest entries so that a `density` fraction remains."""
    density, n = p["density"], stats.numel
    if density >= 1:
        return FULL_BAND
    kept = int(density * n)
    # gamma larger than what density leaves: cut less from the top
    n_bottom = max(0, n - kept - int(p["gamma"] * n))
    if kept == 0:
        return EMPTY_BAND
    low, high = stats.cut_at(n_bottom), stats.cut_at(n_bottom + kept - 1)
    return _band(stats, low, high, p["rescale"])


def _random_drop(stats: DeltaStats, p: dict[str, Any], seed: int | None) -> Sparsity:
    """DARE (Yu et al. 2024): keep each entry with probability `density`, rescale by 1/density."""
    density = min(p["density"], 1.0)  # 1: every draw in [0, 1) is kept, times 1
    assert seed is not None
    scale = 1.0 / density if p["rescale"] and density > 0 else 1.0
    return Sparsity(kernels.RANDOM, {"density": density, "scale": scale}, seed)


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
    return Sparsity(kind, {"density": density, "epsilon": epsilon}, seed)


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
            operands=[stats.tensor for stats in inputs.stats],
            rows=[kernels.parameter_row(w, lam=lam, **k.values) for w, k in zip(weights, kept, strict=True)],
            base=inputs.base,
            kinds=tuple(k.kind for k in kept),
            consensus=sign_consensus,
            normalize=normalize,
            seeds=[k.seed for k in kept],
            cuts=[k.cuts for k in kept],
            compute_dtype=inputs.compute_dtype,
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
    return _weighted(inputs, inputs.tensors, [w * scale for w in weights])


def _weighted(inputs: TensorInputs, tensors: list[Tensor], coefficients: list[float]) -> kernels.KernelCall:
    return kernels.KernelCall(
        operands=tensors,
        rows=[kernels.parameter_row(c) for c in coefficients],
        compute_dtype=inputs.compute_dtype,
    )


def _chunked_dots(a: Tensor, b: Tensor, dtype: torch.dtype) -> tuple[float, float, float]:
    """(a.a, b.b, a.b) in `dtype`, a chunk at a time (no full-size upcast copy of either tensor)."""
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    aa = bb = ab = 0.0
    for start in range(0, flat_a.numel(), DeltaStats.CHUNK):
        x = flat_a[start : start + DeltaStats.CHUNK].to(dtype)
        y = flat_b[start : start + DeltaStats.CHUNK].to(dtype)
        aa, bb, ab = aa + float(x @ x), bb + float(y @ y), ab + float(x @ y)
    return aa, bb, ab


def _slerp(inputs: TensorInputs, dot_threshold: float = 0.9995, eps: float = 1e-8) -> kernels.KernelCall:
    """Spherical interpolation from the base (t=0) to the other model (t=1) (Shoemake 1985);
    falls back to linear interpolation for nearly parallel tensors."""
    assert inputs.base is not None
    t = float(inputs.global_params["t"])
    v0, v1 = inputs.base, inputs.tensors[0]
    squared0, squared1, product = _chunked_dots(v0, v1, inputs.compute_dtype or v0.dtype)
    n0, n1 = math.sqrt(squared0), math.sqrt(squared1)
    dot = product / ((n0 if n0 > eps else 1.0) * (n1 if n1 > eps else 1.0))
    if abs(dot) > dot_threshold:
        c0, c1 = 1 - t, t
    else:
        theta = math.acos(dot)
        c0, c1 = math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)
    return _weighted(inputs, [v0, v1], [c0, c1])


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
