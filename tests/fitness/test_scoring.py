"""The scorer: prefix-shared batches equal naive full-sequence scoring; normalization; errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import make_tokenizer
from transformers import AutoModelForCausalLM

from evomerge.errors import CandidateError
from evomerge.fitness.banks.items import Item
from evomerge.fitness.scoring.scoring import Scorer, generated_answer, normalize_answer


@pytest.fixture(scope="module")
def model(tiny_family: tuple[Path, list[Path]]) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(tiny_family[0]).eval()


def _items() -> list[Item]:
    prompts = [
        "Q: What is 12 plus 7?\nA:",
        "Yesterday was 04/30/2021. Today is",
        "Hi",
        "A longer prompt " * 6,
    ]
    choice_sets = [
        [" 19", " 5", " banana", " 1234"],
        [" 05/01/2021", " 04/29/2021"],
        [" a", " bb", " c"],
        [" x", " yz"],
    ]
    return [
        Item.from_dict({"id": f"i{k}", "task": "t", "prompt": p, "choices": c, "answer": k % len(c)})
        for k, (p, c) in enumerate(zip(prompts, choice_sets, strict=True))
    ]


def _one_by_one(model: torch.nn.Module, scorer: Scorer, item: Item) -> list[float]:
    """Unbatched, unpadded reference: sum of choice-token log-probs, one sequence at a time."""
    encoded = scorer.encode(item)
    sums = []
    for choice in encoded.choices:
        ids = torch.tensor([encoded.prompt + choice])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        start = len(encoded.prompt)
        sums.append(sum(float(logp.detach()[start + t - 1, tok]) for t, tok in enumerate(choice)))
    return sums


@pytest.mark.parametrize("batch_size", [1, 3])
def test_prefix_sharing_equals_naive_and_unbatched(model: torch.nn.Module, batch_size: int) -> None:
    items = _items()
    shared = Scorer(make_tokenizer(), batch_size=batch_size, share_prefix=True).score(model, items, "sum")
    naive = Scorer(make_tokenizer(), batch_size=batch_size, share_prefix=False).score(model, items, "sum")
    reference = Scorer(make_tokenizer())
    for item in items:
        expected = _one_by_one(model, reference, item)
        assert shared.choice_scores[item.id] == pytest.approx(expected, abs=1e-4)
        assert naive.choice_scores[item.id] == pytest.approx(expected, abs=1e-4)
        best = max(range(len(expected)), key=expected.__getitem__)
        assert shared.correct[item.id] == int(best == item.answer)
    assert shared.n_tokens < naive.n_tokens  # prompts are run once per item, not once per choice


def test_mean_normalization_divides_by_token_count(model: torch.nn.Module) -> None:
    items = _items()
    tokenizer = make_tokenizer()
    sums = Scorer(tokenizer).score(model, items, "sum")
    scorer = Scorer(tokenizer)
    means = scorer.score(model, items, {item.id: "mean" for item in items})
    for item in items:
        lengths = [len(c) for c in scorer.encode(item).choices]
        expected = [s / n for s, n in zip(sums.choice_scores[item.id], lengths, strict=True)]
        assert means.choice_scores[item.id] == pytest.approx(expected, rel=1e-5)
    assert lengths != [lengths[0]] * len(lengths)  # the test covers choices of different lengths


def test_nan_weights_raise_candidate_error(tiny_family: tuple[Path, list[Path]]) -> None:
    broken = AutoModelForCausalLM.from_pretrained(tiny_family[0]).eval()
    with torch.no_grad():
        broken.model.layers[0].mlp.up_proj.weight.fill_(float("nan"))
    with pytest.raises(CandidateError, match="non-finite"):
        Scorer(make_tokenizer()).score(broken, _items())
    generative = Item.from_dict({"id": "g", "task": "t", "prompt": "2+2=", "target": "4"})
    with pytest.raises(CandidateError, match="non-finite"):
        Scorer(make_tokenizer(), max_new_tokens=2).score(broken, [generative])


def test_generative_exact_match(model: torch.nn.Module) -> None:
    probe = Item.from_dict({"id": "g0", "task": "t", "prompt": "Say:", "target": "zzz"})
    scorer = Scorer(make_tokenizer(), max_new_tokens=4)
    first = scorer.score(model, [probe])
    assert first.correct == {"g0": 0}
    said = first.generations["g0"].split("\n")[0].strip()
    assert said  # the seeded tiny model continues with a few (random) characters
    # The same greedy continuation, written with surrounding spaces and a trailing period: a match.
    match = Item.from_dict({"id": "g1", "task": "t", "prompt": "Say:", "target": f"  {said}. "})
    assert scorer.score(model, [match]).correct == {"g1": 1}


def test_normalize_answer() -> None:
    assert normalize_answer("  The  Answer.\nmore") == "the answer"
    assert normalize_answer("109") == normalize_answer(" 109 \n") == "109"
    assert normalize_answer("") == ""


def test_a_token_budget_sizes_batches_and_keeps_the_scores(model: torch.nn.Module, monkeypatch) -> None:
    """Batches fill up to the budget in padded tokens (one item at least), and score exactly what
    fixed one-item batches score."""
    items = _items()
    budget_scorer = Scorer(make_tokenizer(), batch_size=8, token_budget=120)
    sizes: list[int] = []
    real = Scorer._choice_batch

    def recording(self, model, batch):
        if self is budget_scorer:
            sizes.append(len(batch))
            assert len(batch) == 1 or self.padded_tokens(batch) <= 120
        return real(self, model, batch)

    monkeypatch.setattr(Scorer, "_choice_batch", recording)
    budgeted = budget_scorer.score(model, items, "sum")
    single = Scorer(make_tokenizer(), batch_size=1).score(model, items, "sum")
    assert sum(sizes) == len(items) and 1 < len(sizes) < len(items)
    for item in items:
        torch.testing.assert_close(
            torch.tensor(budgeted.choice_scores[item.id]),
            torch.tensor(single.choice_scores[item.id]),
            atol=1e-4,
            rtol=0,
        )
    assert budgeted.correct == single.correct


def test_chars_normalization_divides_by_the_choice_text_length(model: torch.nn.Module) -> None:
    """lm-eval's acc_norm: the summed log-likelihood per character of the choice (no delimiter)."""
    items = [Item.from_dict({**i.to_dict(), "target_delimiter": "-"}) for i in _items()]
    sums = Scorer(make_tokenizer()).score(model, items, "sum")
    chars = Scorer(make_tokenizer()).score(model, items, "chars")
    for item in items:
        expected = [s / len(c) for s, c in zip(sums.choice_scores[item.id], item.choices, strict=True)]
        assert chars.choice_scores[item.id] == pytest.approx(expected, rel=1e-6)


def test_delimiter_and_trailing_whitespace_join_the_choice(model: torch.nn.Module) -> None:
    """ "Q:" + delimiter " " + "19", and "Q: " + "19", are scored as "Q:" followed by " 19"."""
    written = dict(id="w", task="t", choices=[" 19", " 5"], answer=0, prompt="Q: 12+7?\nA:")
    variants = [
        Item.from_dict(written),
        Item.from_dict({**written, "id": "d", "choices": ["19", "5"], "target_delimiter": " "}),
        Item.from_dict({**written, "id": "s", "choices": ["19", "5"], "prompt": "Q: 12+7?\nA: "}),
    ]
    scorer = Scorer(make_tokenizer())
    assert len({(tuple(e.prompt), tuple(map(tuple, e.choices))) for e in map(scorer.encode, variants)}) == 1
    scores = scorer.score(model, variants, "sum").choice_scores
    assert scores["d"] == pytest.approx(scores["w"]) and scores["s"] == pytest.approx(scores["w"])


def test_generated_answer_cuts_at_stops_and_applies_the_regex() -> None:
    plain = Item.from_dict({"id": "g", "task": "t", "prompt": "p", "target": "x"})
    assert generated_answer(" 12\nQ: next", plain) == " 12"  # a newline by default
    stops = Item.from_dict({**plain.to_dict(), "until": ["Q:"]})
    assert generated_answer(" 12\n13 Q: 14", stops) == " 12\n13 "
    last = Item.from_dict({**stops.to_dict(), "answer_regex": r"(-?\d+)|(none)", "answer_regex_select": -1})
    assert generated_answer("so 3 then 41 Q: 7", last) == "41"  # the last match before the stop
    assert generated_answer("none here", last) == "none"  # a tuple match: its non-empty group
    assert generated_answer("no digits", last) is None


def test_decoding_ends_when_every_row_holds_a_stop(model: torch.nn.Module) -> None:
    """Greedy decoding stops once each continuation of the batch holds one of its stop strings;
    the text cut at the stop is the one decoding to max_new_tokens gives."""
    tokenizer = make_tokenizer()
    prompts = {"a": "Say:", "b": "2+2="}
    width = 24
    never = {key: ("<never said>",) for key in prompts}  # no continuation holds it: decode to the limit
    items = [Item.from_dict({"id": k, "task": "t", "prompt": p, "target": "x"}) for k, p in prompts.items()]
    full = Scorer(tokenizer, max_new_tokens=width, batch_size=2).score(model, items, stops=never)
    prompt_tokens = sum(len(tokenizer(p)["input_ids"]) for p in prompts.values())
    assert full.n_tokens == prompt_tokens + 2 * width
    # Each row's stop: a printable character early in its own full continuation (the seeded tiny
    # model says mostly bytes that decode to replacement characters).
    stops = {
        key: (next(c for c in full.generations[key][2:] if c.isascii() and c.isprintable()),)
        for key in prompts
    }
    early = Scorer(tokenizer, max_new_tokens=width, batch_size=2).score(model, items, stops=stops)
    steps = (early.n_tokens - prompt_tokens) // 2
    assert steps < width - 10  # both rows stopped a few tokens in
    for key, (stop,) in stops.items():
        cut = full.generations[key].split(stop, 1)[0]
        assert early.generations[key].split(stop, 1)[0] == cut
        assert stop in early.generations[key]
    # One row that never stops keeps the whole batch decoding to max_new_tokens.
    mixed = Scorer(tokenizer, max_new_tokens=width, batch_size=2).score(
        model, items, stops={"a": stops["a"], "b": never["b"]}
    )
    assert mixed.n_tokens == full.n_tokens
    assert mixed.generations["b"] == full.generations["b"]


FEW_SHOT_CONTEXT = "Answer each question.\nQ: 2 plus 2?\nA: 4\nQ: 3 plus 1?\nA: 4\n"


def _few_shot_items() -> list[Item]:
    """Two tasks whose items share a long context (instructions and worked examples) and differ
    after it by a few tokens to many."""
    context = FEW_SHOT_CONTEXT
    tails = ["Q: 5 plus 1?\nA:", "Q: 9 plus 9, then 1?\nA:", "Q: 1?\nA:"]
    items = [
        Item.from_dict(
            {"id": f"f{k}", "task": "few", "prompt": context + t, "choices": [" 6", " 19", " 1"], "answer": k}
        )
        for k, t in enumerate(tails)
    ]
    return items + _items()


@pytest.mark.parametrize("batch_size", [2, 8])
def test_a_shared_context_is_run_once_per_batch_and_keeps_the_scores(
    model: torch.nn.Module, batch_size: int
) -> None:
    items = _few_shot_items()
    shared = Scorer(make_tokenizer(), batch_size=batch_size).score(model, items, "mean")
    reference = Scorer(make_tokenizer())
    for item in items:
        expected = _one_by_one(model, reference, item)
        counts = [len(c) for c in reference.encode(item).choices]
        mean = [total / count for total, count in zip(expected, counts, strict=True)]
        assert shared.choice_scores[item.id] == pytest.approx(mean, abs=1e-4)
    # The context is run once per batch of its task, not once per item.
    per_item = Scorer(make_tokenizer(), batch_size=1).score(model, items, "mean")
    few = [i for i in items if i.task == "few"]
    context = len(make_tokenizer()(FEW_SHOT_CONTEXT)["input_ids"])
    batches = -(-len(few) // batch_size)
    assert per_item.n_tokens - shared.n_tokens >= (len(few) - batches) * context


def test_a_model_without_an_output_projection_hook_scores_every_position(
    model: torch.nn.Module, monkeypatch
) -> None:
    """Models that expose no output embeddings take the full-logits path, with the same scores."""
    items = _few_shot_items()
    kept = Scorer(make_tokenizer(), batch_size=4).score(model, items, "sum")
    monkeypatch.setattr(type(model), "get_output_embeddings", lambda self: None)
    full = Scorer(make_tokenizer(), batch_size=4).score(model, items, "sum")
    for item in items:
        assert kept.choice_scores[item.id] == pytest.approx(full.choice_scores[item.id], abs=1e-5)
