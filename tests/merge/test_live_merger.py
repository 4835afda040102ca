"""LiveMerger writes exactly the tensors `merge_to_directory` writes, for every method."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from recipes import LIVE_CASES, recipes
from safetensors.torch import load_file
from tiny import load_tensors

from evomerge.errors import ConfigError
from evomerge.merge.io import merge_to_directory
from evomerge.merge.live import LiveMerger
from evomerge.merge.methods import METHODS
from evomerge.recipe import MergeRecipe

CASES = LIVE_CASES


@pytest.fixture(scope="module")
def live(tiny_family: tuple[Path, list[Path]]) -> LiveMerger:
    base, parents = tiny_family
    return LiveMerger(base, parents)


def test_every_method_is_covered() -> None:
    covered = {recipes(Path("b"), [Path("p0"), Path("p1")])[name]["merge_method"] for name in CASES}
    assert covered == set(METHODS.names())


@pytest.mark.parametrize("case", CASES)
def test_live_equals_disk(case: str, live: LiveMerger, tiny_family, tmp_path: Path) -> None:
    base, parents = tiny_family
    recipe = MergeRecipe.from_dict(recipes(base, parents)[case])
    merge_to_directory(recipe, tmp_path / "out", progress=False)
    disk = load_tensors(tmp_path / "out")
    live.apply(MergeRecipe.from_dict(recipes(base, parents)["linear"]))  # a different candidate first
    live.apply(recipe)
    state = live.state_dict()
    assert set(disk) <= set(state)
    for name, tensor in disk.items():
        assert torch.equal(state[name], tensor), f"{case}: {name} differs"
    base_state = load_file(base / "model.safetensors")
    changed = [n for n in disk if not torch.equal(disk[n], base_state[n])]
    assert changed, "the merge must change some tensors"


def test_paths_are_matched_after_resolve(live: LiveMerger, tiny_family) -> None:
    base, parents = tiny_family
    spelled = Path(str(base) + "/./")
    live.apply(MergeRecipe.from_dict(recipes(spelled, parents)["ties"]))
    assert live.tokenizer_dir == spelled


def test_unknown_model_and_layer_count_are_refused(live: LiveMerger, tiny_family, tmp_path: Path) -> None:
    base, parents = tiny_family
    data = recipes(base, parents)["linear"]
    other = {**data, "models": [{"model": str(tmp_path), "parameters": {"weight": 1.0}}]}
    with pytest.raises(ConfigError, match="not loaded"):
        live.apply(MergeRecipe.from_dict(other))
    with pytest.raises(ConfigError, match="keep the base's layer count"):
        live.apply(MergeRecipe.from_dict(recipes(base, parents)["slerp_slices"]))


def test_live_model_generates(live: LiveMerger, tiny_family) -> None:
    base, parents = tiny_family
    model = live.apply(MergeRecipe.from_dict(recipes(base, parents)["dare_ties"]))
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)


def test_bfloat16_model_holds_the_float32_merge_rounded(live: LiveMerger, tiny_family) -> None:
    base, parents = tiny_family
    recipe = MergeRecipe.from_dict(recipes(base, parents)["ties"])
    reference = {name: t.clone() for name, t in live.apply(recipe).state_dict().items()}
    half = LiveMerger(base, parents, model_dtype=torch.bfloat16)
    half.apply(MergeRecipe.from_dict(recipes(base, parents)["linear"]))
    state = half.apply(recipe).state_dict()
    assert all(t.dtype == torch.bfloat16 for t in state.values() if t.is_floating_point())
    for name, tensor in reference.items():
        assert torch.equal(state[name], tensor.to(torch.bfloat16)), name
