"""The spherical family: slerp, nuslerp, multislerp and the Karcher mean (interpolation along the
sphere the weights lie near, from their norms and angles)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from evomerge.errors import CandidateError
from evomerge.merge import kernels
from evomerge.merge.inputs import Axis, TensorInputs, combination, compute_of, grams, weighted
from evomerge.merge.magnitude import DeltaStats


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
    return weighted(inputs, [v0, v1], [c0, c1], compute)


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
    gram = grams(inputs.tensors, inputs.base, compute_of(inputs), axis)
    norms = gram.diagonal(dim1=-2, dim2=-1).sqrt().clamp(min=1e-7)
    cos = (gram[:, 0, 1] / (norms[:, 0] * norms[:, 1])).clamp(-1, 1)
    colinear = (1 - cos.square()) <= 1e-16
    theta = torch.acos(torch.where(colinear, 0.0, cos))
    sin = torch.where(colinear, 1.0, torch.sin(theta))
    c0 = torch.where(colinear, 1 - t, torch.sin((1 - t) * theta) / sin)
    c1 = torch.where(colinear, t, torch.sin(t * theta) / sin)
    return combination(inputs, inputs.tensors, torch.stack([c0, c1], dim=-1), axis, inputs.base)


def _karcher(inputs: TensorInputs) -> kernels.KernelCall:
    """The Karcher (Riemannian) mean of the models' directions on the unit sphere (Karcher 1977;
    Grove & Karcher 1973), equal weights, by gradient steps along the tangent mean (at most
    `max_iter`, stopping when the tangent is shorter than `tol`), rescaled by the mean norm.
    Every iterate is a combination of the inputs, so the steps run on their Gram matrix alone."""
    tensors = inputs.tensors
    n = len(tensors)
    if n == 1:
        return weighted(inputs, tensors, [1.0])
    tol, max_iter = float(inputs.global_params["tol"]), int(inputs.global_params["max_iter"])
    gram = grams(tensors, None, compute_of(inputs), "tensor")[0]
    norms = gram.diagonal().sqrt()
    alphas = [1.0 / n] * n
    valid = [i for i in range(n) if norms[i] > tol]
    if not valid:
        return weighted(inputs, tensors, [0.0] * n)
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
    return weighted(inputs, tensors, (scale * mean).tolist())


def _multislerp(inputs: TensorInputs) -> kernels.KernelCall:
    """Multi-SLERP (barycentric interpolation on the hypersphere; Buss & Fillmore 2001, as in
    mergekit's multislerp): unit vectors x_i / (|x_i| + eps) of the models (their task vectors when
    a base is given), mapped to the tangent space at their normalized weighted mean, averaged with
    the weights, mapped back by the exponential map and scaled by the weighted mean norm."""
    tensors = inputs.tensors
    if len(tensors) == 1:
        return weighted(inputs, tensors, [1.0])
    eps = float(inputs.global_params["eps"])
    weights = torch.tensor([float(p["weight"]) for p in inputs.model_params], dtype=torch.float64)
    if inputs.global_params["normalize_weights"]:
        weights = weights / weights.sum()
    gram = grams(tensors, inputs.base, compute_of(inputs), "tensor")[0]
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
    return combination(inputs, tensors, coefficients.unsqueeze(0), "tensor", inputs.base)


COMPUTE: dict[str, Callable[[TensorInputs], kernels.KernelCall]] = {
    "slerp": _slerp,
    "nuslerp": _nuslerp,
    "karcher": _karcher,
    "multislerp": _multislerp,
}
