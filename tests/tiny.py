"""Tiny llama-architecture models and a byte-level tokenizer, made in seconds for tests.

`make_family` writes a base model and fine-tuned-like variants (base + seeded noise) as
Hugging Face directories with safetensors weights and a tokenizer.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# mergekit 0.1.5's `mergekit-yaml` (a test oracle in its own venv; README: set-up)
MERGEKIT_BIN = Path(
    os.environ.get(
        "EVOMERGE_MERGEKIT_BIN",
        Path(__file__).resolve().parents[1] / ".venv-mergekit" / "bin" / "mergekit-yaml",
    )
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>"]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges: 256 byte tokens plus two specials."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    for special in SPECIAL_TOKENS:
        vocab[special] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|pad|>", bos_token="<|endoftext|>"
    )


def tiny_config(num_layers: int = 4, hidden: int = 32, vocab_size: int = 258) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=256,
        eos_token_id=256,
        pad_token_id=257,
    )


def save_model(model: LlamaForCausalLM, directory: Path, max_shard_size: str = "2GB") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True, max_shard_size=max_shard_size)
    make_tokenizer().save_pretrained(directory)
    return directory


def make_family(
    root: Path,
    n_parents: int = 2,
    num_layers: int = 4,
    hidden: int = 32,
    noise: float = 0.02,
    seed: int = 0,
    max_shard_size: str = "2GB",
    dtype: torch.dtype = torch.float32,
) -> tuple[Path, list[Path]]:
    """Write `root/base` and `root/parent_k` (base + seeded noise), saved in `dtype`; return their paths."""
    torch.manual_seed(seed)
    base = LlamaForCausalLM(tiny_config(num_layers, hidden)).eval()
    base_dir = save_model(base.to(dtype), root / "base", max_shard_size)
    base = base.float()
    parent_dirs = []
    for k in range(n_parents):
        generator = torch.Generator().manual_seed(seed * 1000 + k + 1)
        parent = LlamaForCausalLM(tiny_config(num_layers, hidden)).eval()
        with torch.no_grad():
            for (_, p), (_, b) in zip(parent.named_parameters(), base.named_parameters(), strict=True):
                p.copy_(b + noise * torch.randn(b.shape, generator=generator))
        parent_dirs.append(save_model(parent.to(dtype), root / f"parent_{k}", max_shard_size))
    return base_dir, parent_dirs


def load_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model directory's safetensors shards."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors
