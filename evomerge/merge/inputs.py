"""What a merge method sees for one output tensor (`TensorInputs`), and the kernel calls the method
families share: a weighted sum, and the whole-tensor reductions (Gram matrices) with the scaled
combination they feed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from evomerge.merge import kernels
from evomerge.merge.magnitude import DeltaStats


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


def weighted(
    inputs: TensorInputs, tensors: list[Tensor], coefficients: list[float], compute: torch.dtype | None = None
) -> kernels.KernelCall:
    """sum_i coefficients[i] * tensors[i], in `compute` (default: the recipe's compute dtype)."""
    return kernels.KernelCall(
        operands=tensors,
        rows=[kernels.parameter_row(c) for c in coefficients],
        compute_dtype=compute or inputs.compute_dtype,
    )


# --- methods built on whole-tensor reductions ------------------------------------------------
# Norms, angles and variances need a pass over the whole tensor before anything is written: they
# are computed chunk by chunk (nothing full-size per model), reduced to a few numbers per tensor
# (or per row), and the result is then written by one SCALED kernel pass.

Axis = Literal["tensor", "rows", "columns"]


def grams(tensors: list[Tensor], base: Tensor | None, compute: torch.dtype, axis: Axis) -> Tensor:
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


def combination(
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


def compute_of(inputs: TensorInputs) -> torch.dtype:
    reference = inputs.base if inputs.base is not None else inputs.tensors[0]
    return inputs.compute_dtype or reference.dtype
