"""Merge methods: the catalogue's declarations (`merge/catalog.py`) bound to their computations.

Each family module maps its method names to a small pure function over the tensors of one weight
(`TensorInputs` in, a fused-kernel call out: `kernels.py` computes it). Methods read the tensors in
their storage dtype and compute in the recipe's `dtype` (`TensorInputs.compute_dtype`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from torch import Tensor

from evomerge.merge import kernels, other_methods, spherical, task_arithmetic
from evomerge.merge.catalog import CATALOG, MethodSpec
from evomerge.merge.inputs import TensorInputs
from evomerge.registry import Registry


@dataclass(frozen=True, kw_only=True)
class MergeMethod(MethodSpec):
    fn: Callable[[TensorInputs], kernels.KernelCall]  # what to compute; kernels.py computes it

    @classmethod
    def bound(cls, spec: MethodSpec, fn: Callable[[TensorInputs], kernels.KernelCall]) -> MergeMethod:
        return cls(**{f.name: getattr(spec, f.name) for f in fields(MethodSpec)}, fn=fn)

    def call(self, inputs: TensorInputs) -> kernels.KernelCall:
        """The fused-kernel call that merges this tensor (run alone, or stacked with its layer peers)."""
        return self.fn(inputs)

    def merge(self, inputs: TensorInputs) -> Tensor:
        return kernels.run(inputs.output(), self.fn(inputs))


def _bind_all() -> Registry[MergeMethod]:
    compute = {**task_arithmetic.COMPUTE, **spherical.COMPUTE, **other_methods.COMPUTE}
    declared = set(CATALOG.names())
    if declared != set(compute):  # a method declared without a computation, or the reverse
        raise RuntimeError(f"catalogue and computations differ: {sorted(declared ^ set(compute))}")
    methods: Registry[MergeMethod] = Registry("merge method")
    for name in CATALOG.names():
        methods.add(name, MergeMethod.bound(CATALOG.get(name), compute[name]))
    return methods


METHODS = _bind_all()
