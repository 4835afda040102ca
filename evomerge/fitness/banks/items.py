"""Item banks: the JSONL format of benchmark items, its validation, and bank I/O.

One JSON object per line:

    id        unique string within the bank
    task      the source task (e.g. "arithmetic"); a suite groups banks into objectives
    group     optional finer stratum (e.g. "2_digit_addition"); stratified sampling uses it
    prompt    the text the model continues
    choices   + answer: multiple choice, scored by the log-likelihood of each choice after the prompt
    target    generative: greedy continuation compared by exact match after normalization
    split     optional "train" (used to make experts, never scored), "eval" (the selection pool:
              calibration, anchors, search, promotion) or "test" (held out: read only by `audit`
              and `export --verify`); an item without a split counts as "eval"
    meta      optional free-form dict (source, licence, original fields)

Optional fields that carry an lm-eval task's own rules (`evomerge banks from-lm-eval`):

    target_delimiter     text put between the prompt and each choice ("" when absent)
    until                generative stop strings: the continuation is cut at the first (["\n"] when absent)
    answer_regex         generative: the answer is this regex's match in the continuation
    answer_regex_select  which of the regex's matches (0 the first, -1 the last; 0 when absent)
    origin               where the item was made: harness, harness_version, task, task_version,
                         config_sha256 (the task config's hash)

An item has either `choices` + `answer` or `target` (or both: the scorer then uses the choices).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evomerge.atomic import write_atomic
from evomerge.errors import ConfigError

SPLITS = ("train", "eval", "test")
ORIGIN_KEYS = ("harness", "harness_version", "task", "task_version", "config_sha256")
_GENERATIVE_FIELDS = ("until", "answer_regex", "answer_regex_select")
_KNOWN_FIELDS = {
    "id",
    "task",
    "group",
    "prompt",
    "choices",
    "answer",
    "target",
    "split",
    "meta",
    "target_delimiter",
    "origin",
    *_GENERATIVE_FIELDS,
}


@dataclass(frozen=True)
class Item:
    """One benchmark item; construct with `Item.from_dict` to get validation."""

    id: str
    task: str
    prompt: str
    choices: tuple[str, ...] | None = None
    answer: int | None = None
    target: str | None = None
    split: str | None = None
    group: str | None = None
    target_delimiter: str | None = None
    until: tuple[str, ...] | None = None
    answer_regex: str | None = None
    answer_regex_select: int | None = None
    origin: dict[str, str] | None = field(default=None, compare=False, hash=False)
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_choice(self) -> bool:
        return self.choices is not None

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "item") -> Item:
        """Validate one raw item; `where` (e.g. "bank.jsonl:12") prefixes every error."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: an item must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - _KNOWN_FIELDS
        if unknown:
            raise ConfigError(
                f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_KNOWN_FIELDS)} "
                "(put extra data under 'meta')"
            )
        for name in ("id", "task", "prompt"):
            value = data.get(name)
            if not isinstance(value, str) or (name != "prompt" and not value):
                raise ConfigError(f"{where}: field {name!r} must be a non-empty string, got {value!r}")
        item_id = data["id"]
        choices = data.get("choices")
        answer = data.get("answer")
        target = data.get("target")
        if choices is None and target is None:
            raise ConfigError(
                f"{where}: item {item_id!r} has neither 'choices' + 'answer' (multiple choice) "
                "nor 'target' (generative); add one of them"
            )
        if choices is not None:
            if not isinstance(choices, list) or not choices:
                raise ConfigError(
                    f"{where}: item {item_id!r} has empty or non-list 'choices' ({choices!r}); "
                    "give at least two choice strings"
                )
            if not all(isinstance(c, str) and c for c in choices):
                raise ConfigError(f"{where}: item {item_id!r}: every choice must be a non-empty string")
            if len(choices) < 2:
                raise ConfigError(f"{where}: item {item_id!r} has a single choice; give at least two")
            if answer is None:
                raise ConfigError(
                    f"{where}: item {item_id!r} has 'choices' but no 'answer' field; add \"answer\": "
                    f"the index of the correct choice (0..{len(choices) - 1})"
                )
            if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
                raise ConfigError(
                    f"{where}: item {item_id!r}: answer index {answer!r} is out of range for "
                    f"{len(choices)} choices (use 0..{len(choices) - 1})"
                )
        elif answer is not None:
            raise ConfigError(f"{where}: item {item_id!r} has an 'answer' but no 'choices'")
        if target is not None and (not isinstance(target, str) or not target.strip()):
            raise ConfigError(f"{where}: item {item_id!r}: 'target' must be a non-empty string")
        split = data.get("split")
        if split is not None and split not in SPLITS:
            raise ConfigError(f"{where}: item {item_id!r}: split {split!r} is not one of {SPLITS}")
        group = data.get("group")
        if group is not None and not isinstance(group, str):
            raise ConfigError(f"{where}: item {item_id!r}: 'group' must be a string")
        meta = data.get("meta") or {}
        if not isinstance(meta, dict):
            raise ConfigError(f"{where}: item {item_id!r}: 'meta' must be an object")
        _check_harness_fields(data, f"{where}: item {item_id!r}")
        until = data.get("until")
        return cls(
            id=item_id,
            task=data["task"],
            prompt=data["prompt"],
            choices=tuple(choices) if choices is not None else None,
            answer=answer,
            target=target,
            split=split,
            group=group,
            target_delimiter=data.get("target_delimiter"),
            until=tuple(until) if until is not None else None,
            answer_regex=data.get("answer_regex"),
            answer_regex_select=data.get("answer_regex_select"),
            origin=data.get("origin"),
            meta=meta,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("choices", "until"):
            if data[name] is not None:
                data[name] = list(data[name])
        return {key: value for key, value in data.items() if value not in (None, {})}


def _check_harness_fields(data: dict[str, Any], where: str) -> None:
    """The optional fields an lm-eval task brings: types, and each only where it means something."""
    delimiter = data.get("target_delimiter")
    if delimiter is not None and (not isinstance(delimiter, str) or data.get("choices") is None):
        raise ConfigError(f"{where}: 'target_delimiter' must be a string, on an item with 'choices'")
    present = [name for name in _GENERATIVE_FIELDS if data.get(name) is not None]
    if present and data.get("target") is None:
        raise ConfigError(f"{where}: {present} apply to generative items only; add a 'target'")
    until = data.get("until")
    if until is not None and (
        not isinstance(until, list) or not until or not all(isinstance(s, str) and s for s in until)
    ):
        raise ConfigError(f"{where}: 'until' must be a non-empty list of stop strings, not {until!r}")
    pattern = data.get("answer_regex")
    if pattern is not None:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as error:
            raise ConfigError(f"{where}: 'answer_regex' {pattern!r} is not a valid regex ({error})") from None
    select = data.get("answer_regex_select")
    if select is not None and (isinstance(select, bool) or not isinstance(select, int) or pattern is None):
        raise ConfigError(f"{where}: 'answer_regex_select' must be an integer, with an 'answer_regex'")
    origin = data.get("origin")
    if origin is not None and (
        not isinstance(origin, dict)
        or set(origin) != set(ORIGIN_KEYS)
        or not all(isinstance(value, str) and value for value in origin.values())
    ):
        raise ConfigError(f"{where}: 'origin' must be an object of non-empty strings with keys {ORIGIN_KEYS}")


def check_unique(items: Iterable[Item], where: str) -> None:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise ConfigError(f"{where}: duplicate item id {item.id!r}; item ids must be unique in a bank")
        seen.add(item.id)


def jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(file:line, parsed JSON) for every non-blank line; a line that is not JSON is one ConfigError."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                message = f"{where}: not valid JSON ({error.msg}); one JSON object per line"
                raise ConfigError(message) from None
            yield where, record


def load_bank(path: str | Path) -> list[Item]:
    """Read and validate a JSONL bank (duplicate ids, answer range, empty choices, ...)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"item bank {str(path)!r} does not exist; give the path of a .jsonl bank")
    items = [Item.from_dict(raw, where) for where, raw in jsonl_records(path)]
    if not items:
        raise ConfigError(f"item bank {str(path)!r} holds no items")
    check_unique(items, str(path))
    return items


def write_bank(items: Iterable[Item], path: str | Path) -> Path:
    """Write a bank atomically (temporary file + rename), after checking id uniqueness."""
    items = list(items)
    path = Path(path)
    check_unique(items, str(path))
    lines = [json.dumps(item.to_dict(), ensure_ascii=False, sort_keys=True) + "\n" for item in items]
    write_atomic(path, "".join(lines))
    return path


def items_sha256(items: Iterable[Item]) -> str:
    """One digest over items' contents (their JSON form), independent of the file they sit in."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps(item.to_dict(), sort_keys=True).encode())
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
