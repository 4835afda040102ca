"""A worker's memory, computed from the checkpoints' headers before anything is loaded.

Every byte a search worker holds is one of: the base and the parents in their storage dtype (the
checkpoint's own, bf16 for nearly every released LLM), the live model in its dtype, the magnitude
indexes (a few KB per parent tensor), and per-tensor working buffers bounded by the kernels' chunk
size. Where the base and parents sit is the *placement*:

    device  everything on the worker's device (GPU HBM, or RAM for a CPU worker)
    host    base + parents in (pinned) host memory, each tensor copied to the device when merged
            (double-buffered on CUDA); the device holds the live model and two tensors' inputs
    disk    base + parents read lazily from the safetensors files (mmap, the OS page cache) for each
            candidate; the device holds the live model and one tensor's inputs

`plan_memory` gives the bytes per tier for a placement; `choose_placement` takes the cheapest
placement whose device bytes fit the free memory, and `MemoryPlan.refusal` says, in one line, why
nothing fits and what to change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from evomerge.merge import kernels
from evomerge.merge.io import ModelReader
from evomerge.merge.magnitude import DeltaStats, MagnitudeIndex

Placement = Literal["device", "host", "disk"]
PLACEMENTS: tuple[str, ...] = ("auto", "device", "host", "disk")
HEADROOM = 1.05  # allocator fragmentation and small buffers on top of the computed bytes


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KiB': binary units, three significant figures."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.3g} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def reader_bytes(reader: ModelReader) -> int:
    """What a model's tensors weigh in their storage dtype, from the safetensors headers."""
    return sum(math.prod(reader.shape(name)) * _itemsize(reader.dtype(name)) for name in reader.tensor_names)


def storage_dtype(reader: ModelReader) -> torch.dtype:
    """The dtype of the model's floating tensors (the first one found; float32 if none)."""
    for name in reader.tensor_names:
        dtype = reader.dtype(name)
        if dtype.is_floating_point:
            return dtype
    return torch.float32


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes one worker holds for one placement (see the module docstring)."""

    placement: Placement
    device: str
    models_bytes: int  # base + parents in their storage dtype
    live_bytes: int  # the live model in its dtype
    largest_tensor_bytes: int  # one tensor of every model (base + parents), storage dtype
    index_bytes: int  # magnitude indexes of every parent tensor
    work_bytes: int  # the kernels' chunked working buffers
    n_models: int
    n_tensors: int

    @property
    def device_bytes(self) -> int:
        # a CPU worker's "host" is its device: the models sit in the same RAM
        host_inputs = self.models_bytes if self.device == "cpu" else 2 * self.largest_tensor_bytes
        inputs = {"device": self.models_bytes, "host": host_inputs}
        held = inputs.get(self.placement, self.largest_tensor_bytes)
        return int(HEADROOM * (self.live_bytes + held + self.index_bytes + self.work_bytes))

    @property
    def host_bytes(self) -> int:
        """Host memory beyond the device's (0 where the device is the host: a CPU worker)."""
        if self.device == "cpu" or self.placement != "host":
            return 0
        return self.models_bytes

    @property
    def read_bytes_per_candidate(self) -> int:
        """What one candidate's merge reads: every model tensor once (the floor of its time)."""
        return self.models_bytes

    def refusal(self, free_bytes: int, workers: int = 1) -> str | None:
        """None when `workers` such workers fit `free_bytes` of device memory, else one line."""
        need = self.device_bytes * workers
        if need <= free_bytes:
            return None
        who = f"{workers} workers x {human_bytes(self.device_bytes)}" if workers > 1 else "one worker"
        fix = {
            "device": f"use workers.placement: {'disk' if self.device == 'cpu' else 'host or disk'}, fewer "
            "workers, or a larger device",
            "host": "use workers.placement: disk, fewer workers, or a larger device",
            "disk": "use a larger device, fewer workers, or a smaller live dtype (workers.dtype: bfloat16)",
        }[self.placement]
        return (
            f"the merge family needs {human_bytes(need)} on {self.device} ({who}, placement "
            f"{self.placement}) but {human_bytes(free_bytes)} is free; {fix}"
        )


def plan_memory(
    readers: list[ModelReader],
    placement: Placement,
    device: str = "cpu",
    live_dtype: torch.dtype | None = None,
) -> MemoryPlan:
    """`readers`: base first (or the first model), then the parents; headers only, nothing loaded."""
    reference = readers[0]
    live_size = _itemsize(live_dtype or storage_dtype(reference))
    names = reference.tensor_names
    largest = max((math.prod(reference.shape(n)) for n in names), default=0)
    largest_bytes = sum(largest * _itemsize(storage_dtype(r)) for r in readers)
    # The kernels' chunk on this device (larger on a GPU) and the sparsifiers' passes' chunk
    chunk = min(largest, max(kernels.chunk_entries(1, torch.device(device)), DeltaStats.CHUNK))
    # A chunk's working set: its |delta| and masks in float32, DELLA's ranks (a stable argsort and
    # its inverse hold int64 indices), the positions a BAND or a draw reads: ~32 B per chunk entry,
    # once per model.
    work = 32 * chunk * len(readers)
    return MemoryPlan(
        placement=placement,
        device=device,
        models_bytes=sum(reader_bytes(r) for r in readers),
        live_bytes=sum(math.prod(reference.shape(n)) for n in names) * live_size,
        largest_tensor_bytes=largest_bytes,
        index_bytes=sum(MagnitudeIndex.bytes_for(math.prod(reference.shape(n))) for n in names)
        * max(len(readers) - 1, 1),
        work_bytes=work,
        n_models=len(readers),
        n_tensors=len(names),
    )


def free_bytes(device: str) -> int:
    """Free memory of `device`: CUDA's free HBM, or the host's available RAM for a CPU worker."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def choose_placement(
    readers: list[ModelReader],
    requested: str,
    device: str,
    live_dtype: torch.dtype | None,
    free: int,
    workers: int = 1,
) -> MemoryPlan:
    """The requested placement, or for 'auto' the cheapest that fits (device, then host, then disk;
    a CPU worker has no host tier of its own). Never raises: check `refusal` on the result."""
    if requested != "auto":
        return plan_memory(readers, requested, device, live_dtype)  # type: ignore[arg-type]
    order: list[Placement] = ["device", "disk"] if device == "cpu" else ["device", "host", "disk"]
    plans = [plan_memory(readers, placement, device, live_dtype) for placement in order]
    for plan in plans:
        if plan.refusal(free, workers) is None:
            return plan
    return plans[-1]
