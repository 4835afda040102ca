"""Short supervised fine-tune of a causal LM on bank items.

Two objectives: "answer" (cross-entropy on the correct continuation's tokens, plain SFT) and "choice"
(cross-entropy over an item's choices scored by their mean token log-likelihood: the very score the
fitness scorer ranks choices by, so the model learns to tell the right choice from the wrong ones,
not only to write answers of the right shape).

Kept small on purpose: the experts only need to move away from the base in a task-specific direction
so that merging them is a real question. fp32 AdamW on CPU; the token embeddings (tied to the output
head in SmolLM2) are frozen so the task vectors live in the transformer layers, which is where the
merge recipes assign per-layer coefficients, and so each step skips a 28M-parameter optimizer update.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from evomerge.fitness.banks.items import Item
from evomerge.fitness.scoring.scoring import Scorer


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 60
    batch_size: int = 8
    lr: float = 3e-5
    weight_decay: float = 0.0
    warmup_steps: int = 5
    max_length: int = 256  # answer objective; "choice" scores whole prompts, as the scorer does
    seed: int = 0
    freeze_embeddings: bool = True
    objective: str = "answer"  # "answer" | "choice"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r} is not one of {OBJECTIVES}")


OBJECTIVES = ("answer", "choice")


@dataclass
class TrainLog:
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(self.step_seconds)


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int) -> list[tuple[list[int], int]]:
    """Token ids of prompt+answer and the index where the answer starts.

    The prompt is tokenized on its own and the answer appended, the same split a log-likelihood
    scorer makes, so training teaches exactly the continuation that scoring measures. Over-long
    prompts lose their beginning, never the answer.
    """
    encoded = []
    for prompt, answer in pairs:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not answer_ids:
            raise ValueError(f"empty answer for prompt {prompt[:60]!r}")
        prompt_ids = prompt_ids[-(max_length - len(answer_ids)) :]
        encoded.append((prompt_ids + answer_ids, len(prompt_ids)))
    return encoded


def make_batch(examples: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask, and a mask of the positions whose next token is an answer token."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    target_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for row, (ids, start) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        target_mask[row, start : len(ids)] = True
    return {"input_ids": input_ids, "attention_mask": attention, "target_mask": target_mask}


def answer_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over answer tokens; the output head runs only on the positions that predict them."""
    hidden = model.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    predicts = batch["target_mask"][:, 1:]  # position t predicts token t+1
    logits = model.lm_head(hidden[:, :-1][predicts])
    return F.cross_entropy(logits, batch["input_ids"][:, 1:][predicts])


def choice_loss(model, scorer: Scorer, items: Sequence[Item]) -> torch.Tensor:
    """Mean cross-entropy of each item's correct choice under the scorer's own per-choice scores."""
    scores = scorer.choice_scores(model, items)
    return torch.stack(
        [
            F.cross_entropy(s[None].float(), torch.tensor([i.answer]))
            for s, i in zip(scores, items, strict=True)
        ]
    ).mean()


def batches(examples: list, batch_size: int, steps: int, seed: int):
    """`steps` batches drawn epoch by epoch from a seeded shuffle: every item once before repeats."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order.extend(fresh)
        chosen, order = order[:batch_size], order[batch_size:]
        yield [examples[i] for i in chosen]


def train(
    model,
    tokenizer,
    items: Sequence[Item],
    config: TrainConfig,
    on_step: Callable[[int, float, float], None] | None = None,
) -> TrainLog:
    """Fine-tune `model` in place on bank items; return per-step losses and times."""
    torch.manual_seed(config.seed)
    if config.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
        model.get_output_embeddings().weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    # Linear warm-up then linear decay to zero: a standard short-fine-tune schedule.
    warm = max(config.warmup_steps, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warm, max(0.0, (config.steps - s) / max(config.steps - warm, 1)))
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if config.objective == "answer":
        pairs = [(i.prompt, i.choices[i.answer] if i.is_choice else i.target) for i in items]
        examples: list = encode_pairs(tokenizer, pairs, config.max_length)

        def loss_of(chunk: list) -> torch.Tensor:
            return answer_loss(model, make_batch(chunk, pad_id))

    else:
        generative = [i.id for i in items if not i.is_choice]
        if generative:
            raise ValueError(f"objective 'choice' needs choice items; {generative[:3]} have only a target")
        examples, scorer = list(items), Scorer(tokenizer)

        def loss_of(chunk: list) -> torch.Tensor:
            return choice_loss(model, scorer, chunk)

    log = TrainLog()
    model.train()
    for step, chunk in enumerate(batches(examples, config.batch_size, config.steps, config.seed)):
        start = time.perf_counter()
        loss = loss_of(chunk)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        log.losses.append(loss.item())
        log.step_seconds.append(time.perf_counter() - start)
        if on_step is not None:
            on_step(step, log.losses[-1], log.step_seconds[-1])
    model.eval()
    return log
