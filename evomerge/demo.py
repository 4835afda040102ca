"""DEMO ONLY: a tiny model family for trying the search on any machine, with planted skills.

The quickstart must run on a fresh machine without downloads, so its space names a
`demo_family`: a small llama-architecture base with random weights and experts written once
under the cache (EVOMERGE_CACHE, default ~/.cache/evomerge). With `skills` (one per expert),
expert k is the base plus a task vector that solves demo task k ("which of these letters is a
vowel / a digit / ..."), trained on that task's train items in a few seconds, on the k-th block
of layers only. The blocks are disjoint and the vectors are trained so that their sum solves
every task: a per-layer merge that takes each block from its expert beats every parent, while
each parent is at chance on the other tasks. Without `skills`, experts are the base plus seeded
noise (they know nothing). Real experiments name real models (see experiments/smollm2_skills).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

DONE = ".demo-family-complete"
VERSION = 2  # bump when the family a spec builds changes (new cache directory)

# Demo task -> (the class the answer belongs to, how the prompt names it). Distractors are
# lowercase consonants, which belong to no class, so one skill never answers another's items.
SKILLS: dict[str, tuple[str, str]] = {
    "vowels": ("aeiou", "a vowel"),
    "digits": ("0123456789", "a digit"),
    "capitals": ("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "a capital letter"),
    "symbols": ("!#$%&*+=?@", "a symbol"),
}
DISTRACTORS = "bcdfghjklmnpqrstvwxz"
BANK_SEED = 20261201
ITEMS_PER_SPLIT = 100
LEARNING_RATE = 1e-2
BATCH = 32  # train items per task and step
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def skill_items(skill: str, split: str, n: int = ITEMS_PER_SPLIT) -> list[dict[str, Any]]:
    """Seeded multiple-choice items of one demo task (bank format, see evomerge/fitness/banks/items.py)."""
    members, noun = SKILLS[skill]
    rng = random.Random(f"{BANK_SEED}-{skill}-{split}")
    items = []
    for index in range(n):
        options = [rng.choice(members), *rng.sample(DISTRACTORS, 3)]
        rng.shuffle(options)
        answer = next(i for i, o in enumerate(options) if o in members)
        items.append({
            "id": f"{skill}/{split}/{index:04d}", "task": skill, "split": split,
            "prompt": f"Q: Which of {', '.join(options)} is {noun}?\nA:",
            "choices": [f" {o}" for o in options], "answer": answer,
            "meta": {"source": "evomerge.demo (synthetic)", "licence": "Apache-2.0"},
        })  # fmt: skip
    return items


def bank_text(skill: str) -> str:
    """A committed demo bank (fitness/demo_<skill>.jsonl): the task's train and eval items."""
    rows = [item for split in ("train", "eval") for item in skill_items(skill, split)]
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)


class DemoFamily(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    n_parents: int = Field(default=2, ge=1, le=8)
    num_layers: int = Field(default=4, ge=1, le=32)
    hidden: int = Field(default=64, ge=16, le=512)
    noise: float = Field(default=0.02, gt=0)
    skills: list[str] = Field(default_factory=list)
    train_steps: int = Field(default=40, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _check_skills(self) -> DemoFamily:
        unknown = [s for s in self.skills if s not in SKILLS]
        if unknown:
            raise ValueError(f"unknown demo skill(s) {unknown}; available: {', '.join(SKILLS)}")
        if self.skills and len(self.skills) != self.n_parents:
            count = len(self.skills)
            raise ValueError(f"give one skill per expert: {count} skills, n_parents {self.n_parents}")
        if len(self.skills) > self.num_layers:
            raise ValueError(f"{len(self.skills)} skills need as many layers (num_layers {self.num_layers})")
        return self

    def root(self) -> Path:
        cache = Path(os.environ.get("EVOMERGE_CACHE", Path.home() / ".cache" / "evomerge"))
        tag = f"L{self.num_layers}-H{self.hidden}-P{self.n_parents}-n{self.noise}-s{self.seed}"
        if self.skills:
            skills = "_".join(self.skills)  # no "+": mergekit reads "A+B" as model A with LoRA B
            tag = f"v{VERSION}-L{self.num_layers}-H{self.hidden}-{skills}-t{self.train_steps}-s{self.seed}"
        return cache / "demo-family" / tag

    def paths(self) -> tuple[Path, list[Path]]:
        root = self.root()
        names = self.skills or [str(k) for k in range(self.n_parents)]
        return root / "base", [root / f"expert_{name}" for name in names]

    def ensure(self) -> tuple[Path, list[Path]]:
        """Build the family once (atomically: a temporary directory renamed into place)."""
        root = self.root()
        if not (root / DONE).is_file():
            tmp = root.with_name(root.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            self._write(tmp)
            (tmp / DONE).write_text(json.dumps(self.model_dump()))
            shutil.rmtree(root, ignore_errors=True)
            tmp.rename(root)
        return self.paths()

    def _write(self, root: Path) -> None:
        import torch
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

        # Byte-level tokenizer with no merges: 256 byte symbols + end-of-text + padding.
        vocab = {s: i for i, s in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
        vocab |= {"<|endoftext|>": 256, "<|pad|>": 257}
        core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        core.decoder = decoders.ByteLevel()
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|pad|>", bos_token="<|endoftext|>"
        )
        config = LlamaConfig(
            vocab_size=258, hidden_size=self.hidden, intermediate_size=2 * self.hidden,
            num_hidden_layers=self.num_layers, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=1024, tie_word_embeddings=False,
            bos_token_id=256, eos_token_id=256, pad_token_id=257,
        )  # fmt: skip
        torch.manual_seed(self.seed)
        base = LlamaForCausalLM(config).eval()
        expert_dirs = [root / p.name for p in self.paths()[1]]
        if self.skills:
            deltas = plant_skills(base, tokenizer, self.skills, self.train_steps, self.seed)
        else:
            seeds = [self.seed * 1000 + k + 1 for k in range(self.n_parents)]
            generators = [torch.Generator().manual_seed(s) for s in seeds]
            deltas = [
                {n: self.noise * torch.randn(p.shape, generator=g) for n, p in base.named_parameters()}
                for g in generators
            ]
        base.save_pretrained(root / "base", safe_serialization=True)
        tokenizer.save_pretrained(root / "base")
        weights = {n: p.detach().clone() for n, p in base.state_dict().items()}
        for directory, delta in zip(expert_dirs, deltas, strict=True):
            base.load_state_dict({n: w + delta[n] if n in delta else w for n, w in weights.items()})
            base.save_pretrained(directory, safe_serialization=True)
            tokenizer.save_pretrained(directory)


def plant_skills(
    model: Any, tokenizer: Any, skills: list[str], steps: int, seed: int
) -> list[dict[str, Any]]:
    """One task vector per skill, nonzero only on its own block of layers (Adam on train items).

    The loss asks of each task's items: its own vector alone, and the sum of all vectors, answer
    them; every other vector alone, and the uniform average of all of them (what a global merge
    with equal weights gives), answer as the random base does (at chance). So each parent is at
    chance off its own task, and only a merge that takes each block from its own expert (per
    layer) solves every task."""
    import torch
    from torch.func import functional_call

    generator = torch.Generator().manual_seed(seed)
    base = {n: p.detach() for n, p in model.named_parameters()}
    blocks = [set(b) for b in _split(list(range(model.config.num_hidden_layers)), len(skills))]
    deltas = [
        {n: torch.zeros_like(p, requires_grad=True) for n, p in base.items() if _layer(n) in block}
        for block in blocks
    ]
    batches = [_batch(tokenizer, skill_items(s, "train")) for s in skills]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs no faster on more, and far slower on a busy machine
    optimizer = torch.optim.Adam([d for delta in deltas for d in delta.values()], lr=LEARNING_RATE)
    average = 1.0 / len(skills)

    def log_probs(scaled: list[tuple[float, dict[str, Any]]], batch: tuple[Any, ...]) -> Any:
        params = dict(base)
        for scale, delta in scaled:
            params |= {n: params[n] + scale * d for n, d in delta.items()}
        ids, choice_ids, _ = batch
        logits = functional_call(model, params, (ids,), {"logits_to_keep": 1}).logits[:, -1, :]
        return torch.log_softmax(logits.gather(1, choice_ids), dim=1)

    with torch.no_grad():
        untrained = [log_probs([], batch) for batch in batches]
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.zeros(())
        for k, full in enumerate(batches):
            rows = torch.randperm(len(full[0]), generator=generator)[:BATCH]
            batch = tuple(t[rows] for t in full)
            answers = batch[2]
            for solve in ([(1.0, deltas[k])], [(1.0, d) for d in deltas]):
                loss = loss - log_probs(solve, batch).gather(1, answers[:, None]).mean()
            chance = [[(1.0, d)] for j, d in enumerate(deltas) if j != k] + [[(average, d) for d in deltas]]
            for scaled in chance:  # answer as the (random) base does
                loss = loss + (log_probs(scaled, batch) - untrained[k][rows]).square().sum(dim=1).mean()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    return [{n: d.detach() for n, d in delta.items()} for delta in deltas]


def _split(values: list[int], k: int) -> list[list[int]]:
    size, extra = divmod(len(values), k)
    starts = [i * size + min(i, extra) for i in range(k + 1)]
    return [values[starts[i] : starts[i + 1]] for i in range(k)]


def _layer(name: str) -> int | None:
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def _batch(tokenizer: Any, items: list[dict[str, Any]]) -> tuple[Any, Any, Any]:
    """Prompt + the choices' shared leading space as one batch (the demo prompts of a task have one
    length); the class is the choice's last token, as the scorer reads it after the prompt."""
    import torch

    ids = [tokenizer(i["prompt"] + " ")["input_ids"] for i in items]
    last = [[tokenizer(c, add_special_tokens=False)["input_ids"][-1] for c in i["choices"]] for i in items]
    return torch.tensor(ids), torch.tensor(last), torch.tensor([i["answer"] for i in items])
