"""Our merges equal mergekit 0.1.5's for every deterministic method (mergekit is a test oracle only).

mergekit lives in its own virtual environment (its pins differ from ours): the one named by
EVOMERGE_MERGEKIT_BIN (path of its `mergekit-yaml`), else `.venv-mergekit/bin/mergekit-yaml`
in the repository (.ci/run creates it). All recipes are merged by one mergekit process, through
the same `run_merge` call `mergekit-yaml` makes, to pay its start-up once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from recipes import recipes
from tiny import load_tensors

from evomerge.merge.io import merge_to_directory
from evomerge.merge.methods import METHODS
from evomerge.recipe import MergeRecipe

REPO = Path(__file__).resolve().parents[2]
MERGEKIT_BIN = Path(
    os.environ.get("EVOMERGE_MERGEKIT_BIN", REPO / ".venv-mergekit" / "bin" / "mergekit-yaml")
)
DETERMINISTIC = [
    name
    for name, data in recipes(Path("b"), [Path("p0"), Path("p1")]).items()
    if not METHODS.get(data["merge_method"]).random
]
DRIVER = """
import json, sys
import yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
for config_file, out in json.loads(sys.argv[1]):
    config = MergeConfiguration.model_validate(yaml.safe_load(open(config_file)))
    run_merge(config, out, MergeOptions(quiet=True))
"""


def _mergekit_python() -> Path:
    """The interpreter of the mergekit venv (from the `mergekit-yaml` script's shebang)."""
    first = MERGEKIT_BIN.read_text().splitlines()[0]
    return Path(first.removeprefix("#!").strip())


@pytest.fixture(scope="module")
def merged_by_both(tiny_family, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    if not MERGEKIT_BIN.is_file():
        message = (
            f"MERGEKIT CONFORMANCE NOT RUN: {MERGEKIT_BIN} not found. Create it with "
            f"`python3 -m venv .venv-mergekit && .venv-mergekit/bin/pip install torch==2.13.0 && "
            f".venv-mergekit/bin/pip install mergekit==0.1.5` or set EVOMERGE_MERGEKIT_BIN"
        )
        print(message, file=sys.stderr)
        pytest.skip(message)
    base, parents = tiny_family
    root = tmp_path_factory.mktemp("conformance")
    jobs, pairs = [], {}
    for name in DETERMINISTIC:
        recipe = MergeRecipe.from_dict(recipes(base, parents)[name])
        config = root / f"{name}.yaml"
        config.write_text(recipe.to_yaml())  # the same YAML file feeds both engines
        ours = merge_to_directory(MergeRecipe.from_yaml(config), root / f"ours_{name}", progress=False)
        jobs.append((str(config), str(root / f"mergekit_{name}")))
        pairs[name] = (ours, root / f"mergekit_{name}")
    result = subprocess.run(
        [str(_mergekit_python()), "-c", DRIVER, json.dumps(jobs)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return pairs


def test_deterministic_methods_are_all_covered() -> None:
    covered = {recipes(Path("b"), [Path("p0"), Path("p1")])[n]["merge_method"] for n in DETERMINISTIC}
    assert covered == {name for name in METHODS.names() if not METHODS.get(name).random}


@pytest.mark.parametrize("case", DETERMINISTIC)
def test_same_tensors_as_mergekit(case: str, merged_by_both) -> None:
    ours_dir, theirs_dir = merged_by_both[case]
    ours, theirs = load_tensors(ours_dir), load_tensors(theirs_dir)
    assert set(ours) == set(theirs)
    for name, expected in theirs.items():
        scale = expected.abs().max().item()
        diff = (ours[name].float() - expected.float()).abs().max().item()
        assert diff <= 1e-5 * scale, f"{case}: {name} differs by {diff:.3g} (max |w| {scale:.3g})"
    ours_config = json.loads((ours_dir / "config.json").read_text())
    theirs_config = json.loads((theirs_dir / "config.json").read_text())
    assert ours_config["num_hidden_layers"] == theirs_config["num_hidden_layers"]
