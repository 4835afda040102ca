"""The fused merge kernels: compiled and eager runs agree, and a missing compiler falls back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from recipes import LIVE_CASES, recipes

from evomerge.merge import kernels
from evomerge.merge.live import LiveMerger
from evomerge.recipe import MergeRecipe

CASES = LIVE_CASES


@pytest.fixture(scope="module")
def live(tiny_family: tuple[Path, list[Path]]) -> LiveMerger:
    base, parents = tiny_family
    return LiveMerger(base, parents)


@pytest.mark.parametrize("case", CASES)
def test_compiled_equals_eager(case: str, live: LiveMerger, tiny_family, monkeypatch) -> None:
    base, parents = tiny_family
    recipe = MergeRecipe.from_dict(recipes(base, parents)[case])
    monkeypatch.setenv("EVOMERGE_COMPILE", "1")
    compiled = {name: t.clone() for name, t in live.apply(recipe).state_dict().items()}
    assert not kernels._Kernel.broken, "torch.compile fell back to eager on this machine"
    monkeypatch.setenv("EVOMERGE_COMPILE", "0")
    eager = live.apply(recipe).state_dict()
    for name, tensor in compiled.items():
        torch.testing.assert_close(tensor, eager[name], rtol=1e-6, atol=1e-6 * float(eager[name].abs().max()))


def test_a_failing_compiler_falls_back_to_eager_with_a_warning(monkeypatch) -> None:
    def no_compiler(fn, **_):
        def broken(*args):
            raise RuntimeError("no C++ compiler")

        return broken

    monkeypatch.setenv("EVOMERGE_COMPILE", "1")
    monkeypatch.setattr(torch, "compile", no_compiler)
    monkeypatch.setattr(kernels._Kernel, "broken", False)
    kernel = kernels._Kernel(kernels._weighted_sum_kernel)
    out = torch.empty(3)
    with pytest.warns(RuntimeWarning, match="torch.compile is unavailable here .*no C\\+\\+ compiler"):
        rows = torch.tensor([kernels.parameter_row(2.0), kernels.parameter_row(0.5)])
        kernel(out, [torch.ones(3), torch.arange(3.0)], rows, torch.float32)
    torch.testing.assert_close(out, torch.tensor([2.0, 2.5, 3.0]))
    assert kernels._Kernel.broken  # later calls go straight to eager


def test_non_contiguous_outputs_are_written() -> None:
    out = torch.zeros(4, 3).t()  # a transposed view
    call = kernels.KernelCall([torch.ones(3, 4), torch.ones(3, 4)], [[1.0] + [0] * 6, [2.0] + [0] * 6])
    kernels.run(out, call)
    assert torch.equal(out, torch.full((3, 4), 3.0))
