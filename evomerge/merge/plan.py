"""From a recipe and the reference architecture to one job per output tensor.

Both materializers (on disk, `io.py`; in memory, `live.py`) run the same jobs through the same
method functions, which is why they give the same tensors. Layer tensors are renumbered by the
slices; embeddings come from the first slice's sources, the final norm and head from the last
slice's, with their parameters read at layer position t = 0 (as mergekit 0.1.5 does). Which
tensors are layers and which are embeddings is the architecture's (`architecture.py`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import torch

from evomerge.errors import ConfigError
from evomerge.merge.architecture import Architecture
from evomerge.merge.inputs import TensorInputs
from evomerge.merge.magnitude import DeltaStats
from evomerge.merge.methods import METHODS, MergeMethod
from evomerge.recipe import MergeRecipe, Slice, SliceSource


@dataclass(frozen=True)
class TensorJob:
    """One output tensor: where its inputs come from and its resolved parameters."""

    name: str
    base: tuple[str, str] | None  # (model, tensor name)
    sources: tuple[tuple[str, str], ...]  # merged models, aligned with model_params
    model_params: tuple[dict[str, Any], ...]
    global_params: dict[str, Any]


@dataclass(frozen=True)
class MergePlan:
    method: MergeMethod
    jobs: tuple[TensorJob, ...]
    num_layers: int
    seed: int
    compute_dtype: torch.dtype | None = None  # the recipe's `dtype` (mergekit); None: the checkpoint's

    def seeds(self, job: TensorJob) -> list[int] | None:
        """Per merged model, a seed from the recipe seed, the tensor name and the model's position:
        streamed and in-memory merges draw the same numbers for the same tensor whatever the order
        they run in, and a model's draws do not depend on the other models' parameters."""
        if not self.method.random:
            return None
        return [
            (self.seed * 1_000_003 + zlib.crc32(f"{job.name}/{position}".encode())) % (2**63)
            for position in range(len(job.sources))
        ]

    def inputs(
        self,
        job: TensorJob,
        tensor: Any,
        stats: Any,
    ) -> TensorInputs:
        """Assemble a method's inputs; `tensor(model, name)` fetches a tensor (in its storage dtype),
        `stats(model, name, value, base, compute_dtype)` gives its DeltaStats (a fresh magnitude
        index when streaming, a cached one when resident)."""
        base = tensor(*job.base) if job.base else None
        tensors = [tensor(model, name) for model, name in job.sources]
        delta_stats: list[DeltaStats] = []
        if base is not None and self.method.needs_base:
            delta_stats = [
                stats(model, name, tensors[i], base, self.compute_dtype)
                for i, (model, name) in enumerate(job.sources)
            ]
        return TensorInputs(
            name=job.name,
            base=base,
            tensors=tensors,
            model_params=list(job.model_params),
            global_params=job.global_params,
            stats=delta_stats,
            seeds=self.seeds(job),
            compute_dtype=self.compute_dtype,
        )


def build_plan(
    recipe: MergeRecipe, tensor_names: list[str], layer_counts: dict[str, int], architecture: Architecture
) -> MergePlan:
    """`tensor_names`: the reference model's tensors; `layer_counts`: the layers of each model."""
    method = METHODS.get(recipe.merge_method)
    if recipe.slices is not None and architecture.modules:
        raise ConfigError(
            f"{architecture.name} models have several modules (a vision tower and a language model), and "
            "slices over them are not supported (mergekit 0.1.5 needs its modules: syntax there); merge "
            "them with models: instead of slices"
        )
    n_ref = layer_counts[recipe.model_paths()[0]]
    if recipe.slices is not None:
        pieces = list(recipe.slices)
    else:
        whole = [SliceSource(model=m.model, layer_range=(0, n_ref)) for m in recipe.models or []]
        listed = {source.model for source in whole}
        if method.includes_base and recipe.base_model and recipe.base_model not in listed:
            whole.append(SliceSource(model=recipe.base_model, layer_range=(0, n_ref)))
        pieces = [Slice(sources=whole)]
    slices = [piece.sources for piece in pieces]
    for s_index, sources in enumerate(slices):
        for source in sources:
            count = layer_counts[source.model]
            if source.layer_range[1] > count:
                raise ConfigError(
                    f"slices.{s_index}: layer_range {list(source.layer_range)} of {source.model!r} goes past "
                    f"its {count} layers; use an end <= {count}"
                )
    layer_templates: dict[tuple[str, str], None] = {}
    outer: list[str] = []
    for name in tensor_names:
        parts = architecture.split(name)
        if parts is None:
            outer.append(name)
        else:
            layer_templates[(parts[0], parts[2])] = None
    ref_layer0 = sorted({t for (h, t) in layer_templates})  # stable order of a layer's tensors

    jobs: list[TensorJob] = []
    pre = [n for n in outer if architecture.is_pre(n)]
    post = [n for n in outer if not architecture.is_pre(n)]
    positions = architecture.module_positions(outer)
    for name in pre:
        jobs.append(_job(recipe, method, name, name, pieces[0], None, None, positions.get(name)))
    out_layer = 0
    heads = sorted({h for (h, _) in layer_templates})
    for piece in pieces:
        length = piece.num_layers
        for offset in range(length):
            for head in heads:
                for tail in ref_layer0:
                    if (head, tail) not in layer_templates:
                        continue
                    out_name = f"{head}{out_layer}{tail}"
                    jobs.append(_job(recipe, method, out_name, (head, tail), piece, offset, length))
            out_layer += 1
    for name in post:
        jobs.append(_job(recipe, method, name, name, pieces[-1], None, None))
    compute = getattr(torch, recipe.dtype) if recipe.dtype else None
    return MergePlan(method, tuple(jobs), out_layer, recipe.seed or 0, compute)


def _job(
    recipe: MergeRecipe,
    method: MergeMethod,
    out_name: str,
    source_name: str | tuple[str, str],
    piece: Slice,
    offset: int | None,
    length: int | None,
    position: tuple[int, int] | None = None,
) -> TensorJob:
    """`position`: (layer, layers) of a tensor of another module's layers (merged as itself)."""

    def input_name(source: SliceSource) -> str:
        if isinstance(source_name, str):
            return source_name
        return f"{source_name[0]}{source.layer_range[0] + (offset or 0)}{source_name[1]}"

    layer, n_layers = position or (offset, length or 1)  # n_layers: unused at t = 0 (offset None)
    sources = piece.sources
    base: tuple[str, str] | None = None
    merged = list(sources)
    if method.takes_base(recipe.base_model):
        base_sources = [s for s in sources if s.model == recipe.base_model]
        if base_sources:
            base = (recipe.base_model, input_name(base_sources[0]))
        elif recipe.slices is None and recipe.base_model:
            base = (recipe.base_model, input_name(SliceSource(model=recipe.base_model, layer_range=(0, 1))))
        else:
            raise ConfigError(
                f"base_model {recipe.base_model!r} is not a source of the slice holding {out_name!r}; "
                f"add it to that slice's sources"
            )
        merged = [s for s in sources if s.model != recipe.base_model]
    besides = " besides base_model" if method.takes_base(recipe.base_model) else ""
    if method.n_models is not None and len(merged) != method.n_models:
        raise ConfigError(
            f"{method.name} merges exactly {method.n_models} model(s){besides}, got "
            f"{len(merged)} ({', '.join(s.model for s in merged) or 'none'}) for {out_name!r}; "
            f"list that many under 'models' or in each slice's 'sources'"
        )
    if len(merged) < method.min_models:
        raise ConfigError(
            f"{method.name} merges at least {method.min_models} models{besides}, got {len(merged)} "
            f"for {out_name!r}; add models"
        )
    if not merged:
        raise ConfigError(f"{method.name}: no model to merge besides base_model; add models")

    def resolve(spec_name: str, model: str | None, source: SliceSource | None) -> Any:
        # as mergekit: a model's parameters filter on its input tensor's name, global ones on the output's
        return recipe.resolve_param(
            spec_name,
            model=model,
            tensor=input_name(source) if source is not None else out_name,
            layer=layer,
            n_layers=n_layers,
            source=source,
            piece=piece,
        )

    def value(spec: Any, model: str | None, source: SliceSource | None) -> Any:
        found = resolve(spec.name, model, source)
        if found is None:
            found = spec.default
        if found is None:
            who = f" for model {model!r}" if model else ""
            raise ConfigError(
                f"{method.name}: no value of {spec.name!r}{who} applies to tensor {out_name!r}; "
                f"add a fallback entry (without 'filter') or a global value"
            )
        if spec.kind != "bool":
            spec.check(found, f"{spec.name} on {out_name}")
        return found

    model_specs = [s for s in method.params if s.scope == "model"]
    global_specs = [s for s in method.params if s.scope == "global"]
    model_params = []
    for source in merged:
        model_params.append({spec.name: value(spec, source.model, source) for spec in model_specs})
    global_params = {spec.name: value(spec, None, None) for spec in global_specs}
    return TensorJob(
        name=out_name,
        base=base,
        sources=tuple((s.model, input_name(s)) for s in merged),
        model_params=tuple(model_params),
        global_params=global_params,
    )
