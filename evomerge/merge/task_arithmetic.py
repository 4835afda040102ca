"""The task-arithmetic family (mergekit's "generalized task arithmetic") and linear.

delta_i = model_i - base; sparsify each delta; weight; optionally keep only the entries that agree
with the majority sign (TIES, Yadav et al. 2023); sum, optionally divide by the summed weights
("normalize"), scale by lambda, add to the base. One fused kernel does it all (kernels.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from evomerge.errors import CandidateError, ConfigError
from evomerge.merge import kernels
from evomerge.merge.inputs import TensorInputs, weighted
from evomerge.merge.magnitude import Cut, DeltaStats

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
    call = weighted(inputs, inputs.tensors, weights)
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


COMPUTE: dict[str, Callable[[TensorInputs], kernels.KernelCall]] = {
    "linear": _linear,
    "task_arithmetic": _task_arithmetic(None, False),
    "ties": _task_arithmetic(_magnitude, True),
    "dare_ties": _task_arithmetic(_random_drop, True),
    "dare_linear": _task_arithmetic(_random_drop, False),
    "breadcrumbs": _task_arithmetic(_magnitude_outliers, False),
    "breadcrumbs_ties": _task_arithmetic(_magnitude_outliers, True),
    "della": _task_arithmetic(_magnitude_prune, True),
    "della_linear": _task_arithmetic(_magnitude_prune, False),
}
