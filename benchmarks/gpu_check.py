"""One-shot GPU check of the live merger at 7B shape: seconds per candidate, memory, scoring.

    bash benchmarks/gpu_check.sh            # on a GPU machine (H100/H200): nvidia-smi, then this
    python benchmarks/gpu_check.py [--layers 32] [--disk-layers 4] [--placements device,host,disk]
    python benchmarks/gpu_check.py --dry-run   # CPU, tiny shapes: checks that it runs end to end

The family is a llama with the real 7B shapes (hidden 4096, intermediate 11008, 32 heads, 32 KV
heads, vocabulary 32000, untied head), `--layers` layers, bf16, base + `--parents` parents (base +
seeded noise, `--noise` times each tensor's std), per-layer TIES over all of them.

Device and host tiers: the 32-layer family is never written to disk. One *sparse* safetensors file
holds only the header (the data section is a hole: a few KB on disk), hard-linked into base/ and
each parent_k/ (distinct paths, so LiveMerger holds them as distinct models; one inode, so the page
cache holds its zero pages once). LiveMerger loads that family in its placement (GPU HBM, or pinned
host memory), then the benchmark generates the real values on the GPU and writes them into the
merger's resident tensors in place, before any candidate is applied (the magnitude indexes are
built from them on the first apply). That touches LiveMerger's private `_resident` dict: the
public API takes model directories only, and 4 x 13.5 GB of real files would not fit the disk.
Disk tier: the placement reads the files per candidate, so they must hold the real values: a
`--disk-layers` family is written to local disk (4 layers: ~8.6 GB) and dropped from the page cache
(posix_fadvise DONTNEED on our own files) before the first candidate, which is timed cold; the
median is over the following (warm) candidates. Its per-candidate seconds are also scaled to
`--layers` by bytes read. Scratch files go to `--workdir`, $GPU_CHECK_TMP, or /var/tmp or /tmp
(whichever is not a tmpfs), and are removed at the end.

Measured per placement: load s; first apply s (kernel compilation, magnitude indexes); median
apply s over `--repeats`; the HBM floor = bytes read per candidate (every held model once) / HBM
bandwidth (a device-to-device copy of a 4 GiB tensor, bytes read + written, best of 5), and for the
host and disk tiers the link floor = the same bytes / host-to-device copy GB/s (pinned for host,
pageable for disk); torch.cuda.max_memory_allocated over load + applies + scoring, against the
models' bytes; host memory held (RssAnon + RssShmem growth, and the bytes of the CUDA pinned
allocator, which rounds every block up to a power of two); scoring: a
bf16 forward (SDPA, inference_mode) of the live model over `--items` random-token sequences of
`--seq` tokens in one batch, log-probs of the last quarter of each sequence (a multiple-choice
continuation), median of 3 after a warm-up; candidates per GPU-hour = 3600 / (apply s + score s).

Goals printed beside the numbers: device tier <= 0.5 s per candidate, and >= 50% of the HBM
bandwidth (bytes read / apply s); host tier <= 2 s; >= 1500 candidates per GPU-hour at 100 items;
device-tier memory <= 1.3x base + parents; host-tier device memory <= 1.2x (one model + one
layer of every held model).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import signal
import statistics
import struct
import sys
import tempfile
import time
import zlib
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


# --- one tier ------------------------------------------------------------------------------------


def score(model: Any, items: int, seq: int, vocab: int, device: torch.device) -> float:
    """Median seconds of one batched forward + continuation log-probs over `items` sequences."""
    generator = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(0, vocab, (items, seq), generator=generator, device=device)
    tail = max(1, seq // 4)

    def once() -> None:
        with torch.inference_mode():
            logits = model(input_ids=ids, use_cache=False).logits[:, -tail - 1 : -1]
            logprobs = logits.float().log_softmax(-1).gather(-1, ids[:, -tail:, None]).sum()
            float(logprobs)

    once()
    times = []
    for _ in range(3):
        sync(device)
        start = time.perf_counter()
        once()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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


def run_tier(placement: str, args: argparse.Namespace, config: Any, base: Path, parents: list[Path],
             device: torch.device, fill: bool, cold_first: bool) -> dict[str, Any]:  # fmt: skip
    from evomerge.merge.live import LiveMerger
    from evomerge.recipe import MergeRecipe

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    host_before, pinned_before = host_bytes(), pinned_bytes()
    start = time.perf_counter()
    merger = LiveMerger(base, parents, device=device, placement=placement)
    sync(device)
    load_s = time.perf_counter() - start
    load_alloc = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    host_held = host_bytes() - host_before
    pinned_held = pinned_bytes() - pinned_before
    fill_s = 0.0
    if fill:
        start = time.perf_counter()
        fill_resident(merger, base, parents, args.noise, device)
        fill_s = time.perf_counter() - start
        if device.type == "cuda":  # the fill's temporaries are the benchmark's, not the merger's
            torch.cuda.reset_peak_memory_stats(device)
    if cold_first:
        drop_page_cache([base, *parents])
    recipe = MergeRecipe.from_dict(bm.recipe_for("ties", base, parents, config.num_hidden_layers))
    start = time.perf_counter()
    merger.apply(recipe)
    sync(device)
    first_s = time.perf_counter() - start
    print(
        f"  {placement}: load {load_s:.1f} s (+ fill {fill_s:.1f} s), first apply {first_s:.2f} s", flush=True
    )
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        merger.apply(recipe)
        sync(device)
        times.append(time.perf_counter() - start)
    score_s = score(merger.model, args.items, args.seq, config.vocab_size, device)
    plan = merger.memory
    resident = merger.resident_bytes()
    layer_bytes = plan.models_bytes - (  # one layer of every held model: total minus the non-layer tensors
        sum(math.prod(s) * 2 for n, s in bm.parameter_shapes(config).items() if ".layers." not in n)
        * plan.n_models
    )
    layer_bytes //= max(config.num_hidden_layers, 1)
    from evomerge.merge import kernels

    result = {
        "placement": placement,
        "device": device.type,
        "layers": config.num_hidden_layers,
        "models_bytes": plan.models_bytes,
        "live_bytes": plan.live_bytes,
        "layer_bytes": layer_bytes,
        "read_bytes": plan.read_bytes_per_candidate,
        "plan_device_bytes": plan.device_bytes,
        "resident": resident,
        "load_s": load_s,
        "fill_s": fill_s,
        "first_s": first_s,
        "times": times,
        "apply_s": statistics.median(times) if times else first_s,
        "score_s": score_s,
        "load_max_alloc": load_alloc,
        "max_alloc": max(load_alloc, torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0),
        "host_held": host_held,
        "pinned_held": pinned_held,
        "compile_broken": kernels._Kernel.broken,
        "attn": getattr(merger.model.config, "_attn_implementation", None),
    }
    del merger
    gc.collect()
    return result


# --- report ----------------------------------------------------------------------------------------


def verdict(ok: bool, measured: bool = True) -> str:
    if not measured:
        return "n/a (no CUDA memory statistics on a CPU run)"
    return "PASS" if ok else "FAIL"


def report(
    rows: list[dict[str, Any]], bw: dict[str, float], args: argparse.Namespace, full_read: int
) -> None:
    print()
    print(
        f"bandwidth: device copy {bw['device_copy']:.0f} GB/s (read + write), host-to-device pinned "
        f"{bw['h2d_pinned']:.1f} GB/s, pageable {bw['h2d_pageable']:.1f} GB/s"
    )
    print(
        f"per-layer TIES over base + {args.parents} parents, bf16 storage, float32 compute, live model bf16;"
    )
    print(
        f"scoring: {args.items} sequences x {args.seq} tokens, one batch, bf16 forward under inference_mode"
    )
    print()
    header = [
        "placement", "layers", "models GB", "load s", "1st apply s", "apply s", "HBM floor s", "x HBM floor",
        "link floor s", "x link", "max alloc GB", "alloc / models", "host held GB", "score s", "tokens/s",
        "cand/GPU-h",
    ]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    link = {"device": bw["device_copy"], "host": bw["h2d_pinned"], "disk": bw["h2d_pageable"]}
    goals = []
    for r in rows:
        hbm_floor = r["read_bytes"] / (bw["device_copy"] * GB)
        link_floor = r["read_bytes"] / (link[r["placement"]] * GB)
        per_hour = 3600 / (r["apply_s"] + r["score_s"])
        tokens = args.items * args.seq / r["score_s"]
        cells = [
            r["placement"], str(r["layers"]), f"{r['models_bytes'] / GB:.1f}",
            f"{r['load_s'] + r['fill_s']:.1f}", f"{r['first_s']:.2f}", f"{r['apply_s']:.3f}",
            f"{hbm_floor:.4f}", f"{r['apply_s'] / hbm_floor:.1f}",
            f"{link_floor:.3f}", f"{r['apply_s'] / link_floor:.2f}", f"{r['max_alloc'] / GB:.2f}",
            f"{r['max_alloc'] / r['models_bytes']:.2f}", f"{r['host_held'] / GB:.2f}", f"{r['score_s']:.3f}",
            f"{tokens:.0f}", f"{per_hour:.0f}",
        ]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
        if r["placement"] == "device":
            fraction = r["read_bytes"] / r["apply_s"] / (bw["device_copy"] * GB)
            goals.append(
                f"device tier <= 0.5 s per candidate: {verdict(r['apply_s'] <= 0.5)} ({r['apply_s']:.3f} s)"
            )
            goals.append(
                f"device tier >= 50% of HBM bandwidth: {verdict(fraction >= 0.5)} ({100 * fraction:.1f}%)"
            )
            goals.append(
                f">= 1500 candidates per GPU-hour at {args.items} items (device tier): "
                f"{verdict(per_hour >= 1500)} ({per_hour:.0f})"
            )
            ratio = r["max_alloc"] / r["models_bytes"]
            memory = verdict(ratio <= 1.3, r["device"] == "cuda")
            goals.append(f"device tier memory <= 1.3x base + parents: {memory} ({ratio:.2f}x)")
        elif r["placement"] == "host":
            goals.append(
                f"host tier <= 2 s per candidate: {verdict(r['apply_s'] <= 2)} ({r['apply_s']:.3f} s)"
            )
            allowed = 1.2 * (r["live_bytes"] + r["layer_bytes"])
            goals.append(
                f"host tier device memory <= 1.2x (one model + one layer of every held model) = "
                f"{allowed / GB:.2f} GB: {verdict(r['max_alloc'] <= allowed, r['device'] == 'cuda')} "
                f"({r['max_alloc'] / GB:.2f} GB); host memory held {r['host_held'] / GB:.2f} GB "
                f"(pinned allocator {r['pinned_held'] / GB:.2f} GB) "
                f"for {r['models_bytes'] / GB:.2f} GB of models"
            )
        else:
            scaled = r["apply_s"] * full_read / r["read_bytes"]
            goals.append(
                f"disk tier (no goal): first candidate (cold files) {r['first_s']:.2f} s, warm median "
                f"{r['apply_s']:.3f} s at {r['layers']} layers, ~{scaled:.2f} s scaled to "
                f"{args.layers} layers by bytes read"
            )
    print()
    for line in goals:
        print(line)
    for r in rows:
        if r["compile_broken"]:
            print("WARNING: torch.compile failed, the kernels ran eagerly (install triton)")
            break
    print(f"attention implementation of the live model: {rows[0]['attn'] if rows else '?'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--disk-layers", type=int, default=4, help="layers of the real on-disk family")
    parser.add_argument("--parents", type=int, default=3)
    parser.add_argument("--placements", default="device,host,disk")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--noise", type=float, default=0.01)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes instead of the 7B ones")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, 2 layers, a few items")
    parser.add_argument("--workdir", type=Path, help="where the families go (default: a temp dir)")
    parser.add_argument(
        "--json", type=Path, help="also write the results here (default: $OUT/gpu_check.json)"
    )
    args = parser.parse_args()
    # `timeout` sends SIGTERM: leave through the `finally` below, so the scratch files are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    if args.dry_run:
        args.device, args.tiny, args.layers, args.disk_layers = "cpu", True, 2, 2
        args.items, args.seq, args.repeats = 8, 16, 1
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch; use --dry-run (or --device cpu) to check on a CPU")
    shape = bm.TINY if args.tiny else bm.WIDE
    name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"torch {torch.__version__}, device {device}{name}", flush=True)
    placements = [p for p in args.placements.split(",") if p]
    workdir = Path(tempfile.mkdtemp(prefix="gpu_check_", dir=args.workdir or scratch_root()))
    print(f"scratch directory: {workdir}", flush=True)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        bw = bandwidths(device, (4 if device.type == "cuda" else 1) * 1024**3 // (64 if args.tiny else 1))
        print(f"bandwidths (GB/s): {json.dumps({k: round(v, 1) for k, v in bw.items()})}", flush=True)
        config = bm.llama_config(args.layers, shape)
        full_read = 0
        if {"device", "host"} & set(placements):
            base, parents = sparse_family(workdir / "sparse", config, args.parents)
            for placement in [p for p in ("device", "host") if p in placements]:
                rows.append(
                    run_tier(placement, args, config, base, parents, device, fill=True, cold_first=False)
                )
                full_read = rows[-1]["read_bytes"]
                print("  " + json.dumps({k: v for k, v in rows[-1].items() if k != "resident"}), flush=True)
        if "disk" in placements:
            disk_config = bm.llama_config(args.disk_layers, shape)
            start = time.perf_counter()
            base, parents = real_family(workdir / "disk", disk_config, args.parents, args.noise, device)
            print(
                f"  disk family ({args.disk_layers} layers) written in {time.perf_counter() - start:.0f} s",
                flush=True,
            )
            rows.append(
                run_tier("disk", args, disk_config, base, parents, device, fill=False, cold_first=True)
            )
            print("  " + json.dumps({k: v for k, v in rows[-1].items() if k != "resident"}), flush=True)
            if not full_read:
                full_read = rows[-1]["read_bytes"] * args.layers // max(args.disk_layers, 1)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(rows, bw, args, full_read)
    print(f"total {time.perf_counter() - started:.0f} s")
    target = args.json or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            json.dumps({"bandwidth": bw, "rows": rows, "args": vars(args)}, default=str, indent=1)
        )


if __name__ == "__main__":
    main()
