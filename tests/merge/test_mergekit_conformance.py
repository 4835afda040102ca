"""Our merges equal mergekit 0.1.5's for every deterministic method (mergekit is a test oracle only).

mergekit lives in its own virtual environment (its pins differ from ours): the one named by
EVOMERGE_MERGEKIT_BIN (path of its `mergekit-yaml`), else `.venv-mergekit/bin/mergekit-yaml`
in the repository (.ci/run creates it). All recipes, over float32, bfloat16 and float16 tiny
families, are merged by one mergekit process, through the same `run_merge` call `mergekit-yaml`
makes, to pay its start-up once.

The one documented difference: where a magnitude (TIES, breadcrumbs) or variance (SCE) selection's
threshold falls inside a run of tied values, which we meet in bf16/fp16 task vectors, mergekit's
`argsort`/`topk` keep an implementation-defined subset of the tied entries, and we keep the
exact count in position order. `test_tied_selections_as_mergekit` bounds it (see there).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from recipes import recipes, tied_recipes
from tiny import MERGEKIT_BIN, load_tensors, make_family

from evomerge.merge.chat_templates import NAMED_TEMPLATES
from evomerge.merge.io import merge_to_directory, open_models, plan_for
from evomerge.merge.methods import METHODS
from evomerge.recipe import MergeRecipe, mergekit_ref

REPO = Path(__file__).resolve().parents[2]
DETERMINISTIC = [
    name
    for name, data in recipes(Path("b"), [Path("p0"), Path("p1")]).items()
    if not METHODS.get(data["merge_method"]).random
]
TIED = list(tied_recipes(Path("b"), [Path("p0"), Path("p1")]))
LOW_PRECISION = {"bfloat16": torch.bfloat16, "float16": torch.float16}
CONVERSATIONS = [  # (messages, add_generation_prompt): alternating turns, a system message, padding
    ([{"role": "user", "content": "Hi"}], True),
    ([{"role": "user", "content": " two\nlines \n"}, {"role": "assistant", "content": "ok "}], False),
    (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "and 3+3?"},
        ],
        True,
    ),
]
TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"


def option_recipes(base: Path, parents: list[Path]) -> dict[str, dict]:
    """The recipe options mergekit accepts, each on a small merge (names: `option_*`)."""
    b, p0, p1 = str(base), str(parents[0]), str(parents[1])
    linear = {
        "merge_method": "linear",
        "models": [{"model": b, "parameters": {"weight": 0.3}}, {"model": p0, "parameters": {"weight": 0.7}}],
    }
    task = {
        "merge_method": "task_arithmetic",
        "base_model": b,
        "models": [
            {"model": p0, "parameters": {"weight": 0.6, "density": 0.5}},
            {"model": p1, "parameters": {"weight": 0.4}},
        ],
        "parameters": {"int8_mask": True},
    }
    slerp = {
        "merge_method": "slerp",
        "base_model": b,
        "parameters": {"t": 0.3},
        "models": [{"model": b, "parameters": {"weight": 1.0}}, {"model": p0, "parameters": {"weight": 0.5}}],
    }
    ties = {
        "merge_method": "ties",
        "base_model": b,
        "parameters": {"int8_mask": True, "density": 0.5},
        "models": [
            {"model": p0, "parameters": {"weight": 0.5}},
            {"model": p1, "parameters": {"weight": 0.5}},
        ],
    }
    star = [{"filter": "mlp", "value": 0.9}, {"filter": "*", "value": 0.25}]
    # a layer filter read on each model's input tensor, in slices whose input and output layers differ
    layer_filter = [{"filter": "layers.3.", "value": 0.9}, {"value": 0.2}]
    shifted = {
        "merge_method": "task_arithmetic",
        "base_model": b,
        "slices": [
            {
                "sources": [
                    {"model": b, "layer_range": [2, 4]},
                    {"model": p0, "layer_range": [2, 4], "parameters": {"weight": layer_filter}},
                    {"model": p1, "layer_range": [2, 4]},
                ],
                "parameters": {"weight": [0.3, 0.6]},  # slices[].parameters: under the sources'
            },
            {
                "sources": [
                    {"model": b, "layer_range": [0, 2]},
                    {"model": p0, "layer_range": [0, 2]},
                    {"model": p1, "layer_range": [0, 2]},
                ],
                "parameters": {"weight": 0.4, "lambda": 0.8},
            },
        ],
        "parameters": {"weight": 0.1},
    }
    # mergekit ignores a per-model weight of the methods that declare none
    ignored_weight = {
        method: {
            "merge_method": method,
            "base_model": b,
            "models": [
                {"model": b},
                *({"model": p, "parameters": {"weight": 0.6}} for p in (p0, p1)[:count]),
            ],
            "parameters": extra,
        }
        for method, count, extra in (
            ("sce", 2, {}),
            ("ram", 2, {}),
            ("ramplus_tl", 2, {}),
            ("model_stock", 2, {}),
            ("arcee_fusion", 1, {}),
            ("nearswap", 1, {"t": 0.001}),
            ("karcher", 2, {}),
        )
    }
    return {
        "option_filter_star": linear  # mergekit's wildcard filter: every tensor
        | {
            "models": [
                {"model": b, "parameters": {"weight": star}},
                {"model": p0, "parameters": {"weight": 0.7}},
            ]
        },
        "option_shifted_slices": shifted,
        **{f"option_weight_ignored_{method}": data for method, data in ignored_weight.items()},
        "option_out_dtype": linear | {"dtype": "float32", "out_dtype": "bfloat16"},
        "option_ignored_task_arithmetic": task,
        "option_ignored_slerp": slerp,
        "option_int8_mask_ties": ties,
        "option_chat_template": linear | {"chat_template": TEMPLATE},
        **{f"option_chat_template_{name}": linear | {"chat_template": name} for name in NAMED_TEMPLATES},
        "option_tokenizer_union": linear | {"tokenizer_source": "union"},
        "option_tokenizer_model": linear | {"tokenizer_source": p0},
        "option_tokenizer_block": linear | {"tokenizer": {"source": p0}},
        # mergekit adds an unlisted base_model to linear's inputs, with the global weight
        "option_linear_base_model": {
            "merge_method": "linear",
            "base_model": b,
            "parameters": {"weight": 0.2},
            "models": [{"model": p0, "parameters": {"weight": 0.7}}, {"model": p1}],
        },
    }


def search_recipes(base: Path, parents: list[Path]) -> dict[str, dict]:
    """What `export` writes for a search over bf16 parents: a random point of a per-layer space
    (the search spaces compute in float32), as its recipe dict."""
    from evomerge.space import SearchSpace

    family = {"base": str(base), "parents": [str(p) for p in parents], "granularity": "layer"}
    rng = np.random.default_rng(4)
    cases = {}
    for method, search in (("task_arithmetic", {"weight": {}}), ("ties", {"weight": {}, "density": {}})):
        space = SearchSpace.from_dict({**family, "method": method, "search": search})
        cases[f"search_{method}"] = space.decode(rng.random(space.dim)).model_dump(
            mode="json", exclude_none=True
        )
    return cases


def plus_path_recipe(base: Path, parents: list[Path]) -> dict:
    """Task arithmetic over models whose paths hold "+", named as evomerge writes them."""
    return {
        "merge_method": "task_arithmetic",
        "base_model": mergekit_ref(str(base)),
        "models": [{"model": mergekit_ref(str(p)), "parameters": {"weight": 0.5}} for p in parents],
    }


SEARCH = ["search_task_arithmetic", "search_ties"]  # search_recipes' cases (it reads the models)

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
def merged_by_both(tiny_family, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple]:
    """(family, case) -> (our directory, mergekit's directory, the recipe)."""
    if not MERGEKIT_BIN.is_file():
        message = (
            f"MERGEKIT CONFORMANCE NOT RUN: {MERGEKIT_BIN} not found. Create it with "
            f"`python3 -m venv .venv-mergekit && .venv-mergekit/bin/pip install torch==2.13.0 && "
            f".venv-mergekit/bin/pip install mergekit==0.1.5` or set EVOMERGE_MERGEKIT_BIN"
        )
        print(message, file=sys.stderr)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("conformance")
    cases = [("float32", name, recipes(*tiny_family)[name]) for name in DETERMINISTIC]
    cases += [("float32", name, data) for name, data in option_recipes(*tiny_family).items()]
    for family, dtype in LOW_PRECISION.items():
        base, parents = make_family(root / family, dtype=dtype)
        cases += [(family, name, data) for name, data in tied_recipes(base, parents).items()]
        if family == "bfloat16":
            cases += [(family, name, data) for name, data in search_recipes(base, parents).items()]
    # a folder whose name holds "+" (as the demo family's did): mergekit must read one model, not A + LoRA B
    plus_base, plus_parents = make_family(root / "vowels+digits")
    cases.append(("float32", "plus_path", plus_path_recipe(plus_base, plus_parents)))
    jobs, pairs = [], {}
    for family, name, data in cases:
        config = root / f"{family}_{name}.yaml"
        config.write_text(MergeRecipe.from_dict(data).to_yaml())  # the same YAML file feeds both engines
        recipe = MergeRecipe.from_yaml(config)
        ours = merge_to_directory(recipe, root / f"ours_{family}_{name}", progress=False)
        jobs.append((str(config), str(root / f"mergekit_{family}_{name}")))
        pairs[(family, name)] = (ours, root / f"mergekit_{family}_{name}", recipe)
    result = subprocess.run(
        [str(_mergekit_python()), "-c", DRIVER, json.dumps(jobs)], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return pairs


def test_deterministic_methods_are_all_covered() -> None:
    covered = {recipes(Path("b"), [Path("p0"), Path("p1")])[n]["merge_method"] for n in DETERMINISTIC}
    assert covered == {name for name in METHODS.names() if not METHODS.get(name).random}


def _assert_close(
    ours: torch.Tensor, expected: torch.Tensor, where: str, keep: torch.Tensor | None = None
) -> None:
    """Equal to float32 rounding (1e-5 of the tensor's largest entry), outside `keep` if given."""
    scale = expected.abs().max().item()
    diff = (ours.float() - expected.float()).abs()
    if keep is not None:
        diff = diff[~keep]
    worst = diff.max().item() if diff.numel() else 0.0
    assert worst <= 1e-5 * scale, f"{where} differs by {worst:.3g} (max |w| {scale:.3g})"


@pytest.mark.parametrize("case", DETERMINISTIC)
def test_same_tensors_as_mergekit(case: str, merged_by_both) -> None:
    ours_dir, theirs_dir, _ = merged_by_both[("float32", case)]
    ours, theirs = load_tensors(ours_dir), load_tensors(theirs_dir)
    assert set(ours) == set(theirs)
    for name, expected in theirs.items():
        _assert_close(ours[name], expected, f"{case}: {name}")
    ours_config = json.loads((ours_dir / "config.json").read_text())
    theirs_config = json.loads((theirs_dir / "config.json").read_text())
    assert ours_config["num_hidden_layers"] == theirs_config["num_hidden_layers"]


def _selection_ties(
    method: str, deltas: list[torch.Tensor], params: list[dict], global_params: dict
) -> torch.Tensor:
    """Where a selection's threshold value sits: the entries whose |delta| (TIES, breadcrumbs; any
    model's) or variance across the task vectors (SCE) equals a threshold, from mergekit's ranks."""
    tied = torch.zeros(deltas[0].shape, dtype=torch.bool)
    if method == "sce":
        variance = torch.stack(deltas).var(dim=0, unbiased=False)
        k = int(int(torch.count_nonzero(variance)) * global_params["select_topk"])
        if 0 < k < variance.numel():
            return variance == variance.reshape(-1).sort(descending=True).values[k - 1]
        return tied
    for delta, p in zip(deltas, params, strict=True):
        ascending = delta.abs().reshape(-1).sort().values
        n = ascending.numel()
        if p["density"] >= 1:
            continue
        if method.startswith("ties"):
            ranks = [n - max(1, int(p["density"] * n))]
        else:  # breadcrumbs: ranks [n_bot, n_bot + kept) stay
            kept = int(p["density"] * n)
            bottom = max(0, n - kept - int(p["gamma"] * n))
            ranks = [bottom, bottom + kept - 1] if kept else []
        for rank in ranks:
            tied |= delta.abs() == ascending[rank]
    return tied


@pytest.mark.parametrize("family", list(LOW_PRECISION))
@pytest.mark.parametrize("case", TIED)
def test_tied_selections_as_mergekit(family: str, case: str, merged_by_both) -> None:
    """bf16 and fp16 checkpoints, computed in float32 (passthrough: in the checkpoint's dtype, and
    then bit-identical). Methods without a selection give mergekit's tensors to float32 rounding.
    With a selection, where the threshold value is tied, the kept entries among the tied ones may
    differ (mergekit's `torch.argsort`/`topk` order among equal values is implementation-defined;
    ours keeps ties in position order). Asserted: the same number of kept entries per tensor
    (entries that differ from the base), and the same tensors everywhere except at the entries
    whose |delta| (or SCE variance) equals a threshold value. SCE's model weights are mean squares
    of the kept entries, so a different choice among ties moves them by at most the tied entries'
    share of each model's kept mass: outside the ties, SCE is held to that first-order bound."""
    _assert_as_mergekit(family, case, merged_by_both)


@pytest.mark.parametrize("case", SEARCH)
def test_a_search_export_over_bf16_parents_as_mergekit(case: str, merged_by_both) -> None:
    """The recipe `export` writes for a search over bf16 parents gives mergekit's tensors (ties as
    above); the in-memory merge the search scored equals `evomerge merge` of the same file
    (tests/merge/test_live_memory.py, on bf16 families), so mergekit reproduces what was scored."""
    recipe = merged_by_both[("bfloat16", case)][2]
    assert recipe.dtype == "float32" and any(isinstance(m.parameters["weight"], list) for m in recipe.models)
    _assert_as_mergekit("bfloat16", case, merged_by_both)


def _assert_as_mergekit(family: str, case: str, merged_by_both) -> None:
    ours_dir, theirs_dir, recipe = merged_by_both[(family, case)]
    ours, theirs = load_tensors(ours_dir), load_tensors(theirs_dir)
    assert set(ours) == set(theirs)
    method = recipe.merge_method
    if method == "passthrough":
        for name, expected in theirs.items():
            assert ours[name].dtype == expected.dtype and torch.equal(ours[name], expected), name
        return
    selective = method in ("ties", "breadcrumbs", "breadcrumbs_ties") or (
        method == "sce" and recipe.parameters.get("select_topk", 1.0) < 1
    )
    readers = open_models(recipe)
    plan = plan_for(recipe, readers)
    counted = 0
    for job in plan.jobs:
        base = readers[job.base[0]].get(job.base[1]).float()
        deltas = [readers[m].get(n).float() - base for m, n in job.sources]
        where = f"{family} {case}: {job.name}"
        if not selective:
            _assert_close(ours[job.name], theirs[job.name], where)
            continue
        tied = _selection_ties(method, deltas, list(job.model_params), job.global_params)
        changed_ours = int((ours[job.name].float() != base).sum())
        changed_theirs = int((theirs[job.name].float() != base).sum())
        if len(deltas) == 1 or method == "sce":  # one kept set: its size is the count of changed entries
            assert changed_ours == changed_theirs, f"{where}: {changed_ours} kept, mergekit {changed_theirs}"
        counted += int(tied.sum())
        if method != "sce":
            _assert_close(ours[job.name], theirs[job.name], where, keep=tied)
            continue
        kept = ~tied & (torch.stack(deltas).var(dim=0, unbiased=False) > 0)
        shift = sum(float(d[tied].square().sum()) / max(float(d[kept].square().sum()), 1e-30) for d in deltas)
        bound = 1e-5 * theirs[job.name].abs().max().item() + 2 * shift * max(
            d.abs().max().item() for d in deltas
        )
        worst = (ours[job.name].float() - theirs[job.name].float()).abs()[~tied].max().item()
        assert worst <= bound, f"{where}: differs by {worst:.3g} outside the ties (bound {bound:.3g})"
    if selective:
        assert counted > 0, f"{family} {case}: no threshold fell on tied values; the case tests nothing"


@pytest.mark.parametrize("case", list(option_recipes(Path("b"), [Path("p0"), Path("p1")])))
def test_options_as_mergekit(case: str, merged_by_both) -> None:
    """Each option gives mergekit's tensors (bit-identical where mergekit computes in float32 and
    casts, as with out_dtype), written dtype, config dtype and tokenizer (vocabulary, special tokens,
    chat template); the accepted-and-ignored parameters (int8_mask, slerp's weight, task_arithmetic's
    density) change nothing."""
    from transformers import AutoTokenizer

    ours_dir, theirs_dir, recipe = merged_by_both[("float32", case)]
    ours, theirs = load_tensors(ours_dir), load_tensors(theirs_dir)
    assert set(ours) == set(theirs)
    for name, expected in theirs.items():
        assert ours[name].dtype == expected.dtype, name
        if recipe.out_dtype:
            assert ours[name].dtype == getattr(torch, recipe.out_dtype)
            assert torch.equal(ours[name], expected), f"{case}: {name}"
        else:
            _assert_close(ours[name], expected, f"{case}: {name}")
    configs = [json.loads((d / "config.json").read_text()) for d in (ours_dir, theirs_dir)]
    assert configs[0].get("torch_dtype", configs[0].get("dtype")) == configs[1].get(
        "torch_dtype", configs[1].get("dtype")
    )
    tokenizers = [AutoTokenizer.from_pretrained(d) for d in (ours_dir, theirs_dir)]
    assert tokenizers[0].get_vocab() == tokenizers[1].get_vocab()
    assert tokenizers[0].special_tokens_map == tokenizers[1].special_tokens_map
    if recipe.chat_template in NAMED_TEMPLATES:  # our own text: the same conversations rendered
        for tokenizer in tokenizers:
            tokenizer.bos_token, tokenizer.eos_token = "<|endoftext|>", "<|pad|>"
        for messages, prompt in CONVERSATIONS:
            rendered = [
                t.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
                for t in tokenizers
            ]
            assert rendered[0] == rendered[1], (recipe.chat_template, messages)
        return
    assert tokenizers[0].chat_template == tokenizers[1].chat_template
    if recipe.chat_template:
        assert tokenizers[0].chat_template == TEMPLATE


def test_a_path_with_plus_as_mergekit(merged_by_both) -> None:
    """evomerge writes a '+' path in mergekit's structured form; mergekit reads it as one model."""
    ours_dir, theirs_dir, recipe = merged_by_both[("float32", "plus_path")]
    assert "+" in recipe.base_model and "path:" in recipe.to_yaml()
    ours, theirs = load_tensors(ours_dir), load_tensors(theirs_dir)
    assert set(ours) == set(theirs)
    for name, expected in theirs.items():
        _assert_close(ours[name], expected, f"plus_path: {name}")
