"""One model's task vector for one tensor, as the sparsifiers query it (`DeltaStats`), and the few
KB that make an exact magnitude selection cheap across candidates (`MagnitudeIndex`)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from evomerge.errors import CandidateError
from evomerge.merge import kernels


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
