"""MergeRecipe: validation of the mergekit subset, YAML round trip, parameter precedence."""

from __future__ import annotations

import pytest

from evomerge.errors import ConfigError
from evomerge.recipe import MergeRecipe

TIES = {
    "merge_method": "ties",
    "base_model": "base",
    "parameters": {"density": 0.5, "weight": 0.25, "normalize": False},
    "models": [
        {"model": "a", "parameters": {"weight": [0.0, 1.0], "density": 0.9}},
        {
            "model": "b",
            "parameters": {
                "weight": [{"filter": "self_attn", "value": 0.7}, {"filter": "mlp", "value": [1.0, 0.0]}]
            },
        },
    ],
    "dtype": "bfloat16",
    "seed": 7,
}

SLICES = {
    "merge_method": "task_arithmetic",
    "base_model": "base",
    "parameters": {"weight": 0.5},
    "slices": [
        {
            "sources": [
                {"model": "base", "layer_range": [0, 3]},
                {"model": "a", "layer_range": [0, 3], "parameters": {"weight": [0.1, 0.3]}},
                {"model": "b", "layer_range": [0, 3]},
            ]
        }
    ],
    "tokenizer_source": "base",
}


@pytest.mark.parametrize("data", [TIES, SLICES])
def test_yaml_round_trip_is_stable(data: dict) -> None:
    recipe = MergeRecipe.from_dict(data)
    text = recipe.to_yaml()
    again = MergeRecipe.from_yaml(text)
    assert again == recipe
    assert again.to_yaml() == text
    assert MergeRecipe.from_dict(recipe.to_dict()) == recipe


def test_recipe_is_frozen() -> None:
    recipe = MergeRecipe.from_dict(TIES)
    with pytest.raises(Exception, match="frozen"):
        recipe.seed = 3  # type: ignore[misc]


def test_model_paths_lists_base_first_once() -> None:
    assert MergeRecipe.from_dict(TIES).model_paths() == ["base", "a", "b"]
    assert MergeRecipe.from_dict(SLICES).model_paths() == ["base", "a", "b"]


def test_precedence_model_over_global_and_gradient() -> None:
    recipe = MergeRecipe.from_dict(TIES)

    def weight(model: str, tensor: str, layer: int | None) -> object:
        return recipe.resolve_param("weight", model=model, tensor=tensor, layer=layer, n_layers=5)

    # per-layer list [0, 1] interpolated over 5 layers
    assert weight("a", "model.layers.0.mlp.up_proj.weight", 0) == 0.0
    assert weight("a", "model.layers.2.mlp.up_proj.weight", 2) == pytest.approx(0.5)
    assert weight("a", "model.layers.4.mlp.up_proj.weight", 4) == 1.0
    # filters: first matching entry wins; mlp entry is itself a gradient
    assert weight("b", "model.layers.3.self_attn.q_proj.weight", 3) == 0.7
    assert weight("b", "model.layers.1.mlp.up_proj.weight", 1) == pytest.approx(0.75)
    # no filter matches (and no fallback entry) -> the global value applies
    assert weight("b", "model.norm.weight", None) == 0.25
    # density: model-level beats global; global otherwise
    assert recipe.resolve_param("density", model="a", tensor="x", layer=0, n_layers=5) == 0.9
    assert recipe.resolve_param("density", model="b", tensor="x", layer=0, n_layers=5) == 0.5
    assert recipe.resolve_param("lambda", model=None, tensor="x", layer=0, n_layers=5) is None


def test_precedence_slice_source_over_global() -> None:
    recipe = MergeRecipe.from_dict(SLICES)
    source_a, source_b = recipe.slices[0].sources[1], recipe.slices[0].sources[2]
    tensor = "model.layers.1.mlp.up_proj.weight"
    assert recipe.resolve_param("weight", model="a", tensor=tensor, layer=1, n_layers=3, source=source_a) == (
        pytest.approx(0.2)
    )
    assert (
        recipe.resolve_param("weight", model="b", tensor=tensor, layer=1, n_layers=3, source=source_b) == 0.5
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"merge_method": "nope"}, "unknown merge method 'nope'"),
        ({"frobnicate": 1}, "frobnicate: unknown key"),
        (
            {"modules": {"text_decoder": {"models": []}}},
            "modules: mergekit's per-module recipes .* use models:",
        ),
        (
            {"models": [{"model": "a", "parameters": {"weight": 1.0, "colour": 1.0}}]},
            "colour: unknown parameter",
        ),
        (
            {"models": [{"model": "a", "parameters": {"weight": 1.0, "density": 1.5}}]},
            "density.*out of range",
        ),
        ({"models": [{"model": "a", "parameters": {"weight": 1.0, "normalize": True}}]}, "global parameter"),
        ({"models": [{"model": "a", "parameters": {"density": 0.5}}], "parameters": {}}, "needs 'weight'"),
        ({"base_model": None}, "needs 'base_model'"),
        ({"dtype": "float8"}, "dtype"),
        ({"slices": []}, "exactly one of 'models' or 'slices'"),
        ({"out_dtype": "float8"}, "out_dtype"),
        ({"chat_template": "exaone"}, "not a template evomerge ships.*Jinja template text"),
        ({"tokenizer": {"source": "base", "tokens": {"<x>": {}}}}, "tokenizer.tokens.*not supported"),
        (
            {"tokenizer": {"source": "base"}, "tokenizer_source": "base"},
            "'tokenizer_source' or a 'tokenizer' block, not both",
        ),
    ],
)
def test_bad_recipes_name_the_key(change: dict, message: str) -> None:
    data = {**TIES, **change}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        MergeRecipe.from_dict(data)


def test_slerp_t_out_of_range_and_bad_layer_range() -> None:
    slerp = {
        "merge_method": "slerp",
        "base_model": "base",
        "models": [{"model": "base"}, {"model": "a"}],
        "parameters": {"t": [0.0, 1.2]},
    }
    with pytest.raises(ConfigError, match=r"parameters.t.*out of range \[0.0, 1.0\]"):
        MergeRecipe.from_dict(slerp)
    bad_slice = {**SLICES, "slices": [{"sources": [{"model": "a", "layer_range": [3, 1]}]}]}
    with pytest.raises(ConfigError, match="layer_range"):
        MergeRecipe.from_dict(bad_slice)


def test_from_yaml_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        MergeRecipe.from_yaml(tmp_path / "none.yaml")


PLUS = "/models/vowels+digits/expert"  # a folder whose name holds "+"


def test_a_path_with_plus_is_written_so_that_mergekit_reads_one_path() -> None:
    """mergekit reads a plain 'A+B' as model A with LoRA B (and 'A@R' as revision R); its structured
    form `{model: {path: ...}}` reads as the path itself, so evomerge writes that."""
    recipe = MergeRecipe.from_dict(
        {
            "merge_method": "linear",
            "parameters": {"weight": 1.0},
            "models": [{"model": {"model": {"path": PLUS}}}, {"model": "b"}],
        }
    )
    assert recipe.models[0].model == PLUS and recipe.model_paths() == [PLUS, "b"]
    written = recipe.to_dict()
    assert written["models"][0]["model"] == {"model": {"path": PLUS}}
    assert written["models"][1]["model"] == "b"
    assert MergeRecipe.from_yaml(recipe.to_yaml()) == recipe


def test_a_plain_plus_reference_is_refused_with_its_fix() -> None:
    with pytest.raises(ConfigError, match=r"models\.0\.model.*LoRA.*\{model: \{path:") as raised:
        MergeRecipe.from_dict({"merge_method": "linear", "models": [{"model": PLUS}, {"model": "b"}]})
    assert "\n" not in str(raised.value)


def test_a_lora_reference_is_refused() -> None:
    with pytest.raises(ConfigError, match="LoRA adapter"):
        MergeRecipe.from_dict(
            {"merge_method": "linear", "models": [{"model": {"model": {"path": "a"}, "lora": {"path": "l"}}}]}
        )


def test_the_space_writes_parents_whose_paths_hold_plus() -> None:
    from evomerge.space import SearchSpace

    space = SearchSpace.from_dict(
        {"base": "/m/base+x", "parents": [PLUS, "/m/b"], "method": "task_arithmetic"}
        | {"search": {"weight": {}}, "num_layers": 2}
    )
    recipe = space.decode([0.5] * space.dim)
    assert recipe.base_model == "/m/base+x" and recipe.models[0].model == PLUS
    assert "path: /m/base+x" in recipe.to_yaml()


def test_a_star_filter_matches_every_tensor_as_in_mergekit() -> None:
    recipe = MergeRecipe.from_dict(
        TIES | {"parameters": {"weight": [{"filter": "mlp", "value": 0.9}, {"filter": "*", "value": 0.2}]}}
    )
    resolve = {"model": "c", "layer": 0, "n_layers": 2}
    assert recipe.resolve_param("weight", tensor="model.layers.0.mlp.up_proj.weight", **resolve) == 0.9
    assert recipe.resolve_param("weight", tensor="model.embed_tokens.weight", **resolve) == 0.2


def test_slice_parameters_sit_between_the_sources_and_the_globals() -> None:
    data = SLICES | {"slices": [SLICES["slices"][0] | {"parameters": {"weight": 0.8, "lambda": 0.5}}]}
    recipe = MergeRecipe.from_dict(data)
    piece = recipe.slices[0]
    a, b = piece.sources[1], piece.sources[2]
    where = {"tensor": "model.layers.0.mlp.up_proj.weight", "layer": 0, "n_layers": 3, "piece": piece}
    assert recipe.resolve_param("weight", model="a", source=a, **where) == pytest.approx(0.1)
    assert recipe.resolve_param("weight", model="b", source=b, **where) == 0.8  # not the global 0.5
    assert recipe.resolve_param("lambda", model=None, **where) == 0.5


@pytest.mark.parametrize(
    "method", ["sce", "ram", "ramplus_tl", "model_stock", "arcee_fusion", "nearswap", "karcher"]
)
def test_a_per_model_weight_is_accepted_where_mergekit_ignores_it(method: str) -> None:
    n = 1 if method in ("arcee_fusion", "nearswap") else 2
    recipe = MergeRecipe.from_dict(
        {
            "merge_method": method,
            "base_model": "base",
            "models": [{"model": m, "parameters": {"weight": 0.6}} for m in ("a", "b")[:n]],
            "parameters": {"t": 0.1} if method == "nearswap" else {},
        }
    )
    assert recipe.models[0].parameters["weight"] == 0.6


def test_named_chat_templates_as_mergekit_names_them() -> None:
    linear = {"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": 1.0}}]}
    for name in ("chatml", "llama3", "mistral"):
        assert MergeRecipe.from_dict(linear | {"chat_template": name}).chat_template == name
    with pytest.raises(ConfigError, match="chat_template 'alpaca' is not a template evomerge ships"):
        MergeRecipe.from_dict(linear | {"chat_template": "alpaca"})
