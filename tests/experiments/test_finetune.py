"""The expert fine-tuning loop of the SmolLM2 experiment, on a tiny model and in-memory bank items."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).parents[2] / "experiments" / "smollm2_skills"))
sys.path.insert(0, str(Path(__file__).parents[1]))

from finetune import TrainConfig, answer_loss, choice_loss, encode_pairs, make_batch, train  # noqa: E402
from tiny import make_tokenizer  # noqa: E402

from evomerge.fitness.banks.items import Item  # noqa: E402
from evomerge.fitness.scoring.scoring import Scorer  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls gain nothing from intra-op threads, which only wait on each other on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


PAIRS = [(f"Q: What is {a} plus {b}?\nA:", f" {a + b}") for a in range(6) for b in range(5)]
EXAMPLES = [Item(id=f"sum{n}", task="sum", prompt=p, target=a) for n, (p, a) in enumerate(PAIRS)]
# Two-choice items: the right choice is the word the prompt names, sitting first or second so
# that its position alone cannot be learned.
WORDS = ["cat", "dog", "sun", "map", "red", "box"]
CHOICES = [
    Item(
        id=f"say{i}",
        task="say",
        prompt=f"Q: Say {w}.\nA:",
        choices=(f" {w}", f" {v}") if i % 2 else (f" {v}", f" {w}"),
        answer=0 if i % 2 else 1,
    )
    for i, (w, v) in enumerate((w, v) for w in WORDS for v in WORDS if w != v)
]


def test_batch_marks_only_answer_tokens():
    tok = make_tokenizer()
    encoded = encode_pairs(tok, [("Q: 1+1?\nA:", " 2"), ("Q: 10+10?\nA:", " 20")], max_length=64)
    batch = make_batch(encoded, pad_id=tok.pad_token_id)
    # byte-level tokenizer: one token per byte, so the answer spans are known exactly
    assert batch["target_mask"].sum(dim=1).tolist() == [2, 3]
    first_ids, first_start = encoded[0]
    assert tok.decode(first_ids[first_start:]) == " 2"
    assert batch["attention_mask"][0].sum().item() == len(first_ids)
    assert batch["input_ids"][0, len(first_ids) :].eq(tok.pad_token_id).all()


def test_long_prompt_is_cut_from_the_left_keeping_the_answer():
    tok = make_tokenizer()
    ((ids, start),) = encode_pairs(tok, [("x" * 100 + "END", " 7")], max_length=10)
    assert len(ids) == 10
    assert tok.decode(ids[start:]) == " 7" and tok.decode(ids[:start]).endswith("END")


def test_training_lowers_answer_loss(tiny_family):
    base_dir, _ = tiny_family
    tok = make_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    batch = make_batch(encode_pairs(tok, PAIRS, 64), tok.pad_token_id)
    with torch.no_grad():
        before = answer_loss(model, batch).item()
    # a random tiny model needs its output head to learn; SmolLM2's pretrained head stays frozen
    config = TrainConfig(steps=30, batch_size=4, lr=3e-3, warmup_steps=2, freeze_embeddings=False)
    log = train(model, tok, EXAMPLES, config)
    with torch.no_grad():
        after = answer_loss(model, batch).item()
    assert len(log.losses) == 30 and len(log.step_seconds) == 30
    assert after < 0.6 * before
    assert not model.training


def test_frozen_embeddings_stay_and_layers_move(tiny_family):
    base_dir, _ = tiny_family
    tok = make_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, tok, EXAMPLES, TrainConfig(steps=3, batch_size=4, lr=1e-3))
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, frozen[n])}
    assert "model.embed_tokens.weight" not in moved and "lm_head.weight" not in moved
    assert "model.layers.0.mlp.down_proj.weight" in moved


def test_training_is_seeded(tiny_family):
    base_dir, _ = tiny_family
    tok = make_tokenizer()
    runs = []
    for _ in range(2):
        model = AutoModelForCausalLM.from_pretrained(base_dir)
        runs.append(train(model, tok, EXAMPLES, TrainConfig(steps=5, batch_size=4, lr=1e-3, seed=3)).losses)
    assert runs[0] == runs[1]


def test_choice_loss_is_the_cross_entropy_of_the_scorers_choice_scores(tiny_family):
    base_dir, _ = tiny_family
    tok = make_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    items = CHOICES[:3]
    with torch.no_grad():
        loss = choice_loss(model, Scorer(tok), items).item()
    scores = Scorer(tok).score(model, items).choice_scores
    expected = [-torch.log_softmax(torch.tensor(scores[i.id]), 0)[i.answer].item() for i in items]
    assert loss == pytest.approx(sum(expected) / len(expected), rel=1e-4)


def test_choice_objective_learns_to_pick_the_right_choice(tiny_family):
    base_dir, _ = tiny_family
    tok = make_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        before = choice_loss(model, Scorer(tok), CHOICES).item()
    config = TrainConfig(
        steps=60, batch_size=4, lr=1e-2, warmup_steps=2, freeze_embeddings=False, objective="choice"
    )
    train(model, tok, CHOICES, config)
    with torch.no_grad():
        after = choice_loss(model, Scorer(tok), CHOICES).item()
    assert before > 0.6 and after < 0.5 * before


def test_choice_objective_refuses_generative_items(tiny_family):
    base_dir, _ = tiny_family
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    with pytest.raises(ValueError, match="objective 'choice' needs choice items"):
        train(model, make_tokenizer(), EXAMPLES, TrainConfig(steps=1, objective="choice"))


def test_unknown_objective_is_refused():
    with pytest.raises(ValueError, match="objective 'dpo' is not one of"):
        TrainConfig(objective="dpo")
