"""Batched log-likelihood scoring of a `transformers` causal LM on benchmark items.

Multiple-choice items: each choice's score is the log-probability of its tokens after the
prompt, reduced per token (`mean`), summed (`sum`, lm-eval's `acc`) or divided by the choice's
length in characters (`chars`, lm-eval's `acc_norm`); the item is correct when the answer has the
best score. A choice is the item's `target_delimiter` + the choice text, tokenized as lm-eval's
HF model does: the prompt's trailing whitespace moves into the continuation, and the choice's
tokens are those that follow the prompt's in the tokenization of the joined text.

Prefix sharing, at two levels: the tokens that every prompt of a batch starts with (a task's
instructions or few-shot context) are run once and their KV cache is expanded to the batch; each
prompt's own tokens then run once and their cache is shared by all of the item's choices, which
are scored as one batch continuing from it, one row per choice. Items are batched per task and
length-sorted within it (prompts left-padded after the shared prefix, so every prompt ends at the
same column; choices right-padded), and the vocabulary projection runs only at the positions whose
log-probabilities are read (no padding, no last choice token). Scores equal the unshared path's
to float32 rounding (`share_prefix=False`, the reference).

Generative items: greedy decoding, cut at the first of the item's `until` stop strings (a newline
when it has none), the answer taken by its `answer_regex` where it has one, then exact match after
normalization (case, surrounding whitespace and trailing punctuation ignored). Decoding of a batch
ends once every row's continuation holds one of its stop strings (or `max_new_tokens`), so the
tokens after the cut are never generated; `score(stops=...)` gives items other stops (code items
end at HumanEval's).

Non-finite scores mean a broken candidate: `CandidateError`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from evomerge.errors import CandidateError
from evomerge.fitness.banks.items import Item

NORMALIZATIONS = ("mean", "sum", "chars")
DEFAULT_STOPS = ("\n",)


@dataclass
class ScoreResult:
    """Per-item correctness (0/1), per-choice scores (normalized), generated texts, token count."""

    correct: dict[str, int] = field(default_factory=dict)
    choice_scores: dict[str, list[float]] = field(default_factory=dict)
    generations: dict[str, str] = field(default_factory=dict)
    n_tokens: int = 0  # tokens run through the model (prompt + continuation positions, unpadded)


def normalize_answer(text: str) -> str:
    """Exact-match normalization: first line, lower case, single spaces, no trailing punctuation."""
    first_line = text.strip().split("\n", 1)[0] if text.strip() else ""
    return re.sub(r"\s+", " ", first_line).strip().rstrip(".!?,;:").strip().lower()


def item_stops(item: Item) -> tuple[str, ...]:
    """The stop strings a generative item's continuation is cut at."""
    return tuple(item.until or DEFAULT_STOPS)


class _StopStrings(StoppingCriteria):
    """Per row: done once its continuation (decoded as it will be scored) holds one of its stop
    strings. Matching the decoded continuation, not token ids, stops exactly where the text is cut
    (transformers' `stop_strings` also matches a stop that starts inside the prompt)."""

    def __init__(self, tokenizer: Any, start: int, stops: list[tuple[str, ...]]) -> None:
        self.tokenizer = tokenizer
        self.start = start
        self.stops = stops
        self.done = [False] * len(stops)

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        rows = [r for r, done in enumerate(self.done) if not done]
        texts = self.tokenizer.batch_decode(input_ids[rows, self.start :], skip_special_tokens=True)
        for r, text in zip(rows, texts, strict=True):
            self.done[r] = any(stop in text for stop in self.stops[r])
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


def generated_answer(text: str, item: Item) -> str | None:
    """The answer in a continuation: cut at the first stop string, then the regex's selected match
    (lm-eval's `regex` filter: a match with groups gives its first non-empty group); None when the
    regex does not match."""
    for stop in item_stops(item):
        text = text.split(stop, 1)[0]
    if item.answer_regex is None:
        return text
    matches = re.findall(item.answer_regex, text)
    if not matches:
        return None
    try:
        match = matches[item.answer_regex_select or 0]
    except IndexError:
        return None
    if isinstance(match, tuple):
        match = next((group for group in match if group), None)
    return match.strip() if match is not None else None


def _normalized(
    total: torch.Tensor, count: torch.Tensor, chars: torch.Tensor, normalization: str
) -> torch.Tensor:
    """Choice scores: summed log-likelihoods ("sum"), their per-token mean ("mean"), or the sum per
    character of the choice text ("chars")."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization {normalization!r} is not one of {NORMALIZATIONS}")
    if normalization == "sum":
        return total
    return total / (count if normalization == "mean" else chars.to(total.dtype))


def _last_logits_only(model: torch.nn.Module) -> dict[str, int]:
    """`logits_to_keep=1` where the model's forward takes it: the prompt pass needs only its last
    position's logits, and the vocabulary projection of every prompt position is ~20% of a small
    model's compute and a large memory write."""
    parameters = inspect.signature(model.forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}


def _with_cache(model: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """The KV cache argument under the name the model's forward takes (`cache` in newer
    transformers, where `past_key_values` is deprecated)."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def _shared_length(prompts: Sequence[list[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least one token of its own (its last
    position predicts the first choice token)."""
    first = prompts[0]
    limit = min(len(p) for p in prompts) - 1
    shared = 0
    while shared < limit and all(p[shared] == first[shared] for p in prompts):
        shared += 1
    return shared


class _KeepPositions:
    """Feeds the output projection only the hidden states at `positions` (a row-major boolean mask
    over (row, column)), so the logits of padding and of unread positions are never computed; a
    pre-hook, so whatever the model does after the projection (soft-capping, scaling) still applies.
    The model's logits come back as (1, kept, vocab)."""

    def __init__(self, model: torch.nn.Module, positions: torch.Tensor) -> None:
        self.head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.positions = positions
        self.handle: Any = None

    def __enter__(self) -> bool:
        if self.head is not None:
            self.handle = self.head.register_forward_pre_hook(self._gather)
        return self.head is not None

    def _gather(self, module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (args[0][self.positions][None], *args[1:])

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.remove()


def _target_logp(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per position, in float32, without materializing the full
    log-softmax over the vocabulary."""
    logits = logits.float()
    return logits.gather(-1, targets[..., None]).squeeze(-1) - logits.logsumexp(-1)


@dataclass(frozen=True)
class _Encoded:
    prompt: list[int]
    choices: list[list[int]]
    chars: torch.Tensor  # characters of each choice's text (without the delimiter), for "chars"


class Scorer:
    """Scores items with one tokenizer; token ids are cached per item id across calls."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        batch_size: int = 32,
        share_prefix: bool = True,
        max_new_tokens: int = 16,
        token_budget: int | None = None,
    ) -> None:
        """`token_budget`: choice batches hold as many items as fit this many padded tokens (at most
        `batch_size`), so short items run in large batches and long ones do not run out of memory;
        None: a fixed `batch_size` items per batch."""
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.token_budget = token_budget
        self.share_prefix = share_prefix
        self.max_new_tokens = max_new_tokens
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            self.pad_id = 0  # padded positions are masked out, so any id works
        # An empty prompt still needs one position to predict from: this token.
        self.start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else self.pad_id
        self._cache: dict[str, _Encoded] = {}

    def encode(self, item: Item) -> _Encoded:
        """The prompt's tokens (a prefix shared by every choice) and each choice's tokens."""
        encoded = self._cache.get(item.id)
        if encoded is None:
            # lm-eval's HF model (`_encode_pair`): trailing whitespace belongs to the continuation,
            # where a BPE vocabulary has it as the prefix of the next word (" 12", not " " + "12").
            context = item.prompt.rstrip()
            moved = item.prompt[len(context) :] + (item.target_delimiter or "")
            prompt = self.tokenizer(context, add_special_tokens=True)["input_ids"] if context else []
            choices = [self._continuation(context, prompt, moved + c) for c in item.choices or ()]
            prompt = prompt or [self.start_id]
            chars = torch.tensor([float(len(c)) for c in item.choices or ()])
            encoded = self._cache[item.id] = _Encoded(prompt, choices, chars)
        return encoded

    def _continuation(self, context: str, prompt: list[int], continuation: str) -> list[int]:
        """The continuation's tokens: those after the prompt's in the joined text's tokenization (a
        sentencepiece vocabulary tokenizes a word alone differently), or the continuation alone
        where the joined tokenization does not start with the prompt's tokens (a merge across them)."""
        if prompt:
            joined = self.tokenizer(context + continuation, add_special_tokens=True)["input_ids"]
            if joined[: len(prompt)] == prompt and len(joined) > len(prompt):
                return joined[len(prompt) :]
        return self.tokenizer(continuation, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def score(
        self,
        model: torch.nn.Module,
        items: Sequence[Item],
        normalization: str | dict[str, str] = "mean",
        generate: set[str] | None = None,
        stops: Mapping[str, Sequence[str]] | None = None,
    ) -> ScoreResult:
        """Score `items`; ids in `generate` (or items without choices) are scored generatively,
        decoding until one of the item's stop strings: `stops[id]` where given, else its `until`."""
        generate = generate or set()
        stops = stops or {}
        norm_of = (lambda _: normalization) if isinstance(normalization, str) else normalization.__getitem__
        choice_items = [i for i in items if i.is_choice and i.id not in generate]
        gen_items = [i for i in items if not (i.is_choice and i.id not in generate)]
        result = ScoreResult()
        # Per task (its items share instructions or a few-shot context: one prefix per batch), the
        # longest task first and longest items first within it: memory peaks early (fail fast) and
        # batches hold similar lengths.
        longest: dict[str, int] = {}
        for i in choice_items:
            longest[i.task] = max(longest.get(i.task, 0), self._length(i))
        choice_items.sort(key=lambda i: (-longest[i.task], i.task, -self._length(i)))
        for batch in self._choice_batches(choice_items):
            sums, counts, n_tokens = self._choice_batch(model, batch)
            result.n_tokens += n_tokens
            self._collect(batch, sums, counts, norm_of, result)
        for start in range(0, len(gen_items), self.batch_size):
            batch = gen_items[start : start + self.batch_size]
            batch_stops = [tuple(stops.get(i.id, ())) or item_stops(i) for i in batch]
            self._generate_batch(model, batch, batch_stops, result)
        return result

    def _length(self, item: Item) -> int:
        encoded = self.encode(item)
        return len(encoded.prompt) + max(map(len, encoded.choices))

    def padded_tokens(self, batch: Sequence[Item]) -> int:
        """Token positions one shared-prefix batch runs: the shared prefix once, each prompt's own
        tokens padded to the longest, one row per choice padded to the longest choice."""
        encoded = [self.encode(i) for i in batch]
        shared = _shared_length([e.prompt for e in encoded]) if self.share_prefix else 0
        rows = sum(len(e.choices) for e in encoded)
        longest_choice = max(len(c) for e in encoded for c in e.choices)
        return shared + len(encoded) * (max(len(e.prompt) for e in encoded) - shared) + rows * longest_choice

    def _choice_batches(self, items: list[Item]) -> Iterator[list[Item]]:
        """`batch_size` items of one task at a time, or with a token budget as many as fit it (one
        at least)."""
        batch: list[Item] = []
        for item in items:
            if batch and (
                len(batch) == self.batch_size
                or item.task != batch[0].task
                or (self.token_budget is not None and self.padded_tokens([*batch, item]) > self.token_budget)
            ):
                yield batch
                batch = []
            batch.append(item)
        if batch:
            yield batch

    def choice_scores(
        self, model: torch.nn.Module, items: Sequence[Item], normalization: str = "mean"
    ) -> list[torch.Tensor]:
        """Each choice item's per-choice scores, the ones `score` ranks by, as tensors that keep
        their autograd graph: a fine-tune can make them its objective (one batch, no sorting)."""
        sums, counts, _ = self._choice_batch(model, items)
        return [
            _normalized(total, count, self.encode(item).chars, normalization)
            for item, total, count in zip(items, sums, counts, strict=True)
        ]

    def _choice_batch(
        self, model: torch.nn.Module, items: Sequence[Item]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
        """Per item, each choice's summed token log-probability and token count; tokens run."""
        scorer = self._choice_batch_shared if self.share_prefix else self._choice_batch_naive
        return scorer(model, [self.encode(i) for i in items])

    def _collect(
        self,
        batch: list[Item],
        sums: list[torch.Tensor],
        counts: list[torch.Tensor],
        norm_of: Any,
        result: ScoreResult,
    ) -> None:
        for item, total, count in zip(batch, sums, counts, strict=True):
            if not torch.isfinite(total).all():
                raise CandidateError(f"non-finite log-likelihood on item {item.id!r} (NaN/inf in the model)")
            scores = _normalized(total, count, self.encode(item).chars, norm_of(item.id))
            result.choice_scores[item.id] = scores.tolist()
            result.correct[item.id] = int(int(torch.argmax(scores)) == item.answer)

    def _device(self, model: torch.nn.Module) -> torch.device:
        return next(model.parameters()).device

    def _left_pad(self, rows: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, width - len(row) :] = torch.tensor(row)
            mask[r, width - len(row) :] = 1
        return ids.to(device), mask.to(device)

    def _right_pad(self, rows: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        return ids.to(device), mask.to(device)

    def _choice_batch_shared(
        self, model: torch.nn.Module, encoded: list[_Encoded]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
        device = self._device(model)
        n = len(encoded)
        shared = _shared_length([e.prompt for e in encoded])
        cache_kwargs: dict[str, Any] = {}
        if shared:
            # The batch's common prefix, run once; its cache expanded to every item's row.
            prefix = torch.tensor([encoded[0].prompt[:shared]], device=device)
            head = model(input_ids=prefix, use_cache=True, **_last_logits_only(model))
            cache = head.cache if "cache" in head else head.past_key_values
            cache.reorder_cache(torch.zeros(n, dtype=torch.long, device=device))
            cache_kwargs = _with_cache(model, cache)
        own_ids, own_mask = self._left_pad([e.prompt[shared:] for e in encoded], device)
        prompt_mask = torch.cat([torch.ones((n, shared), dtype=torch.long, device=device), own_mask], dim=1)
        positions = shared + (own_mask.cumsum(-1) - 1).clamp(min=0)
        out = model(
            input_ids=own_ids,
            attention_mask=prompt_mask,
            position_ids=positions,
            use_cache=True,
            **cache_kwargs,
            **_last_logits_only(model),
        )
        first_logp = torch.log_softmax(
            out.logits[:, -1, :].float(), dim=-1
        )  # predicts each first choice token
        # One row per (item, choice): the cache rows are repeated for the item's choices.
        owner = torch.tensor([r for r, e in enumerate(encoded) for _ in e.choices], device=device)
        # Newer transformers name the returned cache `cache` (`past_key_values` is deprecated).
        cache = out.cache if "cache" in out else out.past_key_values
        cache.reorder_cache(owner)
        rows = [c for e in encoded for c in e.choices]
        cont_ids, cont_mask = self._right_pad(rows, device)
        prompt_len = own_mask.sum(-1)[owner] + shared
        cont_positions = prompt_len[:, None] + torch.arange(cont_ids.shape[1], device=device)[None, :]
        mask = torch.cat([prompt_mask[owner], cont_mask], dim=1)
        # Choice token t + 1 is predicted at position t: the logits read are those of every real
        # choice token but the last.
        read = cont_mask.bool()
        read[torch.arange(len(rows), device=device), cont_mask.sum(-1) - 1] = False
        later = torch.zeros_like(cont_ids, dtype=torch.float32)
        with _KeepPositions(model, read) as kept:
            cont = model(
                input_ids=cont_ids,
                attention_mask=mask,
                position_ids=cont_positions,
                **_with_cache(model, cache),
            )
        if kept:
            later[:, :-1][read[:, :-1]] = _target_logp(cont.logits[0], cont_ids[:, 1:][read[:, :-1]])
        else:
            later[:, :-1] = _target_logp(cont.logits[:, :-1, :], cont_ids[:, 1:])
        # Token t of a choice is predicted by the prompt's last position (t = 0) or choice token t - 1.
        token_logp = torch.cat([first_logp[owner].gather(1, cont_ids[:, :1]), later[:, :-1]], dim=1)
        n_tokens = shared + int(own_mask.sum()) + int(cont_mask.sum())
        return self._per_item(encoded, token_logp * cont_mask, cont_mask, n_tokens)

    def _choice_batch_naive(
        self, model: torch.nn.Module, encoded: list[_Encoded]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
        """Reference path: every (prompt + choice) sequence run in full, no sharing."""
        device = self._device(model)
        rows = [e.prompt + c for e in encoded for c in e.choices]
        prompt_lens = [len(e.prompt) for e in encoded for _ in e.choices]
        choice_lens = [len(c) for e in encoded for c in e.choices]
        ids, mask = self._right_pad(rows, device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        width = max(choice_lens)
        token_logp = torch.zeros((len(rows), width), device=device)
        choice_mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        for r, (start, length) in enumerate(zip(prompt_lens, choice_lens, strict=True)):
            targets = ids[r, start : start + length]
            token_logp[r, :length] = _target_logp(logits[r, start - 1 : start + length - 1], targets)
            choice_mask[r, :length] = 1
        return self._per_item(encoded, token_logp, choice_mask, int(mask.sum()))

    @staticmethod
    def _per_item(
        encoded: list[_Encoded], token_logp: torch.Tensor, mask: torch.Tensor, n_tokens: int
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
        sums = (token_logp * mask).sum(-1).cpu()
        counts = mask.sum(-1).cpu().to(sums.dtype)
        sizes = [len(e.choices) for e in encoded]
        return list(sums.split(sizes)), list(counts.split(sizes)), n_tokens

    def _generate_batch(
        self, model: Any, batch: list[Item], stops: list[tuple[str, ...]], result: ScoreResult
    ) -> None:
        device = self._device(model)
        prompts = [self._generation_prompt(i) for i in batch]
        prompt_ids, prompt_mask = self._left_pad(prompts, device)
        stop_at = _StopStrings(self.tokenizer, prompt_ids.shape[1], stops)
        output = model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            max_new_tokens=self.max_new_tokens,
            stopping_criteria=StoppingCriteriaList([stop_at]),
            do_sample=False,
            pad_token_id=self.pad_id,
            output_scores=True,
            return_dict_in_generate=True,
        )
        if not all(torch.isfinite(step).all() for step in output.scores):
            raise CandidateError(f"non-finite logits while generating for items {[i.id for i in batch]}")
        new_tokens = output.sequences[:, prompt_ids.shape[1] :]
        result.n_tokens += int(prompt_mask.sum()) + int(new_tokens.numel())
        for item, tokens in zip(batch, new_tokens, strict=True):
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            result.generations[item.id] = text
            answer = generated_answer(text, item)
            target = item.target or ""
            result.correct[item.id] = int(
                answer is not None and normalize_answer(answer) == normalize_answer(target)
            )

    def _generation_prompt(self, item: Item) -> list[int]:
        """The prompt exactly as written (generation continues after its trailing whitespace too)."""
        return self.tokenizer(item.prompt, add_special_tokens=True)["input_ids"] or [self.start_id]
