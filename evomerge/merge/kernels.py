"""Fused elementwise merge kernels: one pass over memory per output tensor.

Merging one tensor is a chain of elementwise steps (trim, sign election, weighted sum, add to the
base). Run as separate torch ops, every step is a pass over memory and a fresh allocation, which
on CPU made a TIES candidate ~30x slower than a memory copy of the same bytes. The steps are
written once here, in plain torch ops over flattened tensors, and compiled with `torch.compile`
(Inductor fuses the chain into one loop that writes straight into the output). Every scalar that
changes between candidates travels in one float tensor, so new values never trigger a recompile;
only the structure (number of models, sparsifier kind, sign consensus, normalization) does.

Both materializers (streamed to disk and in memory) call these kernels, so they stay bit-identical.
`EVOMERGE_COMPILE=0` runs the same functions eagerly (same results up to float rounding); where
compilation is unavailable (no C++ compiler, an unsupported device) the kernels fall back to eager
with one warning. A one-shot merge compiles only where it pays (`compile_pays`, `compiling`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

# How a model's task vector is sparsified before the sum.
KEEP_ALL = "all"  # no sparsification (density 1, or plain task arithmetic)
BAND = "band"  # keep (lo, cuts[0]) <= (|delta|, position) <= (hi, cuts[1]), times SCALE (TIES, breadcrumbs)
RANDOM = "random"  # keep where uniform < DENSITY (DARE), times SCALE
RANKED = "ranked"  # keep where uniform < p(rank) (DELLA), kept entries not rescaled
RANKED_RESCALED = "ranked_rescaled"  # the same, kept entries divided by p(rank)

# Columns of the per-model parameter matrix (one row per merged model).
# Each entry is read in the kernels as a 0-d tensor, so new values never recompile.
WEIGHT, LO, HI, DENSITY, EPSILON, SCALE, LAMBDA = range(7)

# A BAND's tie cuts (first kept position at lo, last kept position at hi) that split no ties.
NO_CUTS = (0, 1 << 62)

# How a call combines its operands (KernelCall.form).
SUM = "sum"  # weighted sum, or base + merged task vectors (the rows and kinds above)
SCALED = "scaled"  # [base +] sum_i scales[i] * (operand_i [- base]), scales per row, column or tensor
NEARSWAP = "nearswap"  # base moved towards the operand by at most t per entry
SCE = "sce"  # SCE's fusion of the masked task vectors (Wan et al. 2024)
MASKED = "masked"  # base + (operand - base) where mask (arcee_fusion)
RAM = "ram"  # Reinforced Agent Merging's disjoint mean of the task vectors (arXiv 2601.13572)


def parameter_row(weight: float, **values: float) -> list[float]:
    """One model's row of the parameter matrix; unnamed columns keep-everything defaults."""
    row = [weight, 0.0, float("inf"), 1.0, 0.0, 1.0, 1.0]
    columns = {"lo": LO, "hi": HI, "density": DENSITY, "epsilon": EPSILON, "scale": SCALE, "lam": LAMBDA}
    for name, value in values.items():
        row[columns[name]] = value
    return row


@dataclass
class KernelCall:
    """One output tensor's merge, as the fused kernels take it.

    `weighted_sum` (base None): out = sum_i rows[i][WEIGHT] * operands[i]. Otherwise out = base +
    merged task vectors, with task vector i = operands[i] - base computed inside the kernel (see
    `_task_vector_kernel`). Operands and base stay in their storage dtype (bf16 for most released
    models); the kernels upcast them element by element to `compute_dtype` (the recipe's `dtype`,
    mergekit's meaning; None: the operands' own) and write the output's dtype, so no model is ever
    copied in another dtype.
    """

    operands: list[Tensor]
    rows: list[list[float]]  # per operand, parameter_row(...)
    base: Tensor | None = None
    kinds: tuple[str, ...] = ()
    consensus: bool = False
    normalize: bool = False
    seeds: list[int | None] = field(default_factory=list)  # per operand, for the RANDOM/RANKED draws
    cuts: list[tuple[int, int]] = field(default_factory=list)  # per operand, a BAND's tie cuts
    compute_dtype: torch.dtype | None = None
    # weighted sums: the dtype the operands are rounded to before the arithmetic (None: compute);
    # mergekit's linear reads its inputs in the recipe's dtype and sums them in float32
    input_dtype: torch.dtype | None = None
    divisor: float = 1.0  # weighted sums: the sum is divided by it (mergekit's linear normalizes so)
    form: str = SUM
    # SCALED: [operands, R, W] coefficients, R = 1 or the rows, W = 1 or the row width (one number
    # per row, per column or for the whole tensor: small, whatever the tensor's size)
    scales: Tensor | None = None
    mask: Tensor | None = None  # SCE, MASKED: which entries the task vectors keep (bool, the tensor's shape)
    t: float = 0.0  # NEARSWAP: the largest step per entry


RANDOM_KINDS = (RANDOM, RANKED, RANKED_RESCALED)
RANKED_KINDS = (RANKED, RANKED_RESCALED)


M32 = 0xFFFFFFFF


def pcg_hash(x: Any) -> Any:
    """The PCG-RXS-M-XS 32-bit hash (Jarzynski & Olano 2020, "Hash Functions for GPU Rendering",
    JCGT 9(3)): a bijective mixer of uniform quality. Works on Python ints and int64 tensors (every
    product stays below 2^63, so nothing overflows), and gives the same bits on every device."""
    state = (x * 747796405 + 2891336453) & M32
    word = (((state >> ((state >> 28) + 4)) ^ state) * 277803737) & M32
    return ((word >> 22) ^ word) & M32


def draw_key(seed: int) -> int:
    """A model's 32-bit key for its draws, from its 63-bit seed."""
    return int(pcg_hash(pcg_hash(seed >> 32) ^ (seed & M32)))


def uniforms(positions: Tensor, key: Tensor, dtype: torch.dtype) -> Tensor:
    """Uniform [0, 1) draws, a pure function of (key, entry position): computed inside the fused
    kernel, so the random methods keep no draws in memory, regenerate them for free, and give
    the same draws on CPU and GPU. 24 random bits, exact in float32."""
    bits = pcg_hash((positions & M32) ^ key) >> 8
    return bits.to(dtype) * (1.0 / (1 << 24))


def _sparsified(
    delta: Tensor, kind: str, row: Tensor, positions: Tensor, key: Tensor, cuts: Tensor, rank: Tensor | None
) -> Tensor:
    if kind == KEEP_ALL:
        return delta
    if kind == BAND:
        # the ranks [lo, hi] of (|delta|, position) ascending: exact k even where magnitudes tie.
        # Written as "not outside the band" so a NaN entry stays NaN (a broken model shows).
        magnitude = delta.abs()
        below = (magnitude < row[LO]) | ((magnitude == row[LO]) & (positions < cuts[0]))
        above = (magnitude > row[HI]) | ((magnitude == row[HI]) & (positions > cuts[1]))
        return delta * ~(below | above) * row[SCALE]
    uniform = uniforms(positions, key, delta.dtype)
    if kind == RANDOM:
        return delta * (uniform < row[DENSITY]) * row[SCALE]
    # DELLA (Deep et al. 2024): keep probability rises linearly with the magnitude rank in the row.
    assert rank is not None
    epsilon = row[EPSILON]
    probability = (row[DENSITY] - epsilon) + 2 * epsilon * rank
    kept = delta * (uniform < probability)
    return kept / probability if kind == RANKED_RESCALED else kept


def _task_vector_kernel(
    out: Tensor,
    base: Tensor,
    operands: list[Tensor],
    kinds: tuple[str, ...],
    rows: Tensor,
    start: Tensor,
    keys: Tensor,
    cuts: Tensor,
    ranks: list[Tensor | None],
    consensus: bool,
    normalize: bool,
    compute: torch.dtype,
) -> None:
    """out = base + lam * merged task vectors, all tensors flat, rows [models, 7], every step in
    `compute`; `start` (0-d int64) is the first entry's position in the whole tensor, `keys`
    [models] the random kinds' draw keys and `cuts` [models, 2] the BAND kinds' tie cuts. Without
    consensus the WEIGHT column holds each model's coefficient (normalization already folded in);
    with it, TIES sign election (Yadav et al. 2023): the majority sign of sum_i w_i s_i (zero counts
    as positive), entries of w_i s_i with that sign kept, divided by the summed weights of the kept
    entries when normalizing."""
    base = base.to(compute)
    # a static tuple: no position index otherwise (an eager run would allocate it)
    positional = any(kind in RANDOM_KINDS or kind == BAND for kind in kinds)
    positions = torch.arange(out.numel(), device=out.device) + start if positional else start
    weighted = [
        _sparsified(operand.to(compute) - base, kind, rows[i], positions, keys[i], cuts[i], ranks[i])
        * rows[i, WEIGHT]
        for i, (operand, kind) in enumerate(zip(operands, kinds, strict=True))
    ]
    lam = rows[0, LAMBDA]
    if not consensus:
        out.copy_(base + _total(weighted) * lam)
        return
    positive = _total(weighted) >= 0
    agree = [torch.where(positive, w > 0, w < 0) for w in weighted]
    mixed = _total([torch.where(a, w, 0.0) for a, w in zip(agree, weighted, strict=True)])
    if normalize:
        divisor = _total([torch.where(a, rows[i, WEIGHT], 0.0) for i, a in enumerate(agree)])
        mixed = mixed / torch.where(divisor == 0, 1.0, divisor)
    out.copy_(base + mixed * lam)


def _total(terms: list[Tensor]) -> Tensor:
    return sum(terms[1:], terms[0])


def _weighted_sum_kernel(
    out: Tensor, tensors: list[Tensor], rows: Tensor, divisor: Tensor, load: torch.dtype, compute: torch.dtype
) -> None:
    total = _total([t.to(load).to(compute) * rows[i, WEIGHT] for i, t in enumerate(tensors)])
    out.copy_(total / divisor)  # 1 unless a method normalizes after the sum (exact either way)


def _scaled_kernel(
    out: Tensor, base: Tensor | None, tensors: list[Tensor], scales: Tensor, compute: torch.dtype
) -> None:
    """out = [base +] sum_i scales[i] * (tensors[i] [- base]) over (rows, width) views; scales[i]
    broadcasts as one value per row, per column or for the whole chunk."""
    if base is None:
        out.copy_(_total([t.to(compute) * scales[i] for i, t in enumerate(tensors)]))
        return
    origin = base.to(compute)
    out.copy_(origin + _total([(t.to(compute) - origin) * scales[i] for i, t in enumerate(tensors)]))


def _nearswap_kernel(out: Tensor, base: Tensor, other: Tensor, t: Tensor, compute: torch.dtype) -> None:
    """NearSwap: weight = clamp(t / max(|base - other|, 1e-6), 0, 1) per entry, out = base + weight *
    (other - base) written as mergekit's weight * other + (1 - weight) * base: entries that differ
    by less than t take the other model's value, the rest move by t towards it."""
    a, b = base.to(compute), other.to(compute)
    weight = (t / (a - b).abs().clamp(min=1e-6)).clamp(0, 1)
    out.copy_(weight * b + (1 - weight) * a)


def _sce_kernel(
    out: Tensor, base: Tensor, tensors: list[Tensor], mask: Tensor | None, rows: Tensor, compute: torch.dtype
) -> None:
    """SCE fusion (Wan et al. 2024, FuseChat): the task vectors restricted to `mask`, a TIES sign
    election over their plain sum (zero entries agree with neither sign), each agreeing entry
    weighted by its model's WEIGHT (mean square of its masked task vector, normalized), divided by
    the agreeing weights (at least 1e-6)."""
    origin = base.to(compute)
    deltas = [t.to(compute) - origin for t in tensors]
    if mask is not None:
        deltas = [d * mask for d in deltas]
    positive = _total(deltas) >= 0
    agreeing = [rows[i, WEIGHT] * torch.where(positive, d > 0, d < 0) for i, d in enumerate(deltas)]
    merged = _total([d * w for d, w in zip(deltas, agreeing, strict=True)])
    out.copy_(origin + merged / _total(agreeing).clamp(min=1e-6))


def ram_masks(base: Tensor, tensors: list[Tensor], epsilon: Tensor, compute: torch.dtype) -> tuple:
    """RAM's masks over flat chunks: the task vectors, where each model contributes (|delta| >
    epsilon), and how many models contribute to each entry."""
    origin = base.to(compute)
    deltas = [t.to(compute) - origin for t in tensors]
    kept = [d.abs() > epsilon for d in deltas]
    return deltas, kept, _total([k.to(torch.int64) for k in kept])


def _ram_kernel(out: Tensor, base: Tensor, tensors: list[Tensor], rows: Tensor, compute: torch.dtype) -> None:
    """RAM (Reinforced Agent Merging, arXiv 2601.13572): an entry that one model alone changes (by
    more than EPSILON) takes that model's task vector times its WEIGHT (RAM+'s unique-entry
    scale; 1 for RAM); an entry several models change takes the mean of their task vectors."""
    deltas, kept, counts = ram_masks(base, tensors, rows[0, EPSILON], compute)
    zeroed = [d * k for d, k in zip(deltas, kept, strict=True)]
    unique, shared = counts == 1, counts > 1
    divisor = counts.clamp(min=1)
    terms = [z * unique * rows[i, WEIGHT] + z * shared / divisor for i, z in enumerate(zeroed)]
    out.copy_(base.to(compute) + _total(terms))


def _masked_kernel(out: Tensor, base: Tensor, other: Tensor, mask: Tensor, compute: torch.dtype) -> None:
    origin = base.to(compute)
    out.copy_(origin + (other.to(compute) - origin) * mask)


# Compilation pays over many candidates; in a one-shot merge only past this many merged input
# entries. Measured on 2 CPU cores (benchmarks/bench_oneshot.py, SmolLM2-135M, 2 parents): a cold
# compile of the TIES kernels cost ~30 s, and the compiled kernels saved ~15 ns per parent entry
# (a warm in-process re-merge took 30.8 s compiled vs 35.0 s eager for 2 x 135 M entries); the
# break-even is ~2 G entries, e.g. a 7B model with one parent.
COMPILE_PAYS_ENTRIES = 2_000_000_000


def compile_pays(merged_entries: int) -> bool:
    """Whether a one-shot merge of `merged_entries` input entries (every merged model's tensors,
    the base excluded) saves more than it spends compiling."""
    return merged_entries >= COMPILE_PAYS_ENTRIES


@contextmanager
def compiling(enabled: bool) -> Iterator[None]:
    """Kernels inside run compiled (the default) or eagerly; `EVOMERGE_COMPILE=0` still wins."""
    previous, _Kernel.enabled = _Kernel.enabled, enabled
    try:
        yield
    finally:
        _Kernel.enabled = previous


class _Kernel:
    """A kernel run compiled (once per structure, dynamic shapes) or eagerly."""

    broken = False  # set once compilation failed in this process: everything runs eagerly after
    enabled = True  # `compiling(False)`: a one-shot merge too small for compilation to pay

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self._compiled: Callable[..., Any] | None = None

    def __call__(self, *args: Any) -> Any:
        if os.environ.get("EVOMERGE_COMPILE", "1") == "0" or _Kernel.broken or not _Kernel.enabled:
            return self.fn(*args)
        if self._compiled is None:
            # One compiled variant per structure (models, sparsifier, consensus, normalize, dtypes):
            # more than dynamo's default 8 in a process that runs many methods.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            # Eager numerics for low-precision casts: without it Inductor skips the rounding of
            # `x.to(bfloat16)` inside a fused chain, and a bf16 merge of fp32 checkpoints differed
            # from eager (and from mergekit, which casts first) on ~97% of |delta| entries.
            self._compiled = torch.compile(self.fn, dynamic=True, options={"emulate_precision_casts": True})
        try:
            return self._compiled(*args)
        except Exception as error:  # a compiler failure; a real input error fails eagerly too
            result = self.fn(*args)
            _Kernel.broken = True
            warnings.warn(
                f"torch.compile is unavailable here ({type(error).__name__}: {str(error)[:200]}); merges run "
                "eagerly (several times slower). Install a C++ compiler (CPU) or triton (GPU) to fuse them.",
                RuntimeWarning,
                stacklevel=3,
            )
            return result


def _bracket_kernel(
    magnitude: Tensor, inside: Tensor, tensor: Tensor, base: Tensor, bounds: Tensor, compute: torch.dtype
) -> None:
    """|tensor - base| in `compute`, and whether it lies strictly between bounds[0] and bounds[1]
    (one pass)."""
    value = (tensor.to(compute) - base.to(compute)).abs()
    magnitude.copy_(value)
    inside.copy_((value > bounds[0]) & (value < bounds[1]))


def _band_kernel(tensor: Tensor, base: Tensor, bounds: Tensor, compute: torch.dtype) -> Tensor:
    """[count, sum] of |tensor - base| over bounds[0] <= |.| <= bounds[1], in float64 (one pass).
    Returned, not copied into an out tensor: Inductor dropped a reduction's copy into a 0-d input."""
    value = (tensor.to(compute) - base.to(compute)).abs()
    inside = (value >= bounds[0]) & (value <= bounds[1])
    total = torch.where(inside, value, 0).to(torch.float64).sum()
    return torch.stack([inside.to(torch.float64).sum(), total])


def _equal_kernel(equal: Tensor, tensor: Tensor, base: Tensor, value: Tensor, compute: torch.dtype) -> None:
    """Whether |tensor - base| in `compute` equals value[0] (one pass)."""
    equal.copy_((tensor.to(compute) - base.to(compute)).abs() == value[0])


_task_vector = _Kernel(_task_vector_kernel)
_weighted_sum = _Kernel(_weighted_sum_kernel)
_scaled = _Kernel(_scaled_kernel)
_nearswap = _Kernel(_nearswap_kernel)
_sce = _Kernel(_sce_kernel)
_masked = _Kernel(_masked_kernel)
_ram = _Kernel(_ram_kernel)
_bracket = _Kernel(_bracket_kernel)
_band = _Kernel(_band_kernel)
_equal = _Kernel(_equal_kernel)


def on_device(values: Any, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A small tensor of `values` on `device`, queued without a host sync: a plain host-to-device
    copy (`torch.tensor(..., device=cuda)`) waits for every kernel queued before it, a copy from
    pinned memory is queued behind them."""
    host = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def between(tensor: Tensor, base: Tensor, bounds: Tensor, compute: torch.dtype) -> Tensor:
    """The magnitudes |tensor - base| (flat chunks of equal shape) with bounds[0] < |.| < bounds[1]."""
    magnitude = torch.empty(tensor.shape, dtype=compute, device=tensor.device)
    inside = torch.empty(tensor.shape, dtype=torch.bool, device=tensor.device)
    _bracket(magnitude, inside, tensor, base, bounds, compute)
    return magnitude[inside]


def band(tensor: Tensor, base: Tensor, bounds: Tensor, compute: torch.dtype) -> Tensor:
    """[how many, sum] of |tensor - base| over bounds[0] <= |.| <= bounds[1], float64, left on the
    tensor's device (a caller sums its chunks there and reads the total once)."""
    return _band(tensor, base, bounds, compute)


def equal_counts(tensor: Tensor, base: Tensor, value: Tensor, compute: torch.dtype) -> Tensor:
    """The running count of the entries with |tensor - base| == value[0] (flat chunks), on their
    device: where it first reaches k is the k-th such entry. int32: a chunk holds < 2^31 entries."""
    equal = torch.empty(tensor.shape, dtype=torch.bool, device=tensor.device)
    _equal(equal, tensor, base, value, compute)
    return equal.cumsum(0, dtype=torch.int32)


def chunk_entries(row_width: int, device: torch.device) -> int:
    """How many entries one kernel call takes: whole rows (DELLA ranks within a row), ~4M entries on
    CPU and ~32M on a GPU, so per-call temporaries (DELLA's ranks, an eager fallback's
    intermediates) stay tens of MB whatever the tensor's size."""
    target = 1 << (25 if device.type == "cuda" else 22)
    return max(1, target // row_width) * row_width


def row_ranks(delta: Tensor, width: int) -> Tensor:
    """Rank of |delta| within each row of `width` entries, scaled to [0, 1] (DELLA's MAGPRUNE);
    ties broken by position (a stable sort), so every run and device ranks alike. One sort and a
    scatter of the positions (the inverse permutation), not two sorts."""
    rows = delta.abs().reshape(-1, width)
    order = rows.argsort(dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(width, device=delta.device).expand_as(order))
    return (ranks.to(delta.dtype) / max(width - 1, 1)).reshape(-1)


def run(out: Tensor, call: KernelCall) -> Tensor:
    """Write one tensor's merge into `out` (through a temporary when `out` is not contiguous), in
    chunks of whole rows so DELLA's ranks (and an eager run's temporaries) never take a full-size
    tensor."""
    reference = call.base if call.base is not None else call.operands[0]
    compute = call.compute_dtype or reference.dtype
    rows = on_device(call.rows, compute, reference.device)
    target = out if out.is_contiguous() else torch.empty(out.shape, dtype=out.dtype, device=out.device)
    flat_out = target.view(-1)
    operands = [t.reshape(-1) for t in call.operands]
    base = None if call.base is None else call.base.reshape(-1)
    width = reference.shape[-1] if reference.dim() > 1 else max(reference.numel(), 1)
    step = chunk_entries(width, reference.device)
    seeds = call.seeds or [None] * len(operands)
    device = reference.device
    keys = on_device([draw_key(seed) if seed is not None else 0 for seed in seeds], torch.int64, device)
    cuts = on_device(call.cuts or [NO_CUTS] * len(operands), torch.int64, device)
    divisor = on_device(call.divisor, compute, device)
    if call.form != SUM:
        _run_form(flat_out, base, operands, call, rows, width, step, compute)
        return out if target is out else out.copy_(target)
    for start in range(0, max(flat_out.numel(), 1), step):
        part = slice(start, start + step)
        if base is None:
            load = call.input_dtype or compute
            _weighted_sum(flat_out[part], [t[part] for t in operands], rows, divisor, load, compute)
            continue
        ranks: list[Tensor | None] = []
        for operand, kind, seed in zip(operands, call.kinds, seeds, strict=True):
            if kind in RANDOM_KINDS:
                assert seed is not None, "random sparsifiers need a seed"
            ranked = kind in RANKED_KINDS
            ranks.append(
                row_ranks(operand[part].to(compute) - base[part].to(compute), width) if ranked else None
            )
        offset = on_device(start, torch.int64, device)
        _task_vector(
            flat_out[part], base[part], [t[part] for t in operands], call.kinds, rows, offset, keys, cuts,
            ranks, call.consensus, call.normalize, compute,
        )  # fmt: skip
    return out if target is out else out.copy_(target)


def _run_form(
    flat_out: Tensor,
    base: Tensor | None,
    operands: list[Tensor],
    call: KernelCall,
    rows: Tensor,
    width: int,
    step: int,
    compute: torch.dtype,
) -> None:
    """The SCALED, NEARSWAP, SCE, MASKED and RAM forms, chunk by chunk of whole rows."""
    device = flat_out.device
    scales = None if call.scales is None else call.scales.to(device=device, dtype=compute)
    mask = None if call.mask is None else call.mask.reshape(-1).to(device)
    t = on_device(call.t, compute, device)
    for start in range(0, max(flat_out.numel(), 1), step):
        part = slice(start, start + step)
        chunk_base = None if base is None else base[part]
        chunk = [operand[part] for operand in operands]
        if call.form == NEARSWAP:
            assert chunk_base is not None
            _nearswap(flat_out[part], chunk_base, chunk[0], t, compute)
        elif call.form == MASKED:
            assert chunk_base is not None and mask is not None
            _masked(flat_out[part], chunk_base, chunk[0], mask[part], compute)
        elif call.form == SCE:
            assert chunk_base is not None
            _sce(flat_out[part], chunk_base, chunk, None if mask is None else mask[part], rows, compute)
        elif call.form == RAM:
            assert chunk_base is not None
            _ram(flat_out[part], chunk_base, chunk, rows, compute)
        else:
            assert scales is not None
            local = scales
            if scales.shape[1] > 1:  # one coefficient per row: this chunk's rows
                local = scales[:, start // width : (start + step) // width]
            views = [c.view(-1, width) for c in chunk]
            _scaled(
                flat_out[part].view(-1, width),
                None if chunk_base is None else chunk_base.view(-1, width),
                views,
                local,
                compute,
            )
