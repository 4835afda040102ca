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
    kind: Literal["float", "bool", "int"]
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
        if self.kind == "int" and not float(value).is_integer():
            raise ConfigError(f"{where}: {self.name!r} must be a whole number, got {value!r}")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ConfigError(
                f"{where}: {self.name!r} = {value} is out of range [{self.low}, {self.high}]; "
                f"use a value inside it"
            )


class MagnitudeIndex:
    """A few KB that make an exact magnitude selection cheap, instead of a sorted copy of |delta|.

    `edges` are <= 257 ascending values of |delta| (quantiles of a strided sample, edges[0] = 0),
    held as host floats like the counts, so a cut reads them without waiting for the device;
    `below[j]` counts the entries with |delta| < edges[j] and `upto[j]` those with |delta| <= edges[j]
    (below[-1] = upto[-1] = all entries), from one pass over the tensor. The entry at a rank then
    either sits on an edge (answered from the counts, no pass: in bf16, where a few values hold most
    entries, nearly always) or strictly between two edges, in a bracket of ~1/256 of the entries that
    one pass per candidate selects and `kthvalue` finishes exactly.
    """

    BUCKETS = 256
    SAMPLE = 1 << 16

    def __init__(
        self, edges: list[float], below: list[int], upto: list[int], total_l1: float, nans: int
    ) -> None:
        self.edges = edges
        self.below = below
        self.upto = upto
        self.total_l1 = total_l1
        self.nans = nans  # NaN magnitudes: no rank can be selected among them

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
        # summed on the device, chunk by chunk, and read once with the counts below
        total = torch.zeros((), dtype=torch.float64, device=edges.device)
        nans = torch.zeros((), dtype=torch.int64, device=edges.device)
        for magnitude in stats.magnitudes():
            nans += magnitude.isnan().sum()
            # below = number of edges < x, so x <= edges[j] exactly when it is <= j; the number of
            # edges <= x is one more where x sits on an edge, so x < edges[j] exactly when that is
            # <= j (one search instead of a second bucketize(right=True): ~1.4x faster here)
            below = torch.bucketize(magnitude, edges)
            on_edge = (edges[below.clamp(max=edges.numel() - 1)] == magnitude) & (below < edges.numel())
            strictly += torch.bincount(below + on_edge, minlength=size)
            at_most += torch.bincount(below, minlength=size)
            total += magnitude.double().sum()
        edge_count = edges.numel()
        # one read of everything, in float64: exact for the edges and for counts below 2^53
        cumulative = [counts.cumsum(0)[:edge_count].double() for counts in (strictly, at_most)]
        read = torch.cat([edges.double(), *cumulative, total.view(1), nans.double().view(1)]).tolist()
        below = [int(v) for v in read[edge_count : 2 * edge_count]] + [stats.numel]
        upto = [int(v) for v in read[2 * edge_count : 3 * edge_count]] + [stats.numel]
        return cls(read[:edge_count], below, upto, read[-2], int(read[-1]))

    @property
    def nbytes(self) -> int:
        return 8 * (len(self.edges) + len(self.below) + len(self.upto))

    @classmethod
    def bytes_for(cls, numel: int) -> int:
        """At most what the index of a tensor of `numel` entries weighs (8 B per edge and count)."""
        edges = min(cls.BUCKETS, numel // 1024) + 1
        return 8 * edges + 16 * (edges + 1)


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

    Without `on_index` nobody keeps the index (a one-shot merge reads each tensor once): then a cut
    is found directly, `kthvalue` over |delta| held for this one tensor (one temporary in the
    compute dtype), which is ~2x cheaper than building an index that would be used once. Both
    give the same `Cut`: it is defined by the ranks alone.
    """

    CHUNK = 1 << 22  # entries per pass step: temporaries stay ~16 MB

    def __init__(
        self,
        tensor: Tensor,
        base: Tensor,
        compute_dtype: torch.dtype | None = None,
        index: MagnitudeIndex | None = None,
        on_index: Callable[[MagnitudeIndex], None] | None = None,
        label: str = "a model's tensor",
    ) -> None:
        self.label = label  # names the model and tensor in errors
        self.tensor = tensor
        self.base = base
        self.compute = compute_dtype or tensor.dtype
        self._index = index
        self._on_index = on_index
        self._magnitudes: Tensor | None = None  # one-shot merges: |delta|, while this tensor merges

    @property
    def numel(self) -> int:
        return self.tensor.numel()

    @property
    def chunk(self) -> int:
        """Entries per pass step: the kernels' chunk on the tensor's device (~4 M on CPU, ~32 M on a
        GPU, where fewer steps mean fewer kernel launches)."""
        return kernels.chunk_entries(1, self.tensor.device)

    def chunks(self) -> Iterator[tuple[Tensor, Tensor]]:
        """(tensor, base) as flat chunks in their storage dtype."""
        flat_tensor, flat_base = self.tensor.reshape(-1), self.base.reshape(-1)
        for start in range(0, flat_tensor.numel(), self.chunk):
            part = slice(start, start + self.chunk)
            yield flat_tensor[part], flat_base[part]

    def magnitudes(self) -> Iterator[Tensor]:
        """|tensor - base| in the compute dtype, flat, one chunk at a time."""
        for tensor, base in self.chunks():
            yield (tensor.to(self.compute) - base.to(self.compute)).abs()

    @property
    def one_shot(self) -> bool:
        """No index is handed in and none would be kept: a cut is found directly."""
        return self._index is None and self._on_index is None

    def _flat_magnitudes(self) -> Tensor:
        """|delta| of the whole tensor, flat, in the compute dtype (one-shot merges only), cached."""
        if self._magnitudes is None:
            self._magnitudes = torch.cat(list(self.magnitudes())) if self.numel else self.tensor.new_zeros(0)
        return self._magnitudes

    def _nan_check(self, nans: int) -> None:
        if nans:
            raise CandidateError(
                f"the task vector of {self.label} has {nans} NaN entries: no magnitude threshold "
                "exists; the model or the base holds NaN weights, repair or drop it"
            )

    @staticmethod
    def _kth(values: Tensor, rank: int, offset: int) -> Cut:
        """The Cut at 0-based `rank` of `values` (every magnitude of its tensor from rank `offset`
        on, in any order), read from the device once."""
        value = values.kthvalue(rank - offset + 1).values
        counts = [(values < value).sum(), (values == value).sum()]
        found, below, ties = torch.stack([value.double(), *(c.double() for c in counts)]).tolist()
        return Cut(found, rank - offset - int(below), int(ties))

    def _direct_cut(self, rank: int) -> Cut:
        magnitudes = self._flat_magnitudes()
        self._nan_check(int(magnitudes.isnan().sum()))
        return self._kth(magnitudes, rank, 0)

    @property
    def index(self) -> MagnitudeIndex:
        if self._index is None:
            self._index = MagnitudeIndex.build(self)
            if self._on_index is not None:
                self._on_index(self._index)
        return self._index

    def cut_at(self, rank: int) -> Cut:
        """The entry at 0-based `rank` of |delta| sorted ascending, ties in position order, exactly.
        On an edge of the index nothing is read from the device; in a bracket, one fused pass per
        chunk selects it (a read of its size each) and one read gives the cut."""
        if self.one_shot:
            return self._direct_cut(rank)
        index = self.index
        self._nan_check(index.nans)
        bucket = bisect.bisect_right(index.below, rank) - 1
        if rank < index.upto[bucket]:  # on the edge itself: the counts answer it
            below = index.below[bucket]
            return Cut(index.edges[bucket], rank - below, index.upto[bucket] - below)
        high = index.edges[bucket + 1] if bucket + 1 < len(index.edges) else math.inf
        bounds = kernels.on_device([index.edges[bucket], high], self.compute, self.tensor.device)
        values = torch.cat([kernels.between(t, b, bounds, self.compute) for t, b in self.chunks()])
        return self._kth(values, rank, index.upto[bucket])

    def tie_position(self, cut: Cut) -> int:
        """The position in the flat tensor of the `cut.tie`-th entry (0-based) of magnitude `cut.value`:
        one pass, the running count of equal entries kept on the device, one read at the end."""
        device = self.tensor.device
        value = kernels.on_device([cut.value], self.compute, device)
        seen = torch.zeros((), dtype=torch.int64, device=device)
        position = torch.zeros((), dtype=torch.int64, device=device)
        found = torch.zeros((), dtype=torch.int64, device=device)
        for start, (tensor, base) in zip(range(0, self.numel, self.chunk), self.chunks(), strict=True):
            running = kernels.equal_counts(tensor, base, value, self.compute)  # non-decreasing
            # the wanted entry is this chunk's (tie - seen)-th equal one, where it has that many:
            # the first position whose running count reaches it
            wanted = (cut.tie + 1 - seen).clamp(0, running.numel() + 1).to(running.dtype)
            here = (wanted >= 1) & (wanted <= running[-1])
            local = torch.searchsorted(running, wanted.view(1))[0]
            position += torch.where(here, start + local, 0)
            found += here
            seen += running[-1]
        hits, where = torch.stack([found, position]).tolist()
        if hits != 1:
            raise AssertionError(f"no entry {cut.tie} of magnitude {cut.value}: the index is stale")
        return where

    def l1_between(self, low: float, high: float) -> tuple[float, float]:
        """(L1 norm of the entries with low <= |delta| <= high, L1 norm of all entries), in float64,
        summed chunk by chunk on the device and read once."""
        bounds = kernels.on_device([low, high], self.compute, self.tensor.device)
        kept = _in_order([kernels.band(t, b, bounds, self.compute)[1] for t, b in self.chunks()])
        if self.one_shot:  # summed chunk by chunk as the index sums it: the same float64 total
            chunks = self._flat_magnitudes().split(self.chunk)
            total = _in_order([chunk.double().sum() for chunk in chunks])
            kept_l1, total_l1 = torch.stack([kept, total]).tolist()
            return kept_l1, total_l1
        return float(kept), self.index.total_l1


def _in_order(terms: list[Tensor]) -> Tensor:
    """((t0 + t1) + t2) + ...: the float64 order in which the index sums its chunks."""
    total = torch.zeros((), dtype=torch.float64, device=terms[0].device if terms else None)
    for term in terms:
        total = total + term
    return total


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
    min_models: int = 1  # the fewest merged models (besides the base)
    optional_base: bool = False  # a base_model, when given, is the origin (nuslerp, multislerp)
    includes_base: bool = False  # mergekit adds base_model to a `models:` list as one more input

    def takes_base(self, base_model: str | None) -> bool:
        """Whether the base is set apart from the merged models (the origin of their task vectors)."""
        return self.needs_base or (self.optional_base and base_model is not None)

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
    call = _weighted(inputs, inputs.tensors, weights)
    # mergekit 0.1.5: the inputs in the recipe's dtype, summed in float32 (float64 for float64),
    # then divided by the weights' sum in that dtype
    loaded = inputs.compute_dtype or inputs.tensors[0].dtype
    call.input_dtype = loaded
    call.compute_dtype = torch.float64 if loaded == torch.float64 else torch.float32
    if inputs.global_params["normalize"]:
        call.divisor = float(torch.tensor(weights, dtype=call.compute_dtype).sum())
        if call.divisor == 0:
            raise CandidateError(
                f"linear merge of {inputs.name!r}: the weights sum to 0, cannot normalize; "
                f"change the weights or set normalize: false"
            )
    return call


def _weighted(
    inputs: TensorInputs, tensors: list[Tensor], coefficients: list[float], compute: torch.dtype | None = None
) -> kernels.KernelCall:
    """sum_i coefficients[i] * tensors[i], in `compute` (default: the recipe's compute dtype)."""
    return kernels.KernelCall(
        operands=tensors,
        rows=[kernels.parameter_row(c) for c in coefficients],
        compute_dtype=compute or inputs.compute_dtype,
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
    """Spherical interpolation from the base (t=0) to the other model (t=1) of the whole tensor
    (Shoemake 1985); falls back to linear interpolation for nearly parallel tensors. Computed in
    float32 (float64 for float64 inputs) and written in the tensor's dtype, whatever the recipe's
    compute dtype, as mergekit 0.1.5 does (bfloat16 arithmetic put 22% of SmolLM2's entries 1 ulp
    or more off mergekit's)."""
    assert inputs.base is not None
    t = float(inputs.global_params["t"])
    v0, v1 = inputs.base, inputs.tensors[0]
    compute = torch.float64 if v0.dtype == torch.float64 else torch.float32
    squared0, squared1, product = _chunked_dots(v0, v1, compute)
    n0, n1 = math.sqrt(squared0), math.sqrt(squared1)
    dot = product / ((n0 if n0 > eps else 1.0) * (n1 if n1 > eps else 1.0))
    if abs(dot) > dot_threshold:
        c0, c1 = 1 - t, t
    else:
        theta = math.acos(dot)
        c0, c1 = math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)
    return _weighted(inputs, [v0, v1], [c0, c1], compute)


# --- methods built on whole-tensor reductions ------------------------------------------------
# Norms, angles and variances need a pass over the whole tensor before anything is written: they
# are computed chunk by chunk (nothing full-size per model), reduced to a few numbers per tensor
# (or per row), and the result is then written by one SCALED kernel pass.

Axis = Literal["tensor", "rows", "columns"]


def _grams(tensors: list[Tensor], base: Tensor | None, compute: torch.dtype, axis: Axis) -> Tensor:
    """Gram matrices [R, n, n] (float64) of the vectors x_i = tensors[i] (- base): one for the whole
    tensor (R = 1), one per row (vectors along the last dimension) or one per column, from chunks of
    whole rows. Products are taken in at least float32, as torch reduces low-precision tensors."""
    reference = base if base is not None else tensors[0]
    width = reference.shape[-1] if reference.dim() > 1 else max(reference.numel(), 1)
    if reference.dim() <= 1 and axis != "tensor":
        axis = "tensor"  # a vector is one row and one column: mergekit treats it whole
    accumulate = torch.promote_types(compute, torch.float32)
    flat = [t.reshape(-1, width) for t in tensors]
    origin = None if base is None else base.reshape(-1, width)
    rows_per_chunk = max(1, DeltaStats.CHUNK // width)
    parts: list[Tensor] = []
    total: Tensor | None = None
    for start in range(0, flat[0].shape[0], rows_per_chunk):
        part = slice(start, start + rows_per_chunk)
        shift = None if origin is None else origin[part].to(compute)
        vectors = [x[part].to(compute) if shift is None else x[part].to(compute) - shift for x in flat]
        stacked = torch.stack(vectors).to(accumulate)  # [n, rows, width]
        if axis == "rows":
            parts.append(torch.einsum("irw,jrw->rij", stacked, stacked).double())
            continue
        pattern = "irw,jrw->wij" if axis == "columns" else "irw,jrw->ij"
        gram = torch.einsum(pattern, stacked, stacked).double()
        total = gram if total is None else total + gram
    if axis == "rows":
        return torch.cat(parts)
    assert total is not None
    return total if axis == "columns" else total.unsqueeze(0)


def _combination(
    inputs: TensorInputs, tensors: list[Tensor], coefficients: Tensor, axis: Axis, base: Tensor | None
) -> kernels.KernelCall:
    """[base +] sum_i coefficients[:, i] * tensors[i] [- base], coefficients [R, n] from `_grams`."""
    reference = base if base is not None else tensors[0]
    if reference.dim() <= 1:
        axis = "tensor"
    per_tensor = coefficients.transpose(0, 1)  # [n, R]
    if axis == "rows":
        scales = per_tensor.unsqueeze(-1)  # [n, rows, 1]
    elif axis == "columns":
        scales = per_tensor.unsqueeze(1)  # [n, 1, width]
    else:
        scales = per_tensor.reshape(-1, 1, 1)
    return kernels.KernelCall(
        operands=tensors,
        rows=[],
        base=base,
        compute_dtype=inputs.compute_dtype,
        form=kernels.SCALED,
        scales=scales,
    )


def _compute(inputs: TensorInputs) -> torch.dtype:
    reference = inputs.base if inputs.base is not None else inputs.tensors[0]
    return inputs.compute_dtype or reference.dtype


def _passthrough(inputs: TensorInputs) -> kernels.KernelCall:
    """The one source's tensor, times its `scale` (mergekit's passthrough: with slices, layer
    stacking from several models, e.g. the frankenmerges of Goddard et al. 2024, MergeKit)."""
    return _weighted(inputs, inputs.tensors, [float(inputs.model_params[0]["scale"])])


def _model_stock(inputs: TensorInputs) -> kernels.KernelCall:
    """Model Stock (Jang et al. 2024, eq. 6): with theta the mean pairwise angle between the task
    vectors (cos clamped to [-1, 1], norms at least 1e-6), t = n cos / (1 + (n - 1) cos) and the
    merge base + t * (mean of the models - base); t = 0 where the denominator vanishes (|.| < 1e-6).
    `filter_wise`: one angle per row (output filter) instead of one per tensor."""
    assert inputs.base is not None
    axis: Axis = "rows" if inputs.global_params["filter_wise"] else "tensor"
    gram = _grams(inputs.tensors, inputs.base, _compute(inputs), axis)  # [R, n, n]
    n = gram.shape[-1]
    norms = gram.diagonal(dim1=-2, dim2=-1).sqrt()
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
    cosines = [(gram[:, a, b] / (norms[:, a] * norms[:, b]).clamp(min=1e-6)).clamp(-1, 1) for a, b in pairs]
    cos = torch.stack(cosines).mean(dim=0)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, 0.0, n * cos / torch.where(singular, 1.0, denominator))
    return _combination(inputs, inputs.tensors, (t / n).unsqueeze(-1).expand(-1, n), axis, inputs.base)


def _nuslerp(inputs: TensorInputs) -> kernels.KernelCall:
    """NuSLERP (mergekit's spherical interpolation of two models, or of their task vectors when a
    base is given; Shoemake 1985): t = w_1 / (w_0 + w_1) (0.5 when the weights sum to ~0), over the
    flattened tensor, or per row (`nuslerp_flatten: false`), or per column (and `nuslerp_row_wise`);
    colinear vectors (1 - cos^2 <= 1e-16) are interpolated linearly."""
    w0, w1 = (float(p["weight"]) for p in inputs.model_params)
    total = w0 + w1
    t = 0.5 if abs(total) < 1e-6 else w1 / total
    flatten, row_wise = inputs.global_params["nuslerp_flatten"], inputs.global_params["nuslerp_row_wise"]
    axis: Axis = "tensor" if flatten else "columns" if row_wise else "rows"
    gram = _grams(inputs.tensors, inputs.base, _compute(inputs), axis)
    norms = gram.diagonal(dim1=-2, dim2=-1).sqrt().clamp(min=1e-7)
    cos = (gram[:, 0, 1] / (norms[:, 0] * norms[:, 1])).clamp(-1, 1)
    colinear = (1 - cos.square()) <= 1e-16
    theta = torch.acos(torch.where(colinear, 0.0, cos))
    sin = torch.where(colinear, 1.0, torch.sin(theta))
    c0 = torch.where(colinear, 1 - t, torch.sin((1 - t) * theta) / sin)
    c1 = torch.where(colinear, t, torch.sin(t * theta) / sin)
    return _combination(inputs, inputs.tensors, torch.stack([c0, c1], dim=-1), axis, inputs.base)


def _karcher(inputs: TensorInputs) -> kernels.KernelCall:
    """The Karcher (Riemannian) mean of the models' directions on the unit sphere (Karcher 1977;
    Grove & Karcher 1973), equal weights, by gradient steps along the tangent mean (at most
    `max_iter`, stopping when the tangent is shorter than `tol`), rescaled by the mean norm.
    Every iterate is a combination of the inputs, so the steps run on their Gram matrix alone."""
    tensors = inputs.tensors
    n = len(tensors)
    if n == 1:
        return _weighted(inputs, tensors, [1.0])
    tol, max_iter = float(inputs.global_params["tol"]), int(inputs.global_params["max_iter"])
    gram = _grams(tensors, None, _compute(inputs), "tensor")[0]
    norms = gram.diagonal().sqrt()
    alphas = [1.0 / n] * n
    valid = [i for i in range(n) if norms[i] > tol]
    if not valid:
        return _weighted(inputs, tensors, [0.0] * n)
    alpha_sum = sum(alphas[i] for i in valid)
    weights = {i: alphas[i] / alpha_sum for i in valid}

    def unit(i: int) -> Tensor:  # u_i = x_i / |x_i| as coefficients over the inputs
        return torch.zeros(n, dtype=torch.float64).index_fill_(0, torch.tensor([i]), 1 / float(norms[i]))

    def length(c: Tensor) -> float:
        return math.sqrt(max(float(c @ gram @ c), 0.0))

    mean = sum((weights[i] * unit(i) for i in valid), torch.zeros(n, dtype=torch.float64))
    size = length(mean)
    mean = unit(valid[0]) if size < tol else mean / size
    for _ in range(max_iter):
        tangent = torch.zeros(n, dtype=torch.float64)
        projections = gram @ mean  # x_j . mean
        for i in valid:
            dot = min(max(float(projections[i]) / float(norms[i]), -1.0), 1.0)
            theta = math.acos(dot)
            if theta < tol:
                continue
            tangent += weights[i] * (theta / math.sin(theta)) * (unit(i) - dot * mean)
        step = length(tangent)
        if step < tol:
            break
        mean = math.cos(step) * mean + math.sin(step) * (tangent / step)
        size = length(mean)
        if size > tol:
            mean = mean / size
    scale = sum(alpha * float(norm) for alpha, norm in zip(alphas, norms, strict=True))
    return _weighted(inputs, tensors, (scale * mean).tolist())


def _multislerp(inputs: TensorInputs) -> kernels.KernelCall:
    """Multi-SLERP (barycentric interpolation on the hypersphere; Buss & Fillmore 2001, as in
    mergekit's multislerp): unit vectors x_i / (|x_i| + eps) of the models (their task vectors when
    a base is given), mapped to the tangent space at their normalized weighted mean, averaged with
    the weights, mapped back by the exponential map and scaled by the weighted mean norm."""
    tensors = inputs.tensors
    if len(tensors) == 1:
        return _weighted(inputs, tensors, [1.0])
    eps = float(inputs.global_params["eps"])
    weights = torch.tensor([float(p["weight"]) for p in inputs.model_params], dtype=torch.float64)
    if inputs.global_params["normalize_weights"]:
        weights = weights / weights.sum()
    gram = _grams(tensors, inputs.base, _compute(inputs), "tensor")[0]
    norms = gram.diagonal().sqrt()
    inverse = 1 / (norms + eps)  # u_i = inverse_i * x_i

    def length(c: Tensor) -> float:
        return math.sqrt(max(float(c @ gram @ c), 0.0))

    mean = weights * inverse
    size = length(mean)
    if size < eps:
        if len(tensors) != 2:
            raise CandidateError(
                f"multislerp of {inputs.name!r}: the weighted sum of the unit vectors is zero "
                f"(antipodal models with balancing weights); change the weights"
            )
        coefficients = weights  # mergekit falls back to the weighted sum of two
    else:
        mean = mean / size
        dots = inverse * (gram @ mean)  # u_i . mean
        tangent = weights * inverse - float((weights * dots).sum()) * mean
        step = length(tangent) + eps
        result = math.cos(step) * mean + (math.sin(step) / step) * tangent
        coefficients = result * float((norms * weights).sum())
    return _combination(inputs, tensors, coefficients.unsqueeze(0), "tensor", inputs.base)


def _nearswap(inputs: TensorInputs) -> kernels.KernelCall:
    """NearSwap (alchemonaut, QuartetAnemoi-70B): the base takes the other model's value where the
    two differ by less than t, and moves by t towards it elsewhere."""
    assert inputs.base is not None
    return kernels.KernelCall(
        operands=inputs.tensors,
        rows=[],
        base=inputs.base,
        compute_dtype=inputs.compute_dtype,
        form=kernels.NEARSWAP,
        t=float(inputs.global_params["t"]),
    )


def _sce_mask(inputs: TensorInputs, fraction: float, compute: torch.dtype) -> Tensor | None:
    """SCE's select step: the entries whose variance across the task vectors is among the top
    int(fraction * nonzero variances), ties at the threshold split by position (the last ones kept,
    as the magnitude selections do). None: every entry. One float per entry while it is built."""
    if fraction >= 1:
        return None
    assert inputs.base is not None
    if fraction <= 0:
        return torch.zeros(inputs.base.shape, dtype=torch.bool, device=inputs.base.device)
    flat_base = inputs.base.reshape(-1)
    flat = [t.reshape(-1) for t in inputs.tensors]
    variances = torch.empty(flat_base.numel(), dtype=compute, device=flat_base.device)
    for start in range(0, flat_base.numel(), DeltaStats.CHUNK):
        part = slice(start, start + DeltaStats.CHUNK)
        origin = flat_base[part].to(compute)
        deltas = torch.stack([x[part].to(compute) - origin for x in flat])
        variances[part] = torch.var(deltas, dim=0, unbiased=False)
    k = int(int(torch.count_nonzero(variances)) * fraction)
    if k == 0:
        return torch.zeros(inputs.base.shape, dtype=torch.bool, device=inputs.base.device)
    n = variances.numel()
    threshold = variances.kthvalue(n - k + 1).values  # the k-th largest
    above = variances > threshold
    ties = (variances == threshold).nonzero().reshape(-1)
    keep = above.clone()
    keep[ties[len(ties) - (k - int(above.sum())) :]] = True
    return keep.reshape(inputs.base.shape)


def _sce(inputs: TensorInputs) -> kernels.KernelCall:
    """SCE (Wan et al. 2024, FuseChat): Select the entries of highest variance across the task
    vectors (`select_topk`), Calculate each model's weight as its masked task vector's mean square
    (normalized; equal weights when they sum below 1e-6), Erase the entries whose sign disagrees
    with the sum's, then the weighted mean of what remains, added to the base."""
    assert inputs.base is not None
    compute = _compute(inputs)
    mask = _sce_mask(inputs, float(inputs.global_params["select_topk"]), compute)
    accumulate = torch.promote_types(compute, torch.float32)
    squares = [0.0] * len(inputs.tensors)
    flat_base = inputs.base.reshape(-1)
    flat_mask = None if mask is None else mask.reshape(-1)
    for start in range(0, flat_base.numel(), DeltaStats.CHUNK):
        part = slice(start, start + DeltaStats.CHUNK)
        origin = flat_base[part].to(compute)
        for i, tensor in enumerate(inputs.tensors):
            delta = tensor.reshape(-1)[part].to(compute) - origin
            if flat_mask is not None:
                delta = delta * flat_mask[part]
            squares[i] += float(delta.to(accumulate).square().sum())
    means = [total / max(flat_base.numel(), 1) for total in squares]
    weight_sum = sum(means)
    weights = [1 / len(means)] * len(means) if abs(weight_sum) < 1e-6 else [m / weight_sum for m in means]
    return kernels.KernelCall(
        operands=inputs.tensors,
        rows=[kernels.parameter_row(w) for w in weights],
        base=inputs.base,
        compute_dtype=inputs.compute_dtype,
        form=kernels.SCE,
        mask=mask,
    )


def _ram(plus: bool) -> Callable[[TensorInputs], kernels.KernelCall]:
    """RAM (Reinforced Agent Merging, arXiv 2601.13572): entries one model alone changes keep its
    task vector, entries several change take their mean. RAM+ (tensor-local) scales a model's
    unique entries by 1 + r * clamp(rho, 0, alpha), rho = its shared over its unique entries in
    this tensor (a count pass before the merge)."""

    def merge(inputs: TensorInputs) -> kernels.KernelCall:
        assert inputs.base is not None
        compute = _compute(inputs)
        params = inputs.global_params
        epsilon = torch.tensor(float(params["epsilon"]), dtype=compute, device=inputs.base.device)
        scales = [1.0] * len(inputs.tensors)
        if plus:
            shared, unique = [0] * len(inputs.tensors), [0] * len(inputs.tensors)
            flat_base = inputs.base.reshape(-1)
            for start in range(0, flat_base.numel(), DeltaStats.CHUNK):
                part = slice(start, start + DeltaStats.CHUNK)
                chunk = [t.reshape(-1)[part] for t in inputs.tensors]
                _, kept, counts = kernels.ram_masks(flat_base[part], chunk, epsilon, compute)
                for i, k in enumerate(kept):
                    shared[i] += int((k & (counts > 1)).sum())
                    unique[i] += int((k & (counts == 1)).sum())
            # rho and lambda in float32, from the counts (a model with no unique entry: rho capped)
            eps32 = torch.tensor(float(params["epsilon"]), dtype=torch.float32)
            rho = torch.tensor(shared, dtype=torch.float32) / torch.tensor(unique, dtype=torch.float32).clamp(
                min=eps32
            )
            scales = (1 + float(params["r"]) * rho.clamp(min=0, max=float(params["alpha"]))).tolist()
        return kernels.KernelCall(
            operands=inputs.tensors,
            rows=[kernels.parameter_row(w, epsilon=float(params["epsilon"])) for w in scales],
            base=inputs.base,
            compute_dtype=inputs.compute_dtype,
            form=kernels.RAM,
        )

    return merge


def _arcee_fusion(inputs: TensorInputs) -> kernels.KernelCall:
    """Arcee Fusion (Arcee AI, mergekit): importance = |delta| * KL(softmax(model) || softmax(base))
    of its row (softmax over the last dimension, each probability + 1e-8); the task vector is kept
    where the importance reaches median + 1.5 * IQR (Tukey's outlier fence) of all importances.
    The quartiles are exact order statistics (index floor(q * (n - 1)) of the sorted importances);
    mergekit takes them from a random sample of 10^6 entries in larger tensors (not reproducible),
    so only tensors up to 10^6 entries are expected to match it exactly."""
    assert inputs.base is not None
    compute = _compute(inputs)
    base, other = inputs.base, inputs.tensors[0]
    width = base.shape[-1] if base.dim() > 0 else 1
    flat_base, flat_other = base.reshape(-1, width), other.reshape(-1, width)
    rows_per_chunk = max(1, DeltaStats.CHUNK // width)
    importance = torch.empty(flat_base.shape, dtype=compute, device=base.device)
    for start in range(0, flat_base.shape[0], rows_per_chunk):
        part = slice(start, start + rows_per_chunk)
        q, p = flat_base[part].to(compute), flat_other[part].to(compute)
        p_soft = torch.softmax(p, dim=-1) + 1e-8
        q_soft = torch.softmax(q, dim=-1) + 1e-8
        divergence = torch.sum(p_soft * torch.log(p_soft / q_soft), dim=-1, keepdim=True)
        importance[part] = (p - q).abs() * divergence
    flat = importance.reshape(-1)
    quantiles = torch.tensor([0.25, 0.5, 0.75], device=flat.device)
    positions = (quantiles * (flat.numel() - 1)).long().tolist()
    q1, median, q3 = (flat.kthvalue(position + 1).values for position in positions)
    threshold = median + 1.5 * (q3 - q1)
    return kernels.KernelCall(
        operands=inputs.tensors,
        rows=[],
        base=base,
        compute_dtype=inputs.compute_dtype,
        form=kernels.MASKED,
        mask=(importance >= threshold).reshape(base.shape),
    )


# --- the registry ---------------------------------------------------------------------------

# mergekit merges a linear recipe's unlisted base_model as one more model (with the global weight)
METHODS.add(
    "linear", MergeMethod("linear", (WEIGHT, _normalize(True)), False, False, _linear, includes_base=True)
)
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


SCALE = ParamSpec("scale", "model", "float", 1.0, search_low=0.0, search_high=1.0)
NEARSWAP_T = ParamSpec("t", "global", "float", None, search_low=0.0, search_high=0.001)
METHODS.add("passthrough", MergeMethod("passthrough", (SCALE,), False, False, _passthrough, n_models=1))
METHODS.add(
    "model_stock",
    MergeMethod(
        "model_stock", (ParamSpec("filter_wise", "global", "bool", False),), True, False, _model_stock,
        min_models=2,
    ),
)  # fmt: skip
METHODS.add(
    "nuslerp",
    MergeMethod(
        "nuslerp",
        (
            WEIGHT,
            ParamSpec("nuslerp_row_wise", "global", "bool", False),
            ParamSpec("nuslerp_flatten", "global", "bool", True),
        ),
        False, False, _nuslerp, n_models=2, optional_base=True,
    ),
)  # fmt: skip
METHODS.add(
    "sce",
    MergeMethod(
        "sce",
        (
            ParamSpec("select_topk", "global", "float", 1.0, 0.0, 1.0, 0.1, 1.0),
            # mergekit's mask storage type: no effect on the values
            ParamSpec("int8_mask", "global", "bool", False),
        ),
        True, False, _sce,
    ),
)  # fmt: skip
METHODS.add(
    "karcher",
    MergeMethod(
        "karcher",
        (ParamSpec("max_iter", "global", "int", 10, 1, None), ParamSpec("tol", "global", "float", 1e-5, 0.0)),
        False, False, _karcher, includes_base=True,
    ),
)  # fmt: skip
METHODS.add(
    "multislerp",
    MergeMethod(
        "multislerp",
        (
            WEIGHT,
            ParamSpec("normalize_weights", "global", "bool", True),
            ParamSpec("eps", "global", "float", 1e-8, 0.0),
        ),
        False, False, _multislerp, optional_base=True,
    ),
)  # fmt: skip
METHODS.add("nearswap", MergeMethod("nearswap", (NEARSWAP_T,), True, False, _nearswap, n_models=1))
METHODS.add("arcee_fusion", MergeMethod("arcee_fusion", (), True, False, _arcee_fusion, n_models=1))
RAM_EPSILON = ParamSpec("epsilon", "global", "float", 1e-5, 0.0)
METHODS.add("ram", MergeMethod("ram", (RAM_EPSILON,), True, False, _ram(plus=False)))
METHODS.add(
    "ramplus_tl",
    MergeMethod(
        "ramplus_tl",
        (
            ParamSpec("r", "global", "float", 0.1, 0.0, None, 0.0, 0.5),
            ParamSpec("alpha", "global", "float", 0.2, 0.0, None, 0.0, 1.0),
            RAM_EPSILON,
        ),
        True, False, _ram(plus=True),
    ),
)  # fmt: skip
