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


@pytest.mark.parametrize("case", ["ties", "breadcrumbs", "dare_ties"])
def test_low_precision_casts_round_as_in_eager(case: str, live: LiveMerger, tiny_family, monkeypatch) -> None:
    """A bf16 merge of fp32 checkpoints rounds each input to bf16 before the arithmetic, compiled
    as eagerly (and as mergekit casts): the magnitudes the selection compares are the same bits,
    so the same entries are kept and the tensors agree to bf16 rounding of the sums."""
    base, parents = tiny_family
    recipe = MergeRecipe.from_dict(recipes(base, parents)[case] | {"dtype": "bfloat16"})
    monkeypatch.setenv("EVOMERGE_COMPILE", "1")
    compiled = {name: t.clone() for name, t in live.apply(recipe).state_dict().items()}
    monkeypatch.setenv("EVOMERGE_COMPILE", "0")
    eager = live.apply(recipe).state_dict()
    for name, tensor in compiled.items():
        assert torch.equal(tensor, eager[name]), name


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
        divisor = torch.tensor(1.0)
        kernel(out, [torch.ones(3), torch.arange(3.0)], rows, divisor, torch.float32, torch.float32)
    torch.testing.assert_close(out, torch.tensor([2.0, 2.5, 3.0]))
    assert kernels._Kernel.broken  # later calls go straight to eager


def test_non_contiguous_outputs_are_written() -> None:
    out = torch.zeros(4, 3).t()  # a transposed view
    call = kernels.KernelCall([torch.ones(3, 4), torch.ones(3, 4)], [[1.0] + [0] * 6, [2.0] + [0] * 6])
    kernels.run(out, call)
    assert torch.equal(out, torch.full((3, 4), 3.0))


def test_draws_are_a_function_of_the_position_not_of_the_chunking(monkeypatch) -> None:
    """DARE/DELLA draws come from a hash of (seed, entry position) inside the kernel: the same
    keep mask whatever the chunk size (CPU and GPU chunk differently), nothing kept in memory."""
    from evomerge.merge.inputs import TensorInputs
    from evomerge.merge.magnitude import DeltaStats
    from evomerge.merge.methods import METHODS

    generator = torch.Generator().manual_seed(0)
    base = torch.randn(64, 48, generator=generator)
    parents = [base + 0.1 * torch.randn(64, 48, generator=generator) for _ in range(2)]

    def merge(method: str) -> torch.Tensor:
        params = [
            {"weight": 0.7, "density": 0.4, "epsilon": 0.1},
            {"weight": 0.5, "density": 0.6, "epsilon": 0.2},
        ]
        spec = METHODS.get(method)
        inputs = TensorInputs(
            name="t",
            base=base,
            tensors=parents,
            model_params=params,
            global_params={s.name: s.default for s in spec.params if s.scope == "global"},
            stats=[DeltaStats(p, base) for p in parents],
            seeds=[12345, 2**62 + 7],
        )
        return spec.merge(inputs)

    for method in ("dare_ties", "della"):
        whole = merge(method)
        monkeypatch.setattr(kernels, "chunk_entries", lambda width, device: 3 * width)  # 3 rows a call
        chunked = merge(method)
        monkeypatch.undo()
        assert torch.equal(whole, chunked), method


def test_the_hash_agrees_on_python_ints_and_tensors_and_draws_look_uniform() -> None:
    positions = torch.arange(200_000)
    key = kernels.draw_key(987654321)
    hashed = kernels.pcg_hash(positions ^ key)
    assert [int(v) for v in hashed[:50]] == [kernels.pcg_hash(p ^ key) for p in range(50)]
    draws = kernels.uniforms(positions, torch.tensor(key), torch.float32)
    assert float(draws.min()) >= 0 and float(draws.max()) < 1
    counts = torch.histc(draws, bins=10, min=0, max=1)
    assert float(counts.min()) > 0.97 * 20_000 and float(counts.max()) < 1.03 * 20_000
    other = kernels.uniforms(positions, torch.tensor(kernels.draw_key(987654322)), torch.float32)
    assert abs(float(torch.corrcoef(torch.stack([draws, other]))[0, 1])) < 0.01  # seeds 1 apart: unrelated
