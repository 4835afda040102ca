"""One-shot GPU check of the live merger at 7B shape: seconds per candidate, memory, the real scorer.

    # here: bash benchmarks/gpu_wheels.sh; on the GPU machine (README, "GPU check"):
    python3 -m pip install -q --no-index --no-deps --target .whl/site .whl/*.whl
    PYTHONPATH=$PWD/.whl/site bash benchmarks/gpu_check.sh [--placements device,host,disk]
    python benchmarks/gpu_check.py --dry-run   # CPU, tiny shapes: checks that it runs end to end

Every row is printed and appended to `--jsonl` ($OUT/gpu_check.jsonl, else ./gpu_check.jsonl),
flushed and fsynced, the moment it is measured; the final table is built from that file, so a run
stopped at its limit keeps every row it finished. Stages, cheapest and most wanted first (a stage
that fails writes an `error` row and the next one runs): bandwidths; the device tier; the real
scorer on it; CUDA against CPU on a small family; the CUDA test subset; the host tier; the disk
tier (only with `--placements ...,disk`: it writes a real family to disk).

The family is a llama with the real 7B shapes (hidden 4096, intermediate 11008, 32 heads, 32 KV
heads, vocabulary 32000, untied head), `--layers` layers, bf16, base + `--parents` parents (base +
seeded noise, `--noise` times each tensor's std), generated on the GPU. Device and host tiers: the
family is never written to disk. One *sparse* safetensors file holds only the header (the data
section is a hole), hard-linked into base/ and each parent_k/; LiveMerger loads it in its placement,
then the real values are written into its resident tensors in place (`fill_resident`: LiveMerger's
private `_resident`, since the public API takes directories and 4 x 13.5 GB of files would not fit
the disk). Disk tier: a `--disk-layers` family written to local disk and dropped from the page cache
before its first (cold) candidate; its seconds are also scaled to `--layers` by bytes read.

Per tier x method (`--methods`, per-layer TIES and task arithmetic by default, float32 compute):
the first apply (compilation, magnitude indexes), the median of `--repeats` applies after it, the
HBM floor (bytes every held model weighs / device-copy GB/s) and the tier's link floor (pinned or
pageable host-to-device GB/s), peak allocated and reserved device memory over the models' bytes,
host memory held (RssAnon + RssShmem growth, and the CUDA pinned allocator's bytes). A profile row
lists the kernels of one device-tier TIES candidate by device time.

The scorer row: `evomerge.fitness.scoring.scoring.Scorer` as a search worker builds it (batch size 16, the
GPU token budget of `runtime.preflight`, shared prompt prefix) on `--items` synthetic 4-choice items
(prompts 60-160 words, choices 1-6 words, seeded) with a word-level tokenizer made in-process (no
network), scoring the device tier's live model (random weights: the speed is the point, not the
answers); median of 3 after a warm-up. Candidates per GPU-hour = 3600 / (apply s + score s).

Correctness: base + parents of a small family (the tiny llama shape, bf16), each method applied by
a LiveMerger on the GPU (compiled kernels) and on the CPU (eager), live models in float32: equal
when bit-identical, else within the documented bound |cuda - cpu| <= 1e-6 * max |cpu| (float32
rounding of fused multiply-adds; TIES selects the same entries, so its mask adds nothing).

CUDA tests: `pytest tests/merge/test_cuda.py -k CUDA_TESTS` in a subprocess, kernels eager
(EVOMERGE_COMPILE=0: compiling every structure would not fit), at most `--tests-timeout` seconds.

Goals: device tier <= 0.5 s per TIES candidate; >= 1500 candidates per GPU-hour at 100 items;
device-tier memory <= 1.3x base + parents; host-tier device memory <= 1.2x one model.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_memory as bm  # noqa: E402  (shared: shapes, configs, recipes, /proc readings)

GB = 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the family ----------------------------------------------------------------------------------


def sparse_safetensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> int:
    """A bf16 safetensors file whose data section is a hole (zeros, no disk blocks); its size."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        end = offset + 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)) + encoded)
        handle.truncate(8 + len(encoded) + offset)
    used = os.stat(path).st_blocks * 512
    if used > 64 * 1024**2:
        raise SystemExit(f"{path}: this file system does not keep sparse files ({used / GB:.1f} GB used)")
    return offset


def sparse_family(root: Path, config: Any, parents: int) -> tuple[Path, list[Path]]:
    """base/ and parent_k/ sharing one sparse weights file (hard links), each with config.json."""
    root.mkdir(parents=True, exist_ok=True)
    master = root / "weights.safetensors"
    sparse_safetensors(master, bm.parameter_shapes(config))
    base, others = bm.family_paths(root, parents)
    for directory in [base, *others]:
        directory.mkdir(exist_ok=True)
        config.save_pretrained(directory)
        os.link(master, directory / "model.safetensors")
    return base, others


def _generator(device: torch.device, name: str, model: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(zlib.crc32(name.encode()) * 16 + model)


def base_value(name: str, shape: torch.Size, device: torch.device) -> torch.Tensor:
    values = torch.randn(shape, generator=_generator(device, name, 0), device=device)
    return (1.0 + 0.05 * values if len(shape) == 1 else 0.02 * values).to(torch.bfloat16)


def parent_value(base: torch.Tensor, name: str, k: int, noise: float) -> torch.Tensor:
    values = base.float()
    scale = noise * float(values.std()) if values.numel() > 1 else noise
    values += scale * torch.randn(
        values.shape, generator=_generator(base.device, name, k + 1), device=base.device
    )
    return values.to(torch.bfloat16)


def fill_resident(merger: Any, base: Path, parents: list[Path], noise: float, device: torch.device) -> None:
    """Write the family's real values, generated on `device`, into the merger's resident tensors."""

    def _key(path: Path) -> str:  # how LiveMerger keys its models (live._key)
        return str(Path(path).resolve())

    resident = getattr(merger, "_resident", None)
    if not resident:
        raise SystemExit("LiveMerger._resident is gone or empty: update fill_resident to the new layout")
    keys = [_key(base)] + [_key(p) for p in parents]
    with torch.no_grad():
        for name, target in resident[keys[0]].items():
            value = base_value(name, target.shape, device)
            target.copy_(value)
            for k, key in enumerate(keys[1:]):
                resident[key][name].copy_(parent_value(value, name, k, noise))
            del value
    sync(device)  # the live model still holds the zero file's base: every apply overwrites all of it


def real_family(
    root: Path, config: Any, parents: int, noise: float, device: torch.device
) -> tuple[Path, list[Path]]:
    """The family written as real bf16 safetensors (values generated on `device`), one model at a time."""
    from safetensors.torch import save_file

    base, others = bm.family_paths(root, parents)
    shapes = bm.parameter_shapes(config)
    base_state = {name: base_value(name, torch.Size(shape), device) for name, shape in shapes.items()}
    for k, directory in enumerate([base, *others]):
        directory.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(directory)
        state = base_state if k == 0 else {n: parent_value(v, n, k - 1, noise) for n, v in base_state.items()}
        save_file(
            {n: v.cpu() for n, v in state.items()}, str(directory / "model.safetensors"), {"format": "pt"}
        )
        del state
    del base_state
    gc.collect()
    return base, others


def drop_page_cache(directories: list[Path]) -> None:
    """Evict our own files from the page cache (so the next read comes from the disk)."""
    for directory in directories:
        for file in directory.glob("*.safetensors"):
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def scratch_root() -> Path:
    """$GPU_CHECK_TMP, else the first of /var/tmp, /tmp not on tmpfs (a tmpfs would hold the sparse
    file's zero pages as shared memory, counted against its size), else /tmp."""
    if os.environ.get("GPU_CHECK_TMP"):
        return Path(os.environ["GPU_CHECK_TMP"])
    mounts = []
    try:
        with open("/proc/mounts") as handle:
            mounts = [line.split()[1:3] for line in handle]
    except OSError:
        pass

    def fstype(path: Path) -> str:
        best = ("", "")
        for point, kind in mounts:
            inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
            if inside and len(point) > len(best[0]):
                best = (point, kind)
        return best[1]

    for candidate in (Path("/var/tmp"), Path("/tmp")):
        if candidate.is_dir() and os.access(candidate, os.W_OK) and fstype(candidate.resolve()) != "tmpfs":
            return candidate
    return Path("/tmp")


# --- bandwidths ------------------------------------------------------------------------------------


def best_seconds(fn: Any, device: torch.device, tries: int) -> float:
    best = math.inf
    for _ in range(tries):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _copy_gbs(target: torch.Tensor, source: torch.Tensor, device: torch.device, tries: int) -> float:
    """GB/s of `target.copy_(source)` counting the bytes of one side, best of `tries`."""
    seconds = best_seconds(lambda: target.copy_(source, non_blocking=True), device, tries)
    return source.numel() * source.element_size() / seconds / GB


def bandwidths(device: torch.device, n_bytes: int) -> dict[str, float]:
    """GB/s: device copy (read + write), host-to-device from pinned and from pageable memory."""
    source = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device=device).normal_()
    result = {"device_copy": 2 * _copy_gbs(torch.empty_like(source), source, device, 5)}
    del source
    if device.type == "cuda":
        host = torch.empty(n_bytes // 4, dtype=torch.bfloat16).normal_()
        on_device = torch.empty(host.shape, dtype=host.dtype, device=device)
        result["h2d_pageable"] = _copy_gbs(on_device, host, device, 3)
        result["h2d_pinned"] = _copy_gbs(on_device, host.pin_memory(), device, 3)
        del host, on_device
        torch.cuda.empty_cache()
    else:
        result["h2d_pageable"] = result["h2d_pinned"] = result["device_copy"]
    return result


# --- one tier ---


class Rows:
    """The run's rows: each one appended to the JSONL file (flushed, fsynced) and printed as measured."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")  # one run per file: the table reads every row in it

    def add(self, kind: str, **values: Any) -> dict[str, Any]:
        row = {"row": kind, **values}
        line = json.dumps(row, default=str)
        with open(self.path, "a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        print(line, flush=True)
        return row


def stage(rows: Rows, name: str, fn: Callable[[], Any]) -> Any:
    """Run one stage; a failure is an `error` row (its last lines of traceback), not the end of the run."""
    try:
        return fn()
    except Exception as error:  # a one-shot machine: every later stage is still worth its rows
        tail = traceback.format_exc().strip().splitlines()[-6:]
        rows.add("error", stage=name, error=f"{type(error).__name__}: {error}"[:500], traceback=tail)
        return None
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def host_bytes() -> int:
    """Anonymous + shared RSS: where this process's own host memory (pinned included) shows."""
    status = bm.proc_status()
    return status["RssAnon"] + status.get("RssShmem", 0)


def pinned_bytes() -> int:
    """Bytes the CUDA caching host (pinned) allocator holds, power-of-two rounded blocks included."""
    stats = getattr(torch.cuda, "host_memory_stats", None)
    if stats is None or not torch.cuda.is_available():
        return 0
    return int(stats().get("allocated_bytes.current", 0))


def device_peaks(device: torch.device) -> tuple[int, int]:
    """(max allocated, max reserved) device bytes since the last reset; 0 on a CPU."""
    if device.type != "cuda":
        return 0, 0
    return torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)


def reset_peaks(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


# --- the scorer ----------------------------------------------------------------------------------


def word_tokenizer(words: list[str]) -> Any:
    """A word-level tokenizer over `words` (+ unknown, padding and begin tokens), made in-process:
    the lent machine reaches no hub."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<s>"]
    vocab = {token: index for index, token in enumerate(specials + words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", bos_token="<s>"
    )


def mc_items(count: int, words: list[str], seed: int) -> list[Any]:
    """`count` 4-choice items: prompts of 60-160 words, choices of 1-6 words, seeded."""
    import random

    from evomerge.fitness.banks.items import Item

    rng = random.Random(seed)

    def text(low: int, high: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(low, high)))

    return [
        Item(
            id=f"mc{i}",
            task="synthetic",
            prompt=text(60, 160) + " Answer:",
            choices=tuple(text(1, 6) for _ in range(4)),
            answer=rng.randrange(4),
            target_delimiter=" ",
        )
        for i in range(count)
    ]


def score_row(rows: Rows, model: Any, args: argparse.Namespace, device: torch.device) -> float:
    """The real Scorer, as a search worker builds it, on `args.items` items: median s of 3 after a warm-up."""
    from evomerge.fitness.scoring.scoring import Scorer
    from evomerge.runtime.preflight import GPU_TOKEN_BUDGET

    vocab = model.config.vocab_size
    words = [f"w{i}" for i in range(min(vocab - 4, 5000))] + ["Answer:"]  # + 3 specials: ids < vocab
    scorer = Scorer(
        word_tokenizer(words),
        batch_size=16,  # workers.batch_size's default (evomerge/experiment.py)
        token_budget=GPU_TOKEN_BUDGET if device.type == "cuda" else None,
        share_prefix=True,
    )
    items = mc_items(args.items, words, seed=0)
    reset_peaks(device)
    result = scorer.score(model, items)  # warm-up (and the tokenization, cached per item)
    times = [timed(lambda: scorer.score(model, items), device) for _ in range(3)]
    seconds = statistics.median(times)
    peak_alloc, peak_reserved = device_peaks(device)
    rows.add(
        "score",
        items=len(items),
        times=times,
        score_s=seconds,
        items_per_s=len(items) / seconds,
        tokens=result.n_tokens,
        tokens_per_s=result.n_tokens / seconds,
        batch_size=scorer.batch_size,
        token_budget=scorer.token_budget,
        share_prefix=scorer.share_prefix,
        peak_alloc=peak_alloc,
        peak_reserved=peak_reserved,
        tokenizer="word-level, made in-process",
        model="the device tier's live model (random weights)",
    )
    return seconds


# --- one tier ------------------------------------------------------------------------------------


def profile_row(rows: Rows, merger: Any, recipe: Any, device: torch.device, top: int = 12) -> None:
    """The kernels of one candidate by device time (CPU time on a CPU), the `top` largest."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        merger.apply(recipe)
        sync(device)

    def device_us(event: Any) -> float:
        if device.type != "cuda":
            return event.self_cpu_time_total
        return getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0))

    events = sorted(prof.key_averages(), key=device_us, reverse=True)[:top]
    kernels = [{"name": e.key[:120], "calls": e.count, "ms": device_us(e) / 1e3} for e in events]
    rows.add("profile", method=recipe.merge_method, placement=merger.placement, kernels=kernels)


def run_tier(
    placement: str,
    args: argparse.Namespace,
    config: Any,
    base: Path,
    parents: list[Path],
    device: torch.device,
    rows: Rows,
    bw: dict[str, float],
    fill: bool,
    cold_first: bool,
) -> Any:
    """Load the family in `placement`, then time every method: one row each; returns the merger."""
    from evomerge.merge import kernels
    from evomerge.merge.live import LiveMerger
    from evomerge.recipe import MergeRecipe

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    reset_peaks(device)
    host_before, pinned_before = host_bytes(), pinned_bytes()
    start = time.perf_counter()
    merger = LiveMerger(base, parents, device=device, placement=placement)
    sync(device)
    load_s = time.perf_counter() - start
    load_alloc, load_reserved = device_peaks(device)
    host_held, pinned_held = host_bytes() - host_before, pinned_bytes() - pinned_before
    fill_s = timed(lambda: fill_resident(merger, base, parents, args.noise, device), device) if fill else 0.0
    reset_peaks(device)  # the fill's temporaries are the benchmark's, not the merger's
    plan = merger.memory
    one_model = plan.models_bytes // plan.n_models
    rows.add(
        "load",
        placement=placement,
        layers=config.num_hidden_layers,
        models_bytes=plan.models_bytes,
        one_model_bytes=one_model,
        live_bytes=plan.live_bytes,
        load_s=load_s,
        fill_s=fill_s,
        load_peak_alloc=load_alloc,
        load_peak_reserved=load_reserved,
        host_held=host_held,
        pinned_held=pinned_held,
        attn=getattr(merger.model.config, "_attn_implementation", None),
    )
    link = {"device": bw["device_copy"], "host": bw["h2d_pinned"], "disk": bw["h2d_pageable"]}[placement]
    for method in args.methods:
        recipe = MergeRecipe.from_dict(bm.recipe_for(method, base, parents, config.num_hidden_layers))
        if cold_first:
            drop_page_cache([base, *parents])
        candidate = functools.partial(merger.apply, recipe)
        first_s = timed(candidate, device)
        times = [timed(candidate, device) for _ in range(args.repeats)]
        apply_s = statistics.median(times)
        peak_alloc, peak_reserved = device_peaks(device)
        read = plan.read_bytes_per_candidate
        hbm_floor, link_floor = read / (bw["device_copy"] * GB), read / (link * GB)
        rows.add(
            "apply",
            placement=placement,
            method=method,
            layers=config.num_hidden_layers,
            first_s=first_s,
            times=times,
            apply_s=apply_s,
            read_bytes=read,
            hbm_floor_s=hbm_floor,
            x_hbm_floor=apply_s / hbm_floor,
            link_floor_s=link_floor,
            x_link_floor=apply_s / link_floor,
            peak_alloc=max(peak_alloc, load_alloc),
            peak_reserved=max(peak_reserved, load_reserved),
            alloc_over_models=max(peak_alloc, load_alloc) / plan.models_bytes,
            reserved_over_models=max(peak_reserved, load_reserved) / plan.models_bytes,
            alloc_over_one_model=max(peak_alloc, load_alloc) / one_model,
            host_held=host_bytes() - host_before,
            compile_broken=kernels._Kernel.broken,
        )
    if placement == "device" and "ties" in args.methods:
        ties = MergeRecipe.from_dict(bm.recipe_for("ties", base, parents, config.num_hidden_layers))
        profile_row(rows, merger, ties, device)
    return merger


# --- correctness and the CUDA tests ----------------------------------------------------------------

BOUND = 1e-6  # |cuda - cpu| <= BOUND * max |cpu| (float32 rounding of fused multiply-adds)


def correctness_rows(rows: Rows, args: argparse.Namespace, workdir: Path, device: torch.device) -> None:
    """Each method's merge of a small bf16 family on `device` (compiled) against the CPU's (eager)."""
    from evomerge.merge import kernels
    from evomerge.merge.live import LiveMerger
    from evomerge.recipe import MergeRecipe

    config = bm.llama_config(2, bm.TINY)
    base, parents = bm.family_paths(workdir / "small", args.parents)
    bm.make_family(workdir / "small", config, args.parents, args.noise)
    merged = {}
    for where in (device, torch.device("cpu")):
        live = LiveMerger(base, parents, device=where, placement="device", model_dtype=torch.float32)
        with kernels.compiling(where.type != "cpu"):
            for method in args.methods:
                recipe = MergeRecipe.from_dict(bm.recipe_for(method, base, parents, 2))
                state = live.apply(recipe).state_dict()
                merged[(where.type, method)] = {name: t.detach().cpu().clone() for name, t in state.items()}
        del live
    for method in args.methods:
        ours, cpu = merged[(device.type, method)], merged[("cpu", method)]
        differing = sum(int((ours[n] != cpu[n]).sum()) for n in cpu)
        max_abs = max(float((ours[n] - cpu[n]).abs().max()) for n in cpu)
        scale = max(float(t.abs().max()) for t in cpu.values())
        rows.add(
            "correctness",
            method=method,
            against=f"{device.type} (compiled) vs cpu (eager)",
            entries=sum(t.numel() for t in cpu.values()),
            differing=differing,
            max_abs=max_abs,
            bound=BOUND * scale,
            identical=differing == 0,
            ok=max_abs <= BOUND * scale,
        )


CUDA_TESTS = "ties or task_arithmetic or off_the_device"


def cuda_tests_row(rows: Rows, args: argparse.Namespace) -> None:
    """The CUDA test subset in a subprocess (eager kernels), its counts parsed from pytest's summary."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/merge/test_cuda.py",
        "-k",
        CUDA_TESTS,
    ]
    environment = {**os.environ, "EVOMERGE_COMPILE": "0"}
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=args.tests_timeout, env=environment
        )
        output, rc = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as expired:
        output, rc = f"{expired.stdout or ''}{expired.stderr or ''}", "timeout"
        output = output if isinstance(output, str) else output.decode(errors="replace")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", output)}
    rows.add(
        "cuda_tests",
        selection=CUDA_TESTS,
        eager=True,
        rc=rc,
        seconds=time.perf_counter() - start,
        passed=counts.get("passed", 0),
        failed=counts.get("failed", 0),
        skipped=counts.get("skipped", 0),
        errors=counts.get("error", 0) + counts.get("errors", 0),
        deselected=counts.get("deselected", 0),
        tail=output.strip().splitlines()[-8:],
    )


# --- report (from the JSONL file) --------------------------------------------------------------------


def verdict(ok: bool, measured: bool = True) -> str:
    if not measured:
        return "n/a (a CPU run: the goals are a GPU's)"
    return "PASS" if ok else "FAIL"


def report(path: Path, full_layers: int) -> int:
    """The tables and goals, from every row the file holds (a cut run's too); the number of stages
    that failed."""
    table = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for row in table:
        by_kind.setdefault(row["row"], []).append(row)
    start = (by_kind.get("start") or [{}])[0]
    on_cuda = start.get("device_type") == "cuda"
    score = (by_kind.get("score") or [None])[0]
    loads = {row["placement"]: row for row in by_kind.get("load", [])}
    print(f"\n== gpu_check: {start.get('device_name', '?')}, torch {start.get('torch', '?')} ({path})")
    header = [
        "tier",
        "method",
        "layers",
        "models GB",
        "1st s",
        "apply s",
        "x HBM floor",
        "x link floor",
        "alloc / models",
        "reserved / models",
        "alloc / one model",
        "host GB",
        "cand/GPU-h",
    ]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    goals = []
    for r in by_kind.get("apply", []):
        per_hour = 3600 / (r["apply_s"] + score["score_s"]) if score else math.nan
        cells = [
            r["placement"],
            r["method"],
            str(r["layers"]),
            f"{loads[r['placement']]['models_bytes'] / GB:.1f}",
            f"{r['first_s']:.2f}",
            f"{r['apply_s']:.3f}",
            f"{r['x_hbm_floor']:.1f}",
            f"{r['x_link_floor']:.2f}",
            f"{r['alloc_over_models']:.2f}",
            f"{r['reserved_over_models']:.2f}",
            f"{r['alloc_over_one_model']:.2f}",
            f"{r['host_held'] / GB:.2f}",
            f"{per_hour:.0f}",
        ]
        print("| " + " | ".join(cells) + " |")
        if r["placement"] == "device" and r["method"] == "ties":
            scaled = r["apply_s"] * full_layers / r["layers"]
            goals.append(
                f"device tier <= 0.5 s per 7B TIES candidate: {verdict(scaled <= 0.5, on_cuda)} "
                f"({scaled:.3f} s)"
            )
            goals.append(
                f">= 1500 candidates per GPU-hour (TIES, {score['items'] if score else '?'} items): "
                f"{verdict(per_hour >= 1500, on_cuda)} ({per_hour:.0f})"
            )
        if r["placement"] == "device":
            ratio = r["alloc_over_models"]
            goals.append(
                f"device tier memory <= 1.3x models ({r['method']}): {verdict(ratio <= 1.3, on_cuda)} "
                f"({ratio:.2f}x allocated, {r['reserved_over_models']:.2f}x reserved)"
            )
        if r["placement"] == "host":
            ratio = r["alloc_over_one_model"]
            goals.append(
                f"host tier device memory <= 1.2x one model ({r['method']}): "
                f"{verdict(ratio <= 1.2, on_cuda)} ({ratio:.2f}x)"
            )
    if score:
        print(
            f"\nscorer: {score['items']} items in {score['score_s']:.3f} s ({score['items_per_s']:.0f} "
            f"items/s, {score['tokens_per_s']:.0f} tokens/s), batch {score['batch_size']}, "
            f"budget {score['token_budget']}"
        )
    for row in by_kind.get("profile", []):
        top = ", ".join(f"{k['name'][:40]} {k['ms']:.1f} ms x{k['calls']}" for k in row["kernels"][:5])
        print(f"profile ({row['placement']} {row['method']}): {top}")
    for row in by_kind.get("correctness", []):
        state = (
            "bit-identical"
            if row["identical"]
            else f"{row['differing']} entries differ, max {row['max_abs']:.2e}"
        )
        print(
            f"correctness {row['method']} ({row['against']}): {verdict(row['ok'])} "
            f"({state}; bound {row['bound']:.2e})"
        )
    for row in by_kind.get("cuda_tests", []):
        print(
            f"CUDA tests (-k '{row['selection']}', eager): {row['passed']} passed, {row['failed']} failed, "
            f"{row['skipped']} skipped, {row['errors']} errors in {row['seconds']:.0f} s (rc {row['rc']})"
        )
    for row in by_kind.get("error", []):
        print(f"ERROR in {row['stage']}: {row['error']}")
    print()
    for line in goals:
        print(line)
    return len(by_kind.get("error", []))


# --- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--disk-layers", type=int, default=4, help="layers of the real on-disk family")
    parser.add_argument("--parents", type=int, default=3)
    parser.add_argument("--placements", default="device,host", help="of device,host,disk")
    parser.add_argument("--methods", default="ties,task_arithmetic")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--noise", type=float, default=0.01)
    parser.add_argument("--tests-timeout", type=float, default=90.0, help="seconds for the CUDA test subset")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes instead of the 7B ones")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, 2 layers, a few items")
    parser.add_argument("--workdir", type=Path, help="where the families go (default: a temp dir)")
    parser.add_argument("--jsonl", type=Path, help="the rows (default: $OUT/gpu_check.jsonl, else ./)")
    args = parser.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    # `timeout` sends SIGTERM: leave through the `finally` below, so the scratch files are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    if args.dry_run:
        args.device, args.tiny, args.layers, args.disk_layers = "cpu", True, 2, 2
        args.items, args.repeats = 8, 1
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch; use --dry-run (or --device cpu) to check on a CPU")
    path = args.jsonl or Path(os.environ.get("OUT") or ".") / "gpu_check.jsonl"
    rows = Rows(path)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows.add("start", torch=torch.__version__, device_type=device.type, device_name=name, args=vars(args))
    shape = bm.TINY if args.tiny else bm.WIDE
    placements = [p for p in args.placements.split(",") if p]
    workdir = Path(tempfile.mkdtemp(prefix="gpu_check_", dir=args.workdir or scratch_root()))
    started = time.perf_counter()
    try:
        size = (4 if device.type == "cuda" else 1) * 1024**3 // (64 if args.tiny else 1)
        bw = bandwidths(device, size)
        rows.add("bandwidth", **bw)
        config = bm.llama_config(args.layers, shape)
        sparse = (
            sparse_family(workdir / "sparse", config, args.parents)
            if {"device", "host"} & set(placements)
            else None
        )
        if "device" in placements and sparse:
            merger = stage(
                rows,
                "device tier",
                lambda: run_tier(
                    "device", args, config, *sparse, device, rows, bw, fill=True, cold_first=False
                ),
            )
            if merger is not None:
                stage(rows, "scorer", lambda: score_row(rows, merger.model, args, device))
            del merger
            gc.collect()
        stage(rows, "correctness", lambda: correctness_rows(rows, args, workdir, device))
        stage(rows, "cuda tests", lambda: cuda_tests_row(rows, args))
        if "host" in placements and sparse:
            stage(
                rows,
                "host tier",
                lambda: run_tier(
                    "host", args, config, *sparse, device, rows, bw, fill=True, cold_first=False
                ),
            )
        if "disk" in placements:
            disk_config = bm.llama_config(args.disk_layers, shape)
            family = stage(
                rows,
                "disk family",
                lambda: real_family(workdir / "disk", disk_config, args.parents, args.noise, device),
            )
            if family is not None:
                stage(
                    rows,
                    "disk tier",
                    lambda: run_tier(
                        "disk", args, disk_config, *family, device, rows, bw, fill=False, cold_first=True
                    ),
                )
        rows.add("end", total_s=time.perf_counter() - started)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        failed = report(path, args.layers)
    if failed:
        raise SystemExit(f"{failed} stage(s) failed: see the error rows in {path}")


if __name__ == "__main__":
    main()
