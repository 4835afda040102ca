"""`merge_to_directory` / `evomerge merge`: complete HF directories, atomic, and clear errors on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from recipes import recipes
from safetensors.torch import load_file, save_file
from tiny import load_tensors, make_family, save_model, tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.errors import ConfigError, ModelLoadError
from evomerge.merge import io
from evomerge.merge.io import merge_to_directory
from evomerge.recipe import MergeRecipe


def _ta(base: Path, *parents: Path, **extra: object) -> MergeRecipe:
    models = [{"model": str(p), "parameters": {"weight": 0.5}} for p in parents]
    return MergeRecipe.from_dict(
        {"merge_method": "task_arithmetic", "base_model": str(base), "models": models} | extra
    )


def _nothing_left(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_writes_a_loadable_directory(tiny_family, tmp_path: Path) -> None:
    base, parents = tiny_family
    recipe = MergeRecipe.from_dict(recipes(base, parents)["ties"] | {"dtype": "bfloat16"})
    out = merge_to_directory(recipe, tmp_path / "merged", progress=False)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "model.safetensors"} <= names
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("hello", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=2, do_sample=False).shape[1] == ids.shape[1] + 2
    assert MergeRecipe.from_yaml((out / "mergekit_config.yml").read_text()) == recipe


def test_sharded_inputs_and_outputs_give_the_sameload_tensors(tiny_family, tmp_path: Path) -> None:
    base, parents = tiny_family
    sharded_base, sharded_parents = make_family(tmp_path / "sharded", n_parents=2, max_shard_size="40KB")
    assert (sharded_base / "model.safetensors.index.json").is_file()
    one = merge_to_directory(_ta(base, *parents), tmp_path / "one", progress=False)
    many = merge_to_directory(
        _ta(sharded_base, *sharded_parents), tmp_path / "many", progress=False, max_shard_bytes=50_000
    )
    index = json.loads((many / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    expected, got = load_tensors(one), load_tensors(many)
    assert expected.keys() == got.keys() == set(index["weight_map"])
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    AutoModelForCausalLM.from_pretrained(many)


def test_task_arithmetic_tensor_by_hand(tiny_family, tmp_path: Path) -> None:
    base, parents = tiny_family
    out = merge_to_directory(_ta(base, *parents), tmp_path / "m", progress=False)
    b, p0, p1 = (load_file(d / "model.safetensors") for d in (base, *parents))
    name = "model.layers.1.mlp.up_proj.weight"
    expected = b[name] + 0.5 * (p0[name] - b[name]) + 0.5 * (p1[name] - b[name])
    torch.testing.assert_close(load_tensors(out)[name], expected)


def test_random_methods_follow_the_seed(tiny_family, tmp_path: Path) -> None:
    base, parents = tiny_family
    data = recipes(base, parents)["dare_ties"]
    first = load_tensors(merge_to_directory(MergeRecipe.from_dict(data), tmp_path / "a", progress=False))
    again = load_tensors(merge_to_directory(MergeRecipe.from_dict(data), tmp_path / "b", progress=False))
    other = load_tensors(
        merge_to_directory(MergeRecipe.from_dict(data | {"seed": 12}), tmp_path / "c", progress=False)
    )
    name = "model.layers.0.self_attn.q_proj.weight"
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first[name], other[name])


def test_existing_output_needs_force(tiny_family, tmp_path: Path) -> None:
    base, parents = tiny_family
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="already exists.*--force"):
        merge_to_directory(_ta(base, *parents), out, progress=False)
    assert (out / "keep.txt").is_file()
    merge_to_directory(_ta(base, *parents), out, force=True, progress=False)
    assert not (out / "keep.txt").exists()
    assert (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_interrupted_merge_leaves_nothing(tiny_family, tmp_path: Path, monkeypatch) -> None:
    base, parents = tiny_family
    calls = {"n": 0}
    write = io.ShardWriter.write

    def failing(self, name, tensor):  # noqa: ANN001
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        write(self, name, tensor)

    monkeypatch.setattr(io.ShardWriter, "write", failing)
    with pytest.raises(KeyboardInterrupt):
        merge_to_directory(_ta(base, *parents), tmp_path / "out", progress=False)
    _nothing_left(tmp_path / "out")


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory: pytest.TempPathFactory, tiny_family) -> dict[str, Path]:
    """Checkpoints that must be refused: each differs from the tiny family in one way."""
    base, parents = tiny_family
    root = tmp_path_factory.mktemp("odd")
    torch.manual_seed(0)
    odd = {
        "wide": save_model(LlamaForCausalLM(tiny_config(hidden=64)), root / "wide"),
        "vocab": save_model(LlamaForCausalLM(tiny_config(vocab_size=300)), root / "vocab"),
    }
    config = tiny_config()
    config.intermediate_size = 96
    odd["shape"] = save_model(LlamaForCausalLM(config), root / "shape")
    missing = shutil.copytree(parents[0], root / "missing")
    tensors = load_file(missing / "model.safetensors")
    del tensors["model.layers.2.mlp.down_proj.weight"]
    save_file(tensors, missing / "model.safetensors", metadata={"format": "pt"})
    odd["missing"] = missing
    corrupt = shutil.copytree(parents[0], root / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\xff" * 8 + b"{not json")
    odd["corrupt"] = corrupt
    pickled = shutil.copytree(parents[0], root / "pickled")
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    odd["pickled"] = pickled
    return odd


@pytest.mark.parametrize(
    ("kind", "error", "message"),
    [
        ("wide", ModelLoadError, "hidden_size=64.*one architecture"),
        ("vocab", ModelLoadError, "vocabulary sizes differ.*tokenizer_source"),
        ("shape", ModelLoadError, "tensor shapes differ.*mlp"),
        ("missing", ModelLoadError, "'model.layers.2.mlp.down_proj.weight' is missing"),
        ("corrupt", ModelLoadError, "corrupt or not safetensors"),
        ("pickled", ModelLoadError, "pickle checkpoint.*--allow-pickle"),
    ],
)
def test_bad_models_are_refused(kind, error, message, odd_models, tiny_family, tmp_path: Path) -> None:
    base, parents = tiny_family
    with pytest.raises(error, match=message):
        merge_to_directory(_ta(base, parents[0], odd_models[kind]), tmp_path / "out", progress=False)
    _nothing_left(tmp_path / "out")


def test_allow_pickle_loads_weights_only(odd_models, tiny_family, tmp_path: Path) -> None:
    base, parents = tiny_family
    from_pickle = merge_to_directory(
        _ta(base, odd_models["pickled"]), tmp_path / "a", progress=False, allow_pickle=True
    )
    from_safetensors = merge_to_directory(_ta(base, parents[0]), tmp_path / "b", progress=False)
    expected, got = load_tensors(from_safetensors), load_tensors(from_pickle)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_layer_range_past_the_model(tiny_family, tmp_path: Path) -> None:
    base, parents = tiny_family
    data = recipes(base, parents)["task_arithmetic_slices"]
    data["slices"][1]["sources"][1]["layer_range"] = [2, 9]
    for source in data["slices"][1]["sources"]:
        source["layer_range"] = [2, 9]
    with pytest.raises(ConfigError, match=r"layer_range \[2, 9\].*past its 4 layers"):
        merge_to_directory(MergeRecipe.from_dict(data), tmp_path / "out", progress=False)
    _nothing_left(tmp_path / "out")


def test_missing_parameter_for_a_tensor(tiny_family, tmp_path: Path) -> None:
    base, parents = tiny_family
    models = [{"model": str(parents[0]), "parameters": {"weight": [{"filter": "mlp", "value": 0.5}]}}]
    data = {"merge_method": "linear", "models": models}
    with pytest.raises(ConfigError, match="no value of 'weight'.*add a fallback entry"):
        merge_to_directory(MergeRecipe.from_dict(data), tmp_path / "out", progress=False)
    _nothing_left(tmp_path / "out")


def test_cli_merge_and_errors(tiny_family, tmp_path: Path) -> None:
    base, parents = tiny_family
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(_ta(base, *parents).to_yaml())
    runner = CliRunner()
    result = runner.invoke(app, ["merge", str(recipe_file), str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "model.safetensors").is_file()
    again = runner.invoke(app, ["merge", str(recipe_file), str(tmp_path / "out"), "--no-progress"])
    assert isinstance(again.exception, ConfigError)
    forced = runner.invoke(
        app, ["merge", str(recipe_file), str(tmp_path / "out"), "--force", "--no-progress"]
    )
    assert forced.exit_code == 0, forced.output


@pytest.mark.parametrize(
    ("flag", "threshold", "expected"),
    [("auto", None, False), ("auto", 1, True), ("on", None, True), ("off", 1, False)],
)
def test_a_one_shot_merge_compiles_only_where_it_pays(
    flag, threshold, expected, tiny_family, tmp_path: Path, monkeypatch
) -> None:
    """auto compiles when the merged models' entries reach the break-even (the tiny family is far
    below the real one; a threshold of 1 entry stands for a large merge); on and off are obeyed."""
    from evomerge.merge import kernels

    if threshold is not None:
        monkeypatch.setattr(kernels, "COMPILE_PAYS_ENTRIES", threshold)
    seen: list[bool] = []
    inner = kernels.compiling

    def spy(enabled: bool):
        seen.append(enabled)
        return inner(enabled)

    monkeypatch.setattr(kernels, "compiling", spy)
    base, parents = tiny_family
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(MergeRecipe.from_dict(recipes(base, parents)["ties"]).to_yaml())
    result = CliRunner().invoke(
        app, ["merge", str(recipe_file), str(tmp_path / "out"), "--no-progress", "--compile", flag]
    )
    assert result.exit_code == 0, result.output
    assert seen == [expected]
    assert kernels._Kernel.enabled  # restored after the merge


@pytest.mark.parametrize("source", ["union", "parent"])
def test_tokenizer_of_another_vocabulary_is_refused(source: str, tiny_family, tmp_path: Path) -> None:
    """Same vocab_size, other tokens: mergekit would re-map embedding rows; we refuse in one line."""
    base, parents = tiny_family
    other = tmp_path / "other"
    shutil.copytree(parents[0], other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    vocab = tokenizer.backend_tokenizer.to_str().replace('"<|pad|>"', '"<|padding|>"')
    (other / "tokenizer.json").write_text(vocab)
    recipe = _ta(base, other, tokenizer_source="union" if source == "union" else str(other))
    with pytest.raises(ConfigError, match="vocabulary other than the base's"):
        merge_to_directory(recipe, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
