"""In-memory materializer for the search: parents loaded once, each candidate written in place.

The base and the parents are held once, in their storage dtype, where the placement puts them
(`memory.py`: on the device, in host memory, or read from disk per candidate). Nothing
full-size is derived from them: the task vectors are recomputed inside the fused kernels and a
magnitude threshold comes from a few-KB `MagnitudeIndex` per parent tensor. `apply(recipe)` runs
the same merge plan and method functions as `merge_to_directory`, so it gives the same tensors,
written straight into the live model's parameters under `torch.no_grad()`: no disk writes.

The live model is created on its device in its dtype without random initialisation (parameters
on the meta device first), then filled from the reference model (the base).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from evomerge.errors import ConfigError
from evomerge.merge.hub import resolve_model
from evomerge.merge.io import ModelReader, check_compatible, plan_for, tokenizer_dir
from evomerge.merge.magnitude import DeltaStats, MagnitudeIndex
from evomerge.merge.memory import (
    PLACEMENTS,
    MemoryPlan,
    choose_placement,
    free_bytes,
    human_bytes,
    storage_dtype,
)
from evomerge.recipe import MergeRecipe


def _key(path: str | Path) -> str:
    """The loaded model a recipe's path or hub id names (a hub id: its cached snapshot)."""
    return str(resolve_model(path).resolve())


def empty_model(config: Any, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """The architecture of `config` with uninitialised parameters on `device` in `dtype`: built on
    the meta device (no random init, no CPU copy), then each parameter allocated where it lives.
    Buffers (rotary frequencies) are computed as usual and moved; tied weights are re-tied."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    for name, param in list(model.named_parameters()):
        owner, _, leaf = name.rpartition(".")
        empty = torch.empty(param.shape, dtype=dtype, device=device)
        setattr(model.get_submodule(owner), leaf, torch.nn.Parameter(empty, requires_grad=False))
    model.tie_weights()
    return model.to(device).eval()


ALIGNMENT = 64  # bytes: every packed tensor starts on a cache line (and any dtype's alignment)


def _pinned_tensors(reader: ModelReader) -> tuple[int, dict[str, torch.Tensor]]:
    """One model's tensors packed into one host buffer, page-locked in place (cudaHostRegister), so
    the side stream's copies are asynchronous. `pin_memory()` per tensor would round each tensor up
    to a power of two in the caching host allocator: ~30% more host memory on a llama family.
    Returns the buffer's address (to unregister) and the tensors, views that keep it alive."""
    names = reader.tensor_names
    sizes = [math.prod(reader.shape(n)) * reader.dtype(n).itemsize for n in names]
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + -(-size // ALIGNMENT) * ALIGNMENT)
    buffer = torch.empty(offsets[-1], dtype=torch.uint8)
    status = torch.cuda.cudart().cudaHostRegister(buffer.data_ptr(), buffer.numel(), 0)
    if int(status) != 0:
        raise ConfigError(
            f"cannot page-lock {human_bytes(buffer.numel())} of host memory for {reader.path} (CUDA error "
            f"{int(status)}); raise the locked-memory limit (ulimit -l) or use workers.placement: disk"
        )
    tensors = {}
    for name, start, size in zip(names, offsets, sizes, strict=False):
        view = buffer[start : start + size].view(reader.dtype(name)).view(reader.shape(name))
        tensors[name] = view.copy_(reader.get(name))
    return buffer.data_ptr(), tensors


def _unregister(addresses: list[int]) -> None:
    for address in addresses:
        torch.cuda.cudart().cudaHostUnregister(address)


class _HostStreamer:
    """Host placement on CUDA: while one tensor's kernels run on the compute stream, the next
    tensor's inputs are copied from pinned host memory on a side stream (double-buffered: at most
    two tensors' inputs are on the device at once)."""

    def __init__(self, resident: dict[str, dict[str, torch.Tensor]], device: torch.device) -> None:
        self.resident = resident
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def prefetch(self, wanted: list[tuple[str, str]]) -> tuple[dict[tuple[str, str], torch.Tensor], Any]:
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # buffers freed before reuse
        with torch.cuda.stream(self.stream):
            copies = {key: self.resident[key[0]][key[1]].to(self.device, non_blocking=True) for key in wanted}
            done = torch.cuda.Event()
            done.record(self.stream)
        return copies, done

    def take(
        self, copies: dict[tuple[str, str], torch.Tensor], done: Any
    ) -> dict[tuple[str, str], torch.Tensor]:
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(done)
        for tensor in copies.values():
            tensor.record_stream(compute)  # the caching allocator keeps it until the kernels finish
        return copies


class LiveMerger:
    """Holds base + parents per `placement`; `.model` is the live causal LM every `apply` rewrites.

    `placement`: 'device', 'host', 'disk' or 'auto' (the cheapest that fits the free memory; see
    `memory.choose_placement`). `model_dtype`: the live model's dtype (default: the reference
    checkpoint's), e.g. bfloat16 to score faster; the merge itself is computed in the recipe's dtype.
    """

    def __init__(
        self,
        base: str | Path | None,
        models: list[str | Path],
        device: str | torch.device = "cpu",
        allow_pickle: bool = False,
        model_dtype: torch.dtype | None = None,
        placement: str = "device",
    ) -> None:
        from transformers import AutoConfig

        if placement not in PLACEMENTS:
            raise ConfigError(f"placement {placement!r} is not one of {', '.join(PLACEMENTS)}")
        self.device = torch.device(device)
        paths = ([base] if base is not None else []) + [
            m for m in models if base is None or _key(m) != _key(base)
        ]
        if not paths:
            raise ConfigError("LiveMerger needs a base or at least one model; pass model directories")
        self._readers = {_key(p): ModelReader(p, allow_pickle) for p in paths}
        check_compatible(self._readers)
        self._reference = _key(paths[0])
        reference = self._readers[self._reference]
        self.model_dtype = model_dtype or storage_dtype(reference)
        readers = list(self._readers.values())
        free = free_bytes(str(self.device))
        self.memory: MemoryPlan = choose_placement(
            readers, placement, str(self.device), self.model_dtype, free
        )
        refusal = self.memory.refusal(free)
        if refusal is not None:  # refused before a byte is loaded, never an OOM halfway through
            raise ConfigError(refusal)
        self.placement = self.memory.placement
        host = torch.device("cpu") if self.placement == "host" else self.device
        pin = self.placement == "host" and self.device.type == "cuda"
        self._resident: dict[str, dict[str, torch.Tensor]] = {}
        if pin:
            packed = {key: _pinned_tensors(reader) for key, reader in self._readers.items()}
            self._resident = {key: tensors for key, (_, tensors) in packed.items()}
            # unlocked when the merger goes, before its buffers are freed
            weakref.finalize(self, _unregister, [address for address, _ in packed.values()])
        elif self.placement != "disk":
            self._resident = {
                key: {name: reader.get(name).to(host) for name in reader.tensor_names}
                for key, reader in self._readers.items()
            }
        self._indexes: dict[tuple[str, str, str, Any], MagnitudeIndex] = {}
        self._streamer = _HostStreamer(self._resident, self.device) if pin else None
        self.model = empty_model(AutoConfig.from_pretrained(self._reference), self.model_dtype, self.device)
        self._params: dict[str, torch.Tensor] = self.model.state_dict(keep_vars=True)
        with torch.no_grad():
            for name, param in self._params.items():
                if reference.has(name):
                    param.copy_(self._fetch(self._reference, name))
        self._tokenizer_dir = Path(self._reference)
        # tokenizer_dir per (source, models): a 'union' or model source loads tokenizers to compare
        # vocabularies, which a search's every candidate would otherwise repeat
        self._tokenizer_dirs: dict[tuple[str, tuple[str, ...]], Path] = {}

    def _fetch(self, key: str, name: str) -> torch.Tensor:
        """One input tensor on the merge device, in its storage dtype."""
        if self.placement == "disk":
            return self._readers[key].get(name).to(self.device)
        return self._resident[key][name].to(self.device, non_blocking=True)

    @property
    def tokenizer_dir(self) -> Path:
        """The last applied recipe's tokenizer_source, else the base (or first model)."""
        return self._tokenizer_dir

    def resident_bytes(self) -> dict[str, int]:
        """Bytes held now: base + parents (where the placement keeps them), live model, indexes."""
        held = sum(
            t.numel() * t.element_size() for tensors in self._resident.values() for t in tensors.values()
        )
        live = sum(t.numel() * t.element_size() for t in {id(p): p for p in self._params.values()}.values())
        return {
            "models": held,
            "live": live,
            "indexes": sum(index.nbytes for index in self._indexes.values()),
        }

    def _resolve(self, recipe: MergeRecipe) -> dict[str, str]:
        """Recipe model path -> loaded model key."""
        aliases = {}
        for path in recipe.model_paths():
            key = _key(path)
            if key not in self._readers:
                loaded = ", ".join(self._readers)
                raise ConfigError(
                    f"recipe model {path!r} is not loaded in this LiveMerger (loaded: {loaded})"
                )
            aliases[path] = key
        return aliases

    def _stats_for(self, aliases: dict[str, str], base_model: str | None) -> Callable[..., DeltaStats]:
        def stats(model: str, name: str, value: torch.Tensor, base: torch.Tensor, compute: Any) -> DeltaStats:
            key = (aliases[model], name, aliases[base_model or model], compute)

            def remember(index: MagnitudeIndex) -> None:
                self._indexes[key] = index

            label = f"{Path(model).name}: {name}"
            return DeltaStats(value, base, compute, self._indexes.get(key), remember, label)

        return stats

    def apply(self, recipe: MergeRecipe) -> torch.nn.Module:
        """Write the recipe's merged tensors into `self.model` in place and return the model."""
        aliases = self._resolve(recipe)
        plan = plan_for(recipe, {path: self._readers[key] for path, key in aliases.items()})
        expected = self._readers[self._reference].num_layers  # the live model's
        if plan.num_layers != expected:
            raise ConfigError(
                f"the recipe's slices give {plan.num_layers} layers but the live model has {expected}; "
                f"in-memory merges keep the base's layer count (use `evomerge merge` for other shapes)"
            )

        def wanted(job: Any) -> list[tuple[str, str]]:
            return [
                (aliases[model], name) for model, name in ([job.base] if job.base else []) + list(job.sources)
            ]

        stats = self._stats_for(aliases, recipe.base_model)
        streamer = self._streamer
        pending = streamer.prefetch(wanted(plan.jobs[0])) if streamer and plan.jobs else None
        with torch.no_grad():
            for number, job in enumerate(plan.jobs):
                target = self._params.get(job.name)
                if target is None:
                    raise ConfigError(f"tensor {job.name!r} is not a parameter of the live model")
                if streamer is not None and pending is not None:
                    ready = streamer.take(*pending)
                    if number + 1 < len(plan.jobs):  # the next tensor's copies overlap this one's kernels
                        pending = streamer.prefetch(wanted(plan.jobs[number + 1]))

                    def tensor(model: str, name: str, ready: dict = ready) -> torch.Tensor:
                        return ready[(aliases[model], name)]
                else:

                    def tensor(model: str, name: str) -> torch.Tensor:
                        return self._fetch(aliases[model], name)

                inputs = plan.inputs(job, tensor, stats)
                inputs.out = target  # the kernel writes straight into the parameter, in its dtype
                plan.method.merge(inputs)
        key = (recipe.tokenizer_from, tuple(recipe.model_paths()))
        if key not in self._tokenizer_dirs:
            self._tokenizer_dirs[key] = tokenizer_dir(recipe)
        self._tokenizer_dir = self._tokenizer_dirs[key]
        return self.model

    def state_dict(self) -> dict[str, Any]:
        """The live model's current tensors (for tests and exports)."""
        return {name: value.detach() for name, value in self._params.items()}
