"""SearchSpace: genes from the method's declared parameters, decode/encode, granularity, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from evomerge.errors import ConfigError
from evomerge.merge.live import LiveMerger
from evomerge.recipe import MergeRecipe
from evomerge.space import SearchSpace

SPACES = Path(__file__).parents[1] / "search_spaces"


def space(family, **over) -> SearchSpace:
    base, parents = family
    data = {
        "base": str(base),
        "parents": [str(p) for p in parents],
        "method": "ties",
        "search": {"weight": {"low": 0.0, "high": 1.0}, "density": {}},
        "fixed": {"normalize": True},
    } | over
    return SearchSpace.from_dict(data)


def test_per_layer_genes_decode_to_a_valid_recipe_and_encode_back(tiny_family) -> None:
    s = space(tiny_family)
    assert s.num_layers == 4 and s.dim == 2 * 2 * 4  # weight, density x 2 parents x 4 layers
    genome = np.random.default_rng(0).random(s.dim)
    recipe = s.decode(genome)
    weights = recipe.to_dict()["models"][0]["parameters"]["weight"]
    assert weights == pytest.approx(genome[:4], abs=1e-6)  # one list entry per layer, in order
    density = recipe.to_dict()["models"][1]["parameters"]["density"]
    assert density == pytest.approx(0.1 + 0.9 * genome[12:16], abs=1e-6)  # the method's search bounds
    assert s.encode(recipe) == pytest.approx(genome, abs=1e-5)


def test_bounds_policy_clips(tiny_family) -> None:
    s = space(tiny_family)
    recipe = s.decode(np.full(s.dim, 1.7))
    assert recipe.to_dict()["models"][0]["parameters"]["weight"] == [1.0] * 4
    data = s.decode_dict(np.zeros(s.dim))
    data["models"][0]["parameters"]["weight"] = 2.0  # valid for ties, outside the searched [0, 1]
    genome = s.encode(MergeRecipe.from_dict(data))
    assert genome[:4] == [1.0] * 4 and genome[4:8] == [0.0] * 4


def test_groups_filters_and_global(tiny_family) -> None:
    grouped = space(tiny_family, granularity="group", group_size=3, filters=["self_attn", "mlp"])
    assert grouped.n_groups == 2 and grouped.dim == 2 * 2 * 3 * 2
    g = np.linspace(0, 1, grouped.dim)
    weight = grouped.decode(g).to_dict()["models"][0]["parameters"]["weight"]
    assert [e.get("filter") for e in weight] == ["self_attn", "mlp", None]
    attn = weight[0]["value"]
    assert attn[0] == attn[1] == attn[2] != attn[3]  # layers 0-2 share a gene, layer 3 its own
    assert grouped.encode(grouped.decode(g)) == pytest.approx(g, abs=1e-5)
    flat = space(tiny_family, granularity="global")
    assert flat.dim == 4
    assert isinstance(flat.decode([0.5] * 4).to_dict()["models"][0]["parameters"]["weight"], float)


def test_decoded_recipe_materializes(tiny_family) -> None:
    s = space(tiny_family)
    base, parents = tiny_family
    live = LiveMerger(base, parents)
    live.apply(s.decode(np.full(s.dim, 0.5)))
    label, baseline = s.baseline_recipe()
    assert label == "task_arithmetic" and baseline["models"][0]["parameters"]["weight"] == 0.5
    live.apply(MergeRecipe.from_dict(baseline))
    for _, recipe in s.parent_recipes():
        live.apply(MergeRecipe.from_dict(recipe))


def test_slerp_space(tiny_family) -> None:
    base, parents = tiny_family
    s = SearchSpace.from_dict(
        {"base": str(parents[0]), "parents": [str(parents[1])], "method": "slerp", "search": {"t": {}}}
    )
    assert s.dim == 4
    recipe = s.decode([0.0, 0.25, 0.5, 1.0]).to_dict()
    assert recipe["parameters"]["t"] == [0.0, 0.25, 0.5, 1.0]
    assert s.baseline_recipe()[1]["parameters"]["t"] == 0.5


FIXED_COUNT = {  # method -> (parents, searched parameters)
    "nuslerp": (2, {"weight": {}}),
    "nearswap": (1, {"t": {}}),
    "passthrough": (1, {"scale": {}}),
    "slerp": (1, {"t": {}}),
}


@pytest.mark.parametrize("method", list(FIXED_COUNT))
def test_fixed_count_methods_search_and_merge(method: str, tiny_family) -> None:
    """Spaces over the fixed-count methods: the base is one of the models where the method needs
    it (slerp, nearswap), an optional base stays a base (nuslerp), and every decoded
    point, the uniform point and the baseline merge."""
    base, parents = tiny_family
    n, search = FIXED_COUNT[method]
    s = SearchSpace.from_dict(
        {"base": str(base), "parents": [str(p) for p in parents[:n]], "method": method, "search": search}
    )
    live = LiveMerger(base, parents)
    rng = np.random.default_rng(0)
    for genome in (rng.random(s.dim), s.uniform_genome()):
        recipe = s.decode(genome)
        listed = [m.model for m in recipe.models]
        assert (str(base) in listed) == (method in ("slerp", "nearswap"))
        live.apply(recipe)
    live.apply(MergeRecipe.from_dict(s.baseline_recipe()[1]))


def test_a_linear_space_leaves_its_base_out_of_the_recipes(tiny_family) -> None:
    """mergekit merges a linear recipe's base_model as one more model (which then needs a weight):
    a linear space's recipes merge the parents only, and name the base nowhere."""
    base, parents = tiny_family
    family = {"base": str(base), "parents": [str(p) for p in parents]}
    s = SearchSpace.from_dict({**family, "method": "linear", "search": {"weight": {}}})
    recipe = s.decode(s.uniform_genome())
    assert recipe.base_model is None and [m.model for m in recipe.models] == [str(p) for p in parents]
    LiveMerger(base, parents).apply(recipe)
    ties = SearchSpace.from_dict({**family, "method": "ties", "search": {"weight": {}}})
    assert ties.decode(ties.uniform_genome()).base_model == str(base)


def test_baseline_is_encoded_only_when_it_is_a_point_of_the_space(tiny_family) -> None:
    """`try_encode` gives the genome of a recipe whose genes decode back to the same parameters
    everywhere, and None otherwise (the driver then stores the baseline's genome as null)."""
    base, parents = tiny_family

    def baseline_genome(**over):
        s = space(tiny_family, **over)
        return s, s.try_encode(s.decode_recipe(s.baseline_recipe()[1]))

    _, genome = baseline_genome()  # a TIES space: the task-arithmetic baseline is no point of it
    assert genome is None
    s, genome = baseline_genome(method="task_arithmetic", search={"weight": {}}, fixed={})
    assert genome is not None and len(genome) == s.dim
    assert s.decode(genome).to_dict()["models"][0]["parameters"]["weight"] == [0.5] * 4
    _, genome = baseline_genome(
        method="task_arithmetic", search={"weight": {"low": 0.6, "high": 1.0}}, fixed={}
    )
    assert genome is None  # weight 0.5 lies outside the searched bounds (encode would clip it)
    _, genome = baseline_genome(method="task_arithmetic", search={"weight": {}}, fixed={"normalize": True})
    assert genome is None  # the space fixes normalize, the baseline does not normalize
    slerp = SearchSpace.from_dict(
        {"base": str(parents[0]), "parents": [str(parents[1])], "method": "slerp", "search": {"t": {}}}
    )
    assert slerp.try_encode(slerp.decode_recipe(slerp.baseline_recipe()[1])) == [0.5] * 4
    assert slerp.uniform_genome() == [0.5] * 4


def test_uniform_point_of_the_space(tiny_family) -> None:
    """The space's own uniform merge: weights 1/n, other parameters at the method's default."""
    s = space(tiny_family)
    recipe = s.decode(s.uniform_genome()).to_dict()
    for model in recipe["models"]:
        assert model["parameters"]["weight"] == [0.5] * 4 and model["parameters"]["density"] == [1.0] * 4
    assert recipe["parameters"] == {"normalize": True}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": "nope"}, "unknown merge method 'nope'"),
        ({"search": {"gamma": {}}}, "'gamma' is not a parameter of 'ties'"),
        ({"search": {"weight": {"low": 0.5, "high": 0.2}}}, "need low < high"),
        ({"search": {"weight": {}, "density": {"low": 0.0, "high": 1.5}}}, "leave 'density'"),
        ({"search": {"density": {}}}, "needs 'weight'"),
        ({"search": {"weight": {}, "normalize": {}}, "fixed": {}}, "cannot be searched"),
        ({"fixed": {"normalize": True, "density": 0.5}}, "both searched and fixed"),
        ({"granularity": "row"}, "granularity"),
        ({"parents": []}, "'parents' is empty"),
    ],
)
def test_bad_spaces_are_clear_errors(tiny_family, change, message) -> None:
    with pytest.raises(ConfigError, match=message):
        space(tiny_family, **change)


def test_shipped_spaces_are_valid(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EVOMERGE_CACHE", str(tmp_path))
    demo = SearchSpace.load(SPACES / "demo_ties_3experts_groups.yaml")
    assert len(demo.parents) == 3 and demo.dim == 2 * 3 * 3 * 3
    demo.decode(np.random.default_rng(1).random(demo.dim))
    for path in SPACES.glob("smollm2_*.yaml"):  # real models may be absent: check the declaration
        data = yaml.safe_load(path.read_text()) | {"num_layers": 30}
        real = SearchSpace.from_dict(data, root=path.parent, source=str(path))
        assert 90 <= real.dim <= 360
        MergeRecipe.from_dict(real.decode_dict(np.full(real.dim, 0.3)))
