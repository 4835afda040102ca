"""Banks from lm-eval tasks (task YAMLs over local JSON written here), and agreement with lm-eval.

lm-eval itself is the oracle: its task objects render the requests, its HF model scores them and
its `process_results` / filters grade them; evomerge's bank and scorer must give the same answers.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.errors import ConfigError
from evomerge.fitness.banks.items import Item, load_bank
from evomerge.fitness.scoring.scoring import Scorer, generated_answer

lm_eval = pytest.importorskip(
    "lm_eval", reason="LM-EVAL IS NOT INSTALLED: pip install -e '.[dev]' (or '.[lmeval]') to run these tests"
)
from lm_eval.tasks import TaskManager  # noqa: E402

from evomerge.fitness.banks.lmeval import FEWSHOT_SEED, lm_eval_items  # noqa: E402

MC_YAML = """\
task: toy_sums
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/sums_test.jsonl
    train: {data}/sums_train.jsonl
test_split: test
fewshot_split: train
num_fewshot: 2
output_type: multiple_choice
doc_to_text: "Question: what is {{{{a}}}} plus {{{{b}}}}?\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
metadata:
  version: 2.0
"""

# No target delimiter and a prompt ending in a space: lm-eval moves the space into the choice.
SPACED_YAML = """\
task: toy_spaced
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/sums_test.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{a}}}} + {{{{b}}}} = "
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
metadata:
  version: 1
"""

GEN_YAML = """\
task: toy_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/sums_test.jsonl
test_split: test
output_type: generate_until
doc_to_text: "{{{{a}}}}+{{{{b}}}}="
doc_to_target: "{{{{choices[label]}}}}"
generation_kwargs:
  until: ["Q:", "\\n\\n"]
  max_gen_toks: 12
  do_sample: false
filter_list:
  - name: last-number
    filter:
      - function: regex
        regex_pattern: "(-?[0-9]+)"
        group_select: -1
      - function: take_first
  - name: everything
    filter:
      - function: lowercase
metric_list:
  - metric: exact_match
metadata:
  version: 3
"""
GEN_DOCS = 6  # generation is the slow part: a few documents show the stops and the regex


def _sums(count: int, offset: int) -> list[dict[str, Any]]:
    """Sums with a right answer and wrong ones of other lengths (so acc and acc_norm can differ)."""
    rows = []
    for k in range(count):
        a, b = 7 * k + offset, 3 * k + 1
        wrong = [str(a + b + 1), str(10 * (a + b) + 3), "none of these"]
        choices = wrong[: 1 + k % 3] + [str(a + b)]
        label = k % len(choices)
        choices[label], choices[-1] = choices[-1], choices[label]
        rows.append({"a": a, "b": b, "choices": choices, "label": label})
    return rows


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lmeval_tasks")
    for name, rows in (("sums_test", _sums(16, 2)), ("sums_train", _sums(5, 40))):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    for name, text in (("mc", MC_YAML), ("spaced", SPACED_YAML), ("gen", GEN_YAML)):
        (folder / f"{name}.yaml").write_text(text.format(data=folder))
    return folder


@pytest.fixture(scope="module")
def lm_tasks(tasks_dir: Path) -> dict[str, Any]:
    """lm-eval's own task objects with their requests built as simple_evaluate builds them."""
    loaded = TaskManager(include_path=str(tasks_dir), include_defaults=False).load(
        ["toy_sums", "toy_spaced", "toy_gen"]
    )["tasks"]
    for name, task in loaded.items():
        task.set_fewshot_seed(FEWSHOT_SEED)
        task.build_all_requests(limit=GEN_DOCS if name == "toy_gen" else None, rank=0, world_size=1)
    return loaded


@pytest.fixture(scope="module")
def banks(tasks_dir: Path) -> dict[str, list[Item]]:
    return {
        "toy_sums": lm_eval_items(str(tasks_dir / "mc.yaml")),
        "toy_spaced": lm_eval_items("toy_spaced", include_path=tasks_dir),
        "toy_gen": lm_eval_items(str(tasks_dir / "gen.yaml"), limit=GEN_DOCS),
    }


@pytest.fixture(scope="module")
def tiny(tiny_family: tuple[Path, list[Path]]) -> tuple[Any, Any, Any]:
    """The tiny model, its tokenizer, and lm-eval's HF model wrapping the same objects."""
    from lm_eval.models.huggingface import HFLM

    model = AutoModelForCausalLM.from_pretrained(tiny_family[0]).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_family[0])
    return model, tokenizer, HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, device="cpu")


def _by_doc(task: Any) -> dict[int, list[Any]]:
    requests: dict[int, list[Any]] = defaultdict(list)
    for instance in task.instances:
        requests[instance.doc_id].append(instance)
    return {doc_id: sorted(group, key=lambda i: i.idx) for doc_id, group in requests.items()}


def test_multiple_choice_items_are_lm_evals_requests(banks: dict[str, list[Item]], lm_tasks: dict) -> None:
    """Prompt = lm-eval's context (two few-shot examples drawn with lm-eval's seed), and
    prompt + delimiter + choice = each loglikelihood request, for every document."""
    for name in ("toy_sums", "toy_spaced"):
        requests = _by_doc(lm_tasks[name])
        items = banks[name]
        assert [item.id for item in items] == [f"{name}/{doc_id}" for doc_id in range(16)]
        for item in items:
            group = requests[item.meta["doc_id"]]
            assert [(item.prompt, (item.target_delimiter or "") + c) for c in item.choices] == [
                instance.arguments for instance in group
            ]
            assert item.choices[item.answer] == str(group[0].doc["a"] + group[0].doc["b"])
    first = banks["toy_sums"][0]
    assert first.prompt.count("Question:") == 3 and first.prompt.endswith("what is 2 plus 1?\nAnswer:")
    assert first.prompt.count("\n\n") == 2  # lm-eval's fewshot_delimiter between the examples
    assert {item.target_delimiter for item in banks["toy_sums"]} == {" "}
    assert {item.target_delimiter for item in banks["toy_spaced"]} == {""}


def test_generative_items_carry_stops_and_the_regex_filter(banks: dict[str, list[Item]]) -> None:
    items = banks["toy_gen"]
    assert len(items) == GEN_DOCS
    assert {item.until for item in items} == {("Q:", "\n\n")}
    assert {(item.answer_regex, item.answer_regex_select) for item in items} == {("(-?[0-9]+)", -1)}
    assert items[1].prompt == "9+4=" and items[1].target == "13"


def test_origin_records_task_version_and_config_hash(tasks_dir: Path, banks: dict[str, list[Item]]) -> None:
    origin = banks["toy_sums"][0].origin
    assert origin is not None
    assert (origin["harness"], origin["task"], origin["task_version"]) == ("lm-eval", "toy_sums", "2.0")
    assert origin["harness_version"] == lm_eval.__version__
    # The same config gives the same hash from another folder; a changed template another one.
    moved = tasks_dir / "moved"
    moved.mkdir(exist_ok=True)
    (moved / "mc.yaml").write_text((tasks_dir / "mc.yaml").read_text())
    (moved / "edited.yaml").write_text((tasks_dir / "mc.yaml").read_text().replace("plus", "and"))
    assert lm_eval_items(str(moved / "mc.yaml"), limit=1)[0].origin == origin
    edited = lm_eval_items(str(moved / "edited.yaml"), limit=1)[0].origin
    assert edited is not None and edited["config_sha256"] != origin["config_sha256"]


def _lm_eval_grades(task: Any, lm: Any) -> dict[int, dict[str, float]]:
    """lm-eval's own per-document metrics: its HF model's log-likelihoods through process_results."""
    responses = lm.loglikelihood(task.instances)
    by_doc: dict[int, list[tuple[int, Any]]] = defaultdict(list)
    docs = {}
    for instance, response in zip(task.instances, responses, strict=True):
        by_doc[instance.doc_id].append((instance.idx, response))
        docs[instance.doc_id] = instance.doc
    return {
        doc_id: task.process_results(docs[doc_id], [r for _, r in sorted(group)])
        for doc_id, group in by_doc.items()
    }


def test_per_item_correctness_equals_lm_evals_acc_and_acc_norm(
    tiny: tuple[Any, Any, Any], banks: dict[str, list[Item]], lm_tasks: dict
) -> None:
    """On a tiny model, `sum` is lm-eval's acc and `chars` its acc_norm on every item."""
    model, tokenizer, lm = tiny
    scorer = Scorer(tokenizer, batch_size=4)
    differ = 0
    for name in ("toy_sums", "toy_spaced"):
        grades = _lm_eval_grades(lm_tasks[name], lm)
        items = banks[name]
        acc = scorer.score(model, items, "sum").correct
        acc_norm = scorer.score(model, items, "chars").correct
        for item in items:
            grade = grades[item.meta["doc_id"]]
            assert (acc[item.id], acc_norm[item.id]) == (grade["acc"], grade["acc_norm"]), item.id
            differ += acc[item.id] != acc_norm[item.id]
    assert differ > 0  # the two normalizations pick differently somewhere, so both are tested


def test_generated_answers_equal_lm_evals_filtered_responses(
    tiny: tuple[Any, Any, Any], banks: dict[str, list[Item]], lm_tasks: dict
) -> None:
    """Greedy continuations cut at the task's stops and read by its regex, as lm-eval's
    generate_until and filter pipeline read them ("[invalid]" where the regex finds nothing)."""
    from lm_eval.filters.extraction import RegexFilter

    model, tokenizer, lm = tiny
    task = lm_tasks["toy_gen"]
    for instance, response in zip(task.instances, lm.generate_until(task.instances), strict=True):
        instance.resps = [response]
    task.apply_filters()
    theirs = {f"toy_gen/{i.doc_id}": i.filtered_resps["last-number"] for i in task.instances}
    items = banks["toy_gen"]
    scorer = Scorer(tokenizer, batch_size=4, max_new_tokens=12)
    result = scorer.score(model, items, generate={i.id for i in items})
    ours = {item.id: generated_answer(result.generations[item.id], item) or "[invalid]" for item in items}
    assert ours == theirs
    # Texts that hold numbers: lm-eval's regex filter (after the stop) and generated_answer agree.
    texts = ["12 then 7", "x -3 y", "none", "5\n\n6"]
    regex = RegexFilter(regex_pattern="(-?[0-9]+)", group_select=-1)
    expected = [r[0] for r in regex.apply([[t.split("\n\n")[0]] for t in texts], [{}] * len(texts))]
    assert expected == ["7", "-3", "[invalid]", "5"]
    assert [generated_answer(t, items[0]) or "[invalid]" for t in texts] == expected


def test_cli_writes_the_bank_and_refuses_bad_input(tasks_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sums.jsonl"
    args = ["banks", "from-lm-eval", str(tasks_dir / "mc.yaml"), "--out", str(out), "--limit", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 items from lm-eval task toy_sums (version 2.0" in result.output
    assert [item.id for item in load_bank(out)] == ["toy_sums/0", "toy_sums/1", "toy_sums/2"]
    cases = [
        (["--filter", "everything"], "gen.yaml", "filter 'everything' has steps ['LowercaseFilter']"),
        (
            ["--filter", "nope"],
            "gen.yaml",
            "has no filter 'nope'; its filters: ['last-number', 'everything']",
        ),
        ([], "missing.yaml", "does not exist"),
    ]
    for extra, yaml_name, message in cases:
        bad = CliRunner().invoke(
            app, ["banks", "from-lm-eval", str(tasks_dir / yaml_name), "--out", str(tmp_path / "x"), *extra]
        )
        assert isinstance(bad.exception, ConfigError) and message in str(bad.exception), bad.exception
    assert not (tmp_path / "x").exists()


def test_a_bank_from_lm_eval_scores_in_a_suite(tiny: tuple[Any, Any, Any], tasks_dir: Path) -> None:
    """The suite's `chars` normalization and `generate` mode reach the scorer for such banks."""
    from evomerge.fitness.banks.items import write_bank
    from evomerge.fitness.banks.suite import FitnessSuite
    from evomerge.fitness.scoring.evaluator import FitnessEvaluator

    write_bank(lm_eval_items(str(tasks_dir / "mc.yaml")), tasks_dir / "sums.jsonl")
    write_bank(lm_eval_items(str(tasks_dir / "gen.yaml"), limit=GEN_DOCS), tasks_dir / "gen.jsonl")
    suite = FitnessSuite.from_dict(
        {
            "name": "lm-eval",
            "banks": {
                "sums": {"path": "sums.jsonl", "normalization": "chars"},
                "gen": {"path": "gen.jsonl", "mode": "generate", "max_new_tokens": 12},
            },
            "tasks": {
                "sums": {"banks": ["sums"], "anchors": 16},
                "gen": {"banks": ["gen"], "anchors": GEN_DOCS},
            },
        },
        root=tasks_dir,
    )
    model, tokenizer, _ = tiny
    result = FitnessEvaluator(suite, tokenizer).evaluate(model)
    scorer = Scorer(tokenizer)
    sums = suite.task_items("sums")
    expected = scorer.score(model, sums, "chars").correct
    assert {i.id: result.answers[i.id] for i in sums} == expected
    assert result.estimates["sums"] == pytest.approx(sum(expected.values()) / len(sums))
    assert set(result.answers) >= {i.id for i in suite.task_items("gen")}


def _search_on_mixed_suite(
    family: tuple[Path, list[Path]], tasks_dir: Path, tmp_path: Path, code_tokens: int
) -> None:
    """Two trials of a search whose suite has an lm-eval multiple-choice bank, an lm-eval
    generate_until bank (stops and a regex) and two HumanEval code items (run in the sandbox) as
    its three objectives: every trial completes with an estimate per task from its answers."""
    import ray
    import yaml
    from searchfixture import write_experiment

    from evomerge.experiment import Experiment
    from evomerge.fitness.banks.items import write_bank
    from evomerge.runtime.driver import SearchDriver
    from evomerge.store import open_run

    write_bank(lm_eval_items(str(tasks_dir / "mc.yaml")), tmp_path / "sums.jsonl")
    write_bank(lm_eval_items(str(tasks_dir / "gen.yaml"), limit=GEN_DOCS), tmp_path / "gen.jsonl")
    humaneval = load_bank(Path(__file__).resolve().parents[2] / "fitness" / "humaneval.jsonl")
    humaneval = [item for item in humaneval if item.split == "eval"][:2]
    write_bank(humaneval, tmp_path / "code.jsonl")
    suite = {
        "name": "mixed",
        "banks": {
            "sums": {"path": "sums.jsonl", "normalization": "chars"},
            "gen": {"path": "gen.jsonl", "mode": "generate", "max_new_tokens": 12},
            "code": {"path": "code.jsonl", "mode": "code", "max_new_tokens": code_tokens},
        },
        "tasks": {
            "sums": {"banks": ["sums"], "anchors": 4},
            "gen": {"banks": ["gen"], "anchors": 2},
            "code": {"banks": ["code"], "anchors": 2},
        },
        "sandbox": {"timeout_s": 10, "network": "allow"},
    }
    (tmp_path / "mixed.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    path = write_experiment(tmp_path / "exp", family, trials=2, workers=1)
    experiment = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**experiment, "suite": str(tmp_path / "mixed.yaml")}))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = SearchDriver(Experiment.load(path), tmp_path / "run").run()
    finally:
        ray.shutdown()
    assert summary.complete >= 2 and summary.failed == 0
    store = open_run(tmp_path / "run")
    assert store.objectives == ["sums", "gen", "code"]
    for trial in store.trials():
        answers = trial.user_attrs["answers"]
        assert len(answers) == 8 and set(answers.values()) <= {0, 1}
        assert {i.split("/")[0] for i in answers} == {"toy_sums", "toy_gen", "HumanEval"}
        assert len(trial.values) == 3 and all(0.0 <= value <= 1.0 for value in trial.values)


@pytest.mark.slow
def test_a_search_runs_on_a_suite_mixing_lm_eval_generative_and_code_banks(
    tiny_family: tuple[Path, list[Path]], tasks_dir: Path, tmp_path: Path
) -> None:
    """Issue 16 item 5 on the tiny family."""
    _search_on_mixed_suite(tiny_family, tasks_dir, tmp_path, code_tokens=16)


@pytest.mark.slow
@pytest.mark.real_model
def test_a_search_on_smollm2_runs_on_the_mixed_suite(tasks_dir: Path, tmp_path: Path) -> None:
    """The same search on SmolLM2-135M-Instruct and two parents near it (seeded noise): real
    tokenization of the lm-eval prompts, and code completions long enough to end at a stop."""
    from smollm2 import noisy_copy, smollm2_base

    base = smollm2_base()
    parents = [noisy_copy(base, tmp_path / f"parent{seed}", seed) for seed in (1, 2)]
    _search_on_mixed_suite((base, parents), tasks_dir, tmp_path, code_tokens=96)
