"""DEMO ONLY: a tiny, randomly initialised model family for trying the search on any machine.

The quickstart must run on a fresh machine without downloads, so its space names a
`demo_family`: a small llama-architecture base with random weights and "experts" that are the
base plus seeded noise, written once under the cache (EVOMERGE_CACHE, default
~/.cache/evomerge). These models know nothing; they exercise the whole pipeline (merge, score,
search, store) in minutes on CPU. Real experiments name real models (see experiments/smollm2_skills).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

DONE = ".demo-family-complete"


class DemoFamily(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    n_parents: int = Field(default=2, ge=1, le=8)
    num_layers: int = Field(default=4, ge=1, le=32)
    hidden: int = Field(default=64, ge=16, le=512)
    noise: float = Field(default=0.02, gt=0)
    seed: int = 0

    def root(self) -> Path:
        cache = Path(os.environ.get("EVOMERGE_CACHE", Path.home() / ".cache" / "evomerge"))
        tag = f"L{self.num_layers}-H{self.hidden}-P{self.n_parents}-n{self.noise}-s{self.seed}"
        return cache / "demo-family" / tag

    def paths(self) -> tuple[Path, list[Path]]:
        root = self.root()
        return root / "base", [root / f"expert_{k}" for k in range(self.n_parents)]

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
        base_dir, expert_dirs = (root / "base"), [root / p.name for p in self.paths()[1]]
        for directory, model in [(base_dir, base)] + [(d, None) for d in expert_dirs]:
            if model is None:
                generator = torch.Generator().manual_seed(self.seed * 1000 + expert_dirs.index(directory) + 1)
                model = LlamaForCausalLM(config).eval()
                with torch.no_grad():
                    for p, b in zip(model.parameters(), base.parameters(), strict=True):
                        p.copy_(b + self.noise * torch.randn(b.shape, generator=generator))
            model.save_pretrained(directory, safe_serialization=True)
            tokenizer.save_pretrained(directory)
