"""Models named by hub id: read from a (fake) local Hugging Face cache; a miss is one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from tiny import load_tensors
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.errors import ModelLoadError
from evomerge.merge.hub import resolve_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_model(hf_home: Path, repo: str, source: Path) -> Path:
    """The hub cache layout: models--org--name/snapshots/<commit>/ with the files, refs/main."""
    entry = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = entry / "snapshots" / COMMIT
    shutil.copytree(source, snapshot)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def hub(tmp_path: Path, tiny_family: tuple[Path, list[Path]], monkeypatch: pytest.MonkeyPatch) -> Path:
    base, parents = tiny_family
    hf_home = tmp_path / "hf"
    for repo, source in (("org/base", base), ("org/p0", parents[0]), ("org/p1", parents[1])):
        cache_model(hf_home, repo, source)
    for name in ("HF_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hf_home


def _recipe(base: str, parents: list[str]) -> dict:
    return {
        "merge_method": "task_arithmetic",
        "base_model": base,
        "models": [{"model": p, "parameters": {"weight": 0.5}} for p in parents],
        "dtype": "float32",
    }


def test_an_id_resolves_to_its_cached_snapshot_and_a_path_stays_a_path(hub: Path, tmp_path: Path) -> None:
    snapshot = hub / "hub" / "models--org--base" / "snapshots" / COMMIT
    assert resolve_model("org/base") == snapshot
    assert resolve_model(f"org/base@{COMMIT}") == snapshot
    (tmp_path / "org" / "base").mkdir(parents=True)
    assert resolve_model(tmp_path / "org" / "base") == tmp_path / "org" / "base"  # a path wins


def test_merge_from_a_recipe_of_ids_equals_the_merge_of_paths(
    hub: Path, tmp_path: Path, tiny_family: tuple[Path, list[Path]]
) -> None:
    base, parents = tiny_family
    by_id = tmp_path / "ids.yaml"
    by_id.write_text(yaml.safe_dump(_recipe("org/base", ["org/p0", "org/p1"])))
    by_path = tmp_path / "paths.yaml"
    by_path.write_text(yaml.safe_dump(_recipe(str(base), [str(p) for p in parents])))
    runner = CliRunner()
    for recipe, out in ((by_id, "from_ids"), (by_path, "from_paths")):
        result = runner.invoke(app, ["merge", str(recipe), str(tmp_path / out), "--no-progress"])
        assert result.exit_code == 0, result.output
    ids, paths = load_tensors(tmp_path / "from_ids"), load_tensors(tmp_path / "from_paths")
    assert ids.keys() == paths.keys()
    assert all(torch.equal(ids[name], paths[name]) for name in ids)
    assert (tmp_path / "from_ids" / "tokenizer.json").is_file()  # the base's, from the cache
    written = yaml.safe_load(by_id.read_text())
    assert written["base_model"] == "org/base"  # the recipe keeps the id as written


def test_a_missing_model_is_one_line_naming_the_cache(hub: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "missing.yaml"
    recipe.write_text(yaml.safe_dump(_recipe("org/base", ["org/absent", "org/p1"])))
    result = CliRunner().invoke(app, ["merge", str(recipe), str(tmp_path / "out"), "--no-progress"])
    assert isinstance(result.exception, ModelLoadError)
    message = str(result.exception)
    assert "\n" not in message
    assert message == (
        f"model 'org/absent' not found: not a local path and not in the Hugging Face cache at {hub / 'hub'}; "
        "download it with `huggingface-cli download org/absent` or give a path"
    )
    with pytest.raises(ModelLoadError, match=r"model 'org/base@deadbeef' not found"):
        resolve_model("org/base@deadbeef")


def test_a_search_space_and_the_live_merger_take_ids(
    hub: Path, tmp_path: Path, tiny_family: tuple[Path, list[Path]]
) -> None:
    """A space naming its models by id keeps the ids (its recipes and exports name them), reads the
    layer count from the cached snapshot, and the live merger gives the tensors of the paths."""
    from evomerge.merge.live import LiveMerger
    from evomerge.space import SearchSpace

    base, parents = tiny_family

    def space_of(base_model: str, models: list[str]) -> SearchSpace:
        spec = {"method": "ties", "base": base_model, "parents": models, "search": {"weight": {}}}
        return SearchSpace.from_dict(spec, root=tmp_path)

    space = space_of("org/base", ["org/p0", "org/p1"])
    assert (space.base, space.parents) == ("org/base", ["org/p0", "org/p1"])
    assert space.num_layers == LiveMerger(base, parents).model.config.num_hidden_layers
    genome = [0.7] * len(space.genes)
    recipe = space.decode(genome)
    assert recipe.base_model == "org/base"
    by_id = LiveMerger(space.base, space.parents).apply(recipe).state_dict()
    paths = space_of(str(base), [str(p) for p in parents])
    by_path = LiveMerger(paths.base, paths.parents).apply(paths.decode(genome)).state_dict()
    assert all(torch.equal(by_id[name], by_path[name]) for name in by_id)
