"""The methods of no family: passthrough, model stock, nearswap, SCE, RAM and Arcee Fusion."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from evomerge.merge import kernels
from evomerge.merge.inputs import Axis, TensorInputs, combination, compute_of, grams, weighted
from evomerge.merge.magnitude import DeltaStats


def _passthrough(inputs: TensorInputs) -> kernels.KernelCall:
    """The one source's tensor, times its `scale` (mergekit's passthrough: with slices, layer
    stacking from several models, e.g. the frankenmerges of Goddard et al. 2024, MergeKit)."""
    return weighted(inputs, inputs.tensors, [float(inputs.model_params[0]["scale"])])


def _model_stock(inputs: TensorInputs) -> kernels.KernelCall:
    """Model Stock (Jang et al. 2024, eq. 6): with theta the mean pairwise angle between the task
    vectors (cos clamped to [-1, 1], norms at least 1e-6), t = n cos / (1 + (n - 1) cos) and the
    merge base + t * (mean of the models - base); t = 0 where the denominator vanishes (|.| < 1e-6).
    `filter_wise`: one angle per row (output filter) instead of one per tensor."""
    assert inputs.base is not None
    axis: Axis = "rows" if inputs.global_params["filter_wise"] else "tensor"
    gram = grams(inputs.tensors, inputs.base, compute_of(inputs), axis)  # [R, n, n]
    n = gram.shape[-1]
    norms = gram.diagonal(dim1=-2, dim2=-1).sqrt()
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
    cosines = [(gram[:, a, b] / (norms[:, a] * norms[:, b]).clamp(min=1e-6)).clamp(-1, 1) for a, b in pairs]
    cos = torch.stack(cosines).mean(dim=0)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, 0.0, n * cos / torch.where(singular, 1.0, denominator))
    return combination(inputs, inputs.tensors, (t / n).unsqueeze(-1).expand(-1, n), axis, inputs.base)


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
    compute = compute_of(inputs)
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
        compute = compute_of(inputs)
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
    compute = compute_of(inputs)
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


COMPUTE: dict[str, Callable[[TensorInputs], kernels.KernelCall]] = {
    "passthrough": _passthrough,
    "model_stock": _model_stock,
    "nearswap": _nearswap,
    "sce": _sce,
    "ram": _ram(plus=False),
    "ramplus_tl": _ram(plus=True),
    "arcee_fusion": _arcee_fusion,
}
