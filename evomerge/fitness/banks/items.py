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
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictInt, ValidationError, model_validator

from evomerge.atomic import write_atomic
from evomerge.errors import ConfigError

SPLITS = ("train", "eval", "test")
ORIGIN_KEYS = ("harness", "harness_version", "task", "task_version", "config_sha256")
_GENERATIVE_FIELDS = ("until", "answer_regex", "answer_regex_select")
Text = Annotated[str, Strict()]


class Item(BaseModel):
    """One benchmark item (the fields: this module's docstring); `Item.from_dict` validates a raw
    bank record with errors that name its file and line."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[Text, Field(min_length=1)]
    task: Annotated[Text, Field(min_length=1)]
    prompt: Text
    choices: tuple[Text, ...] | None = None
    answer: StrictInt | None = None
    target: Text | None = None
    split: Text | None = None
    group: Text | None = None
    target_delimiter: Text | None = None
    until: tuple[Text, ...] | None = None
    answer_regex: Text | None = None
    answer_regex_select: StrictInt | None = None
    origin: dict[str, Text] | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_choice(self) -> bool:
        return self.choices is not None

    @model_validator(mode="after")
    def _consistent(self) -> Item:
        """What the types cannot say: a way to score it, an answer in range, each lm-eval field
        only where it means something."""
        where = f"item {self.id!r}"
        if self.choices is None and self.target is None:
            raise ValueError(
                f"{where} has neither 'choices' + 'answer' (multiple choice) nor 'target' (generative); "
                "add one of them"
            )
        if self.choices is not None:
            _check_choices(self.choices, self.answer, where)
        elif self.answer is not None:
            raise ValueError(f"{where} has an 'answer' but no 'choices'")
        if self.target is not None and not self.target.strip():
            raise ValueError(f"{where}: 'target' must be a non-empty string")
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"{where}: split {self.split!r} is not one of {SPLITS}")
        _check_harness_fields(self, where)
        return self

    @classmethod
    def from_dict(cls, data: Any, where: str = "item") -> Item:
        """Validate one raw item; `where` (e.g. "bank.jsonl:12") prefixes every error."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: an item must be a JSON object, got {type(data).__name__}")
        try:
            return cls.model_validate({**data, "meta": data.get("meta") or {}})
        except ValidationError as error:
            raise ConfigError(f"{where}: {_describe(error, data)}") from None

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump()
        for name in ("choices", "until"):
            if data[name] is not None:
                data[name] = list(data[name])
        return {key: value for key, value in data.items() if value not in (None, {})}


def _check_choices(choices: tuple[str, ...], answer: int | None, where: str) -> None:
    if not choices:
        raise ValueError(
            f"{where} has empty or non-list 'choices' ({list(choices)!r}); give at least two choice strings"
        )
    if not all(choices):
        raise ValueError(f"{where}: every choice must be a non-empty string")
    if len(choices) < 2:
        raise ValueError(f"{where} has a single choice; give at least two")
    if answer is None:
        raise ValueError(
            f"{where} has 'choices' but no 'answer' field; add \"answer\": the index of the correct "
            f"choice (0..{len(choices) - 1})"
        )
    if not 0 <= answer < len(choices):
        raise ValueError(
            f"{where}: answer index {answer!r} is out of range for {len(choices)} choices "
            f"(use 0..{len(choices) - 1})"
        )


def _check_harness_fields(item: Item, where: str) -> None:
    """The optional fields an lm-eval task brings, each only where it means something."""
    if item.target_delimiter is not None and item.choices is None:
        raise ValueError(f"{where}: 'target_delimiter' must be a string, on an item with 'choices'")
    present = [name for name in _GENERATIVE_FIELDS if getattr(item, name) is not None]
    if present and item.target is None:
        raise ValueError(f"{where}: {present} apply to generative items only; add a 'target'")
    if item.until is not None and (not item.until or not all(item.until)):
        raise ValueError(
            f"{where}: 'until' must be a non-empty list of stop strings, not {list(item.until)!r}"
        )
    if item.answer_regex is not None:
        try:
            re.compile(item.answer_regex)
        except re.error as error:
            raise ValueError(
                f"{where}: 'answer_regex' {item.answer_regex!r} is not a valid regex ({error})"
            ) from None
    if item.answer_regex_select is not None and item.answer_regex is None:
        raise ValueError(f"{where}: 'answer_regex_select' must be an integer, with an 'answer_regex'")
    origin = item.origin
    if origin is not None and (set(origin) != set(ORIGIN_KEYS) or not all(origin.values())):
        raise ValueError(f"{where}: 'origin' must be an object of non-empty strings with keys {ORIGIN_KEYS}")


def _describe(error: ValidationError, data: dict[str, Any]) -> str:
    """The first problem, in the bank's terms: an unknown field, a rule of ours, or a field's type."""
    problems = error.errors()
    unknown = sorted(str(p["loc"][0]) for p in problems if p["type"] == "extra_forbidden")
    if unknown:
        return (
            f"unknown field(s) {unknown}; allowed: {sorted(Item.model_fields)} (put extra data under 'meta')"
        )
    first = problems[0]
    if first["type"] == "value_error":  # one of `_consistent`'s rules
        return str(first["msg"]).removeprefix("Value error, ")
    field = ".".join(str(part) for part in first["loc"])
    return f"item {data.get('id')!r}: field {field!r}: {first['msg'].lower()}, got {first.get('input')!r}"


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
