"""Make the experiment's experts: short seeded fine-tunes of the base on the train split of fitness banks.

Each expert is cached under the cache root (default ~/.cache/evomerge/smollm2_skills/<name>) with a
marker holding a hash of everything that determines it (base, banks, training settings); a current
expert is skipped, so the script is cheap to re-run. Timings and losses go to results/experts.json.

    python experiments/smollm2_skills/make_experts.py [--config experts.yaml] [--only NAME] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from build_base import DEFAULT_ROOT, MARKER, build_base  # noqa: E402
from finetune import TrainConfig, train  # noqa: E402

from evomerge.fitness.banks.items import items_sha256, load_bank  # noqa: E402

REPO = HERE.parents[1]
RESULTS = HERE / "results" / "experts.json"


def expert_key(name: str, spec: dict, config: TrainConfig, base: Path) -> str:
    """Hash of what determines an expert, so a change of bank, settings or base rebuilds it."""
    base_marker = json.loads((base / MARKER).read_text())
    payload = {
        "name": name,
        # the train items alone: a bank whose eval or test split grows keeps its experts
        "banks": {
            bank: items_sha256(item for item in load_bank(REPO / bank) if item.split == "train")
            for bank in spec["banks"]
        },
        # the default objective is left out so experts made before objectives existed stay current
        "train": {k: v for k, v in config.__dict__.items() if (k, v) != ("objective", "answer")},
        "base": base_marker["gguf_sha256"],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def make_expert(name: str, spec: dict, config: TrainConfig, base: Path, root: Path, log_path: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = root / name
    key = expert_key(name, spec, config, base)
    marker = out / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("key") == key:
        return json.loads(marker.read_text())["record"]
    items = [item for bank in spec["banks"] for item in load_bank(REPO / bank)]
    # train-split items only: eval items are what the experts and merges are measured on
    train_items = [item for item in items if item.split == "train"]
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log_file:

        def on_step(step: int, loss: float, seconds: float) -> None:
            log_file.write(f"step {step + 1}/{config.steps} loss {loss:.4f} {seconds:.2f}s\n")
            log_file.flush()

        start = time.perf_counter()
        log = train(model, tokenizer, train_items, config, on_step)
        train_seconds = time.perf_counter() - start
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    head = log.losses[: min(5, len(log.losses))]
    tail = log.losses[-min(5, len(log.losses)) :]
    record = {
        "banks": spec["banks"],
        "train_items": len(train_items),
        "train": config.__dict__,
        "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(log.seconds / len(log.step_seconds), 2),
        "loss_first5": round(sum(head) / len(head), 4),
        "loss_last5": round(sum(tail) / len(tail), 4),
        "log": str(log_path.relative_to(REPO)),
    }
    marker.write_text(json.dumps({"key": key, "record": record}, indent=2))
    return record


def load_config(path: Path) -> tuple[dict, dict[str, TrainConfig]]:
    raw = yaml.safe_load(path.read_text())
    defaults = {**raw.get("train", {}), "seed": raw.get("seed", 0)}
    experts = raw["experts"]
    configs = {
        name: TrainConfig(**{**defaults, **{k: v for k, v in spec.items() if k != "banks"}})
        for name, spec in experts.items()
    }
    return experts, configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "experts.yaml")
    parser.add_argument(
        "--root", type=Path, default=DEFAULT_ROOT, help="cache root (env EVOMERGE_SMOLLM2_CACHE)"
    )
    parser.add_argument("--only", action="append", help="make only this expert (repeatable)")
    parser.add_argument("--force", action="store_true", help="retrain even when the cached expert is current")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("EVOMERGE_THREADS", "2")))
    base = build_base(args.root)
    experts, configs = load_config(args.config)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for name, spec in experts.items():
        if args.only and name not in args.only:
            continue
        if args.force:
            (args.root / name / MARKER).unlink(missing_ok=True)
        start = time.perf_counter()
        record = make_expert(name, spec, configs[name], base, args.root, HERE / "logs" / f"expert_{name}.log")
        print(f"{name}: {record} (this call {time.perf_counter() - start:.1f} s)", flush=True)
        results.setdefault("experts", {})[name] = record
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
