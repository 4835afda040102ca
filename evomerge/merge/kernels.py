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
with one warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

# How a model's task vector is sparsified before the sum.
KEEP_ALL = "all"  # no sparsification (density 1, or plain task arithmetic)
BAND = "band"  # keep lo <= |delta| <= hi (TIES trim: hi = inf; breadcrumbs: both), times SCALE
RANDOM = "random"  # keep where uniform < DENSITY (DARE), times SCALE
RANKED = "ranked"  # keep where uniform < p(rank) (DELLA), kept entries not rescaled
RANKED_RESCALED = "ranked_rescaled"  # the same, kept entries divided by p(rank)

# Columns of the per-model parameter matrix (one row per merged model).
WEIGHT, LO, HI, DENSITY, EPSILON, SCALE = range(6)
N_COLUMNS = 6


def parameter_row(weight: float, **values: float) -> list[float]:
    """One model's row of the parameter matrix; unnamed columns keep-everything defaults."""
    row = [weight, 0.0, float("inf"), 1.0, 0.0, 1.0]
    for name, value in values.items():
        row[{"lo": LO, "hi": HI, "density": DENSITY, "epsilon": EPSILON, "scale": SCALE}[name]] = value
    return row


def _sparsified(delta: Tensor, kind: str, row: Tensor, uniform: Tensor | None, rank: Tensor | None) -> Tensor:
    if kind == KEEP_ALL:
        return delta
    if kind == BAND:
        magnitude = delta.abs()
        return delta * ((magnitude >= row[LO]) & (magnitude <= row[HI])) * row[SCALE]
    assert uniform is not None
    if kind == RANDOM:
        return delta * (uniform < row[DENSITY]) * row[SCALE]
    # DELLA (Deep et al. 2024): keep probability rises linearly with the magnitude rank in the row.
    assert rank is not None
    probability = (row[DENSITY] - row[EPSILON]) + 2 * row[EPSILON] * rank
    kept = delta * (uniform < probability)
    return kept / probability if kind == RANKED_RESCALED else kept


def _task_vector_kernel(
    out: Tensor,
    base: Tensor,
    deltas: list[Tensor],
    kinds: tuple[str, ...],
    rows: Tensor,
    uniforms: list[Tensor | None],
    ranks: list[Tensor | None],
    lam: Tensor,
    consensus: bool,
    normalize: bool,
) -> None:
    """out = base + lam * merged task vectors. Without consensus the WEIGHT column holds each
    model's coefficient (normalization already folded in); with it, TIES sign election (Yadav et
    al. 2023): the majority sign of sum_i w_i s_i (zero counts as positive), entries of w_i s_i
    with that sign kept, divided by the summed weights of the kept entries when normalizing."""
    sparse = [
        _sparsified(delta, kind, rows[i], uniforms[i], ranks[i])
        for i, (delta, kind) in enumerate(zip(deltas, kinds, strict=True))
    ]
    weighted = [s * rows[i, WEIGHT] for i, s in enumerate(sparse)]
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


def _weighted_sum_kernel(out: Tensor, tensors: list[Tensor], coefficients: Tensor) -> None:
    out.copy_(_total([t * coefficients[i] for i, t in enumerate(tensors)]))


class _Kernel:
    """A kernel run compiled (once per structure, dynamic shapes) or eagerly."""

    broken = False  # set once compilation failed in this process: everything runs eagerly after

    def __init__(self, fn: Callable[..., None]) -> None:
        self.fn = fn
        self._compiled: Callable[..., None] | None = None

    def __call__(self, *args: Any) -> None:
        if os.environ.get("EVOMERGE_COMPILE", "1") == "0" or _Kernel.broken:
            self.fn(*args)
            return
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, dynamic=True)
        try:
            self._compiled(*args)
        except Exception as error:  # a compiler failure; a real input error fails eagerly too
            self.fn(*args)
            _Kernel.broken = True
            warnings.warn(
                f"torch.compile is unavailable here ({type(error).__name__}: {str(error)[:200]}); merges run "
                "eagerly (several times slower). Install a C++ compiler (CPU) or triton (GPU) to fuse them.",
                RuntimeWarning,
                stacklevel=3,
            )


_task_vector = _Kernel(_task_vector_kernel)
_weighted_sum = _Kernel(_weighted_sum_kernel)


def _flat(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.reshape(-1)


def _run_into(out: Tensor, run: Callable[[Tensor], None]) -> Tensor:
    """Run a kernel writing into `out` through a flat view (a temporary for non-contiguous outputs)."""
    if out.is_contiguous():
        run(out.view(-1))
        return out
    flat = torch.empty(out.numel(), dtype=out.dtype, device=out.device)
    run(flat)
    return out.copy_(flat.view(out.shape))


def task_vector_merge(
    out: Tensor,
    base: Tensor,
    deltas: Sequence[Tensor],
    kinds: Sequence[str],
    rows: Sequence[Sequence[float]],
    *,
    lam: float,
    consensus: bool,
    normalize: bool,
    uniforms: Sequence[Tensor | None] | None = None,
    ranks: Sequence[Tensor | None] | None = None,
) -> Tensor:
    """Write base + lam * (merged task vectors) into `out` (see `_task_vector_kernel`)."""
    n = len(deltas)
    table = torch.tensor(rows, dtype=base.dtype, device=base.device).reshape(n, N_COLUMNS)
    scale = torch.tensor(lam, dtype=base.dtype, device=base.device)
    flat_uniforms = [_flat(u) for u in (uniforms or [None] * n)]
    flat_ranks = [_flat(r) for r in (ranks or [None] * n)]
    flat_deltas = [d.reshape(-1) for d in deltas]

    def run(target: Tensor) -> None:
        _task_vector(
            target, base.reshape(-1), flat_deltas, tuple(kinds), table, flat_uniforms, flat_ranks, scale,
            consensus, normalize,
        )  # fmt: skip

    return _run_into(out, run)


def weighted_sum(out: Tensor, tensors: Sequence[Tensor], coefficients: Sequence[float]) -> Tensor:
    """Write sum_i coefficients[i] * tensors[i] into `out`."""
    reference = tensors[0]
    table = torch.tensor(list(coefficients), dtype=reference.dtype, device=reference.device)
    flat = [t.reshape(-1) for t in tensors]
    return _run_into(out, lambda target: _weighted_sum(target, flat, table))
