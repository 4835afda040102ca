"""In-memory materializer for the search: parents loaded once, each candidate written in place.

The base and the parents stay resident on the worker's device. What a candidate does not change
is computed once per parent tensor and kept (`DeltaStats`: the task vector parent - base, its
sorted magnitudes so a TIES/breadcrumbs density is an index lookup instead of a top-k, DELLA's
row ranks). `apply(recipe)` runs the same merge plan and method functions as
`merge_to_directory`, so it gives the same tensors, and copies them into the live model's
parameters under `torch.no_grad()`: no disk I/O per candidate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from evomerge.errors import ConfigError
from evomerge.merge.io import ModelReader, check_compatible, plan_for
from evomerge.merge.methods import DeltaStats
from evomerge.recipe import MergeRecipe


def _key(path: str | Path) -> str:
    return str(Path(path).resolve())


class LiveMerger:
    """Holds base + parents on `device`; `.model` is the live causal LM every `apply` rewrites."""

    def __init__(
        self,
        base: str | Path | None,
        models: list[str | Path],
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        allow_pickle: bool = False,
        model_dtype: torch.dtype | None = None,
    ) -> None:
        """`dtype`: the resident tensors and the merge arithmetic; `model_dtype`: the live model's
        parameters (default `dtype`), e.g. bfloat16 for faster scoring of float32 merges."""
        from transformers import AutoConfig, AutoModelForCausalLM

        self.device = torch.device(device)
        self.dtype = dtype
        paths = ([base] if base is not None else []) + [
            m for m in models if base is None or _key(m) != _key(base)
        ]
        if not paths:
            raise ConfigError("LiveMerger needs a base or at least one model; pass model directories")
        self.base_key = _key(base) if base is not None else None
        self._readers = {_key(p): ModelReader(p, allow_pickle) for p in paths}
        check_compatible(self._readers)
        self._resident: dict[str, dict[str, torch.Tensor]] = {
            key: {name: self._load(reader, name) for name in reader.tensor_names}
            for key, reader in self._readers.items()
        }
        self._stats: dict[tuple[str, str, str], DeltaStats] = {}
        self._reference = _key(paths[0])
        config = AutoConfig.from_pretrained(self._reference)
        model = AutoModelForCausalLM.from_config(config, dtype=model_dtype or dtype)
        model.load_state_dict(self._resident[self._reference], strict=False)
        self.model = model.to(self.device).eval()
        self._params: dict[str, torch.Tensor] = self.model.state_dict(keep_vars=True)
        self._tokenizer_dir = Path(self._reference)

    def _load(self, reader: ModelReader, name: str) -> torch.Tensor:
        value = reader.get(name)
        return value.to(self.device, self.dtype) if value.is_floating_point() else value.to(self.device)

    @property
    def tokenizer_dir(self) -> Path:
        """The last applied recipe's tokenizer_source, else the base (or first model)."""
        return self._tokenizer_dir

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

    def apply(self, recipe: MergeRecipe) -> torch.nn.Module:
        """Write the recipe's merged tensors into `self.model` in place and return the model."""
        aliases = self._resolve(recipe)
        plan = plan_for(recipe, {path: self._readers[key] for path, key in aliases.items()})
        expected = self.model.config.num_hidden_layers
        if plan.num_layers != expected:
            raise ConfigError(
                f"the recipe's slices give {plan.num_layers} layers but the live model has {expected}; "
                f"in-memory merges keep the base's layer count (use `evomerge merge` for other shapes)"
            )

        def tensor(model: str, name: str) -> torch.Tensor:
            return self._resident[aliases[model]][name]

        def stats(model: str, name: str, value: torch.Tensor, base: torch.Tensor) -> DeltaStats:
            key = (aliases[model], name, aliases[recipe.base_model or model])
            cached = self._stats.get(key)
            if cached is None:
                cached = self._stats[key] = DeltaStats(value, base)
            return cached

        with torch.no_grad():
            for job in plan.jobs:
                target = self._params.get(job.name)
                if target is None:
                    raise ConfigError(f"tensor {job.name!r} is not a parameter of the live model")
                inputs = plan.inputs(job, tensor, stats)
                if target.dtype == self.dtype:
                    inputs.out = target  # the method writes straight into the parameter
                merged = plan.method.merge(inputs)
                if merged is not target:
                    target.copy_(merged)
        source = recipe.tokenizer_source
        self._tokenizer_dir = Path(source) if source and source != "base" else Path(recipe.model_paths()[0])
        return self.model

    def state_dict(self) -> dict[str, Any]:
        """The live model's current tensors (for tests and exports)."""
        return {name: value.detach() for name, value in self._params.items()}
