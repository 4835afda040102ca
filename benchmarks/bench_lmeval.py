"""Agreement with lm-eval, and scoring speed against `lm_eval --model hf`, on SmolLM2-135M (CPU).

    python benchmarks/bench_lmeval.py [--limit 100] [--batch-size 8] [--model DIR]

Two multiple-choice lm-eval tasks are written as task YAMLs over the eval items of committed banks
(converted to local JSON): `mmlu` (fitness/mmlu_dev.jsonl, zero-shot, cloze) and `arithmetic`
(fitness/bigbench_arithmetic.jsonl, 2-shot from its train items). For each task:

1. lm-eval: `simple_evaluate` with its HF model (the same directory, CPU, float32, `--batch-size`),
   `log_samples=True`: per-document `acc` and `acc_norm`;
2. evomerge: the bank from `evomerge banks from-lm-eval` on the same YAML, scored by the Scorer with
   `sum` (acc) and `chars` (acc_norm) normalization.

It prints the per-item agreement of correctness, every mismatch with both sides' choice scores and
whether the two tokenize the continuation alike, and items/s of each (model loading excluded; the
same items, one run each, lm-eval first). The machine may be shared: timings are noisy.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.fitness.banks.items import Item, load_bank
from evomerge.fitness.banks.lmeval import lm_eval_items
from evomerge.fitness.scoring.scoring import Scorer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = Path.home() / ".cache/evomerge/smollm2_skills/base"
# (bank, few-shot count): a zero-shot cloze task, and a few-shot one with a train split to draw from.
TASKS = {"mmlu": ("mmlu_dev.jsonl", 0), "arithmetic": ("bigbench_arithmetic.jsonl", 2)}

TASK_YAML = """\
task: bench_{name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder}/{name}_test.jsonl
    train: {folder}/{name}_train.jsonl
test_split: test
fewshot_split: train
num_fewshot: {shots}
output_type: multiple_choice
doc_to_text: prompt
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
metadata:
  version: 1.0
"""


def write_task(name: str, folder: Path, limit: int) -> Path:
    """The bank's eval items (the first `limit`) as the test split, its train items as the few-shot
    split; choices lose their leading space, which lm-eval's target_delimiter puts back."""
    bank_file, shots = TASKS[name]
    items = load_bank(ROOT / "fitness" / bank_file)
    for split, rows in (("test", [i for i in items if i.split == "eval"][:limit]), ("train", items)):
        rows = [i for i in rows if split == "test" or i.split == "train"]
        with (folder / f"{name}_{split}.jsonl").open("w") as handle:
            for item in rows:
                choices = [c[1:] if c.startswith(" ") else c for c in item.choices or ()]
                handle.write(
                    json.dumps({"prompt": item.prompt, "choices": choices, "label": item.answer}) + "\n"
                )
    path = folder / f"{name}.yaml"
    path.write_text(TASK_YAML.format(name=name, folder=folder, shots=shots))
    return path


def run_lm_eval(lm: Any, task_yaml: Path, batch_size: int) -> tuple[dict[int, dict[str, Any]], float]:
    """lm-eval's per-document samples (acc, acc_norm, log-likelihoods) and the seconds it took."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_defaults=False)
    start = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model=lm, tasks=[str(task_yaml)], task_manager=manager, batch_size=batch_size, log_samples=True
    )
    seconds = time.perf_counter() - start
    (samples,) = results["samples"].values()
    return {s["doc_id"]: s for s in samples}, seconds


def explain(item: Item, sample: dict[str, Any], ours: list[float], scorer: Scorer, lm: Any) -> str:
    """Both sides' summed log-likelihoods per choice, and whether their continuation tokens differ."""
    theirs = [float(ll) for ll, _ in sample["filtered_resps"]]
    encoded = scorer.encode(item)
    same_tokens = all(
        lm._encode_pair(item.prompt, (item.target_delimiter or "") + c) == (encoded.prompt, tokens)
        for c, tokens in zip(item.choices or (), encoded.choices, strict=True)
    )
    gap = max(abs(a - b) for a, b in zip(theirs, ours, strict=True))
    return (
        f"  {item.id}: answer {item.answer}; lm-eval lls {[round(x, 4) for x in theirs]}, "
        f"evomerge {[round(x, 4) for x in ours]} (max |diff| {gap:.2e}); "
        f"same tokens: {same_tokens}"
    )


def bench_task(
    name: str, args: argparse.Namespace, model: Any, tokenizer: Any, lm: Any, folder: Path
) -> dict:
    task_yaml = write_task(name, folder, args.limit)
    samples, lm_seconds = run_lm_eval(lm, task_yaml, args.batch_size)
    items = lm_eval_items(str(task_yaml))
    scorer = Scorer(tokenizer, batch_size=args.batch_size)
    start = time.perf_counter()
    sums = scorer.score(model, items, "sum")
    our_seconds = time.perf_counter() - start
    chars = scorer.score(model, items, "chars")
    rows = {"acc": sums.correct, "acc_norm": chars.correct}
    agreement, mismatches = {}, []
    for metric, correct in rows.items():
        same = [int(samples[i.meta["doc_id"]][metric]) == correct[i.id] for i in items]
        agreement[metric] = sum(same) / len(items)
        mismatches += [(metric, i) for i, ok in zip(items, same, strict=True) if not ok]
    print(f"\n{name}: {len(items)} items, {sum(len(i.choices or ()) for i in items)} choices")
    for metric in rows:
        ours = sum(rows[metric].values()) / len(items)
        theirs = sum(float(samples[i.meta["doc_id"]][metric]) for i in items) / len(items)
        print(
            f"  {metric}: agreement {agreement[metric]:.1%}; accuracy lm-eval {theirs:.3f}, ours {ours:.3f}"
        )
    for metric, item in mismatches:
        print(f"  mismatch ({metric}):")
        print(explain(item, samples[item.meta["doc_id"]], sums.choice_scores[item.id], scorer, lm))
    return {
        "task": name,
        "items": len(items),
        "acc": agreement["acc"],
        "acc_norm": agreement["acc_norm"],
        "lm_eval_items_s": len(items) / lm_seconds,
        "evomerge_items_s": len(items) / our_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=100, help="eval items per task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="an HF model directory")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {sorted(TASKS)}")
    args = parser.parse_args()
    from lm_eval.models.huggingface import HFLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, device="cpu")
    print(f"model {args.model}, torch threads {torch.get_num_threads()}, batch size {args.batch_size}")
    with tempfile.TemporaryDirectory() as folder:
        table = [bench_task(n, args, model, tokenizer, lm, Path(folder)) for n in args.tasks.split(",")]
    print(
        "\n| task | items | acc agreement | acc_norm agreement | lm-eval items/s | evomerge items/s | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in table:
        ratio = row["evomerge_items_s"] / row["lm_eval_items_s"]
        print(
            f"| {row['task']} | {row['items']} | {row['acc']:.1%} | {row['acc_norm']:.1%} | "
            f"{row['lm_eval_items_s']:.2f} | {row['evomerge_items_s']:.2f} | {ratio:.2f}x |"
        )


if __name__ == "__main__":
    main()
