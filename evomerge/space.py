"""SearchSpace: a point of the unit cube <-> a merge recipe (mergekit YAML), declared in YAML.

    base: models/base                 # paths relative to the space file
    parents: [models/parent_0, models/parent_1]
    method: ties                      # any registered merge method
    granularity: layer                # global | layer | group (with group_size: k)
    filters: [self_attn, mlp]         # optional: separate genes per filter (+ one set for the rest)
    search:                           # searched parameters: bounds, or {} for the method's defaults
      weight: {low: 0.0, high: 1.0}
      density: {}
    fixed: {normalize: true}          # everything else: fixed here, or the method's default

The genes are the method's declared parameters (merge/catalog.py: `CATALOG[method].params`): one
per parent for per-model parameters, one per filter group and per layer group. A gene g in [0, 1]
maps linearly to low + g (high - low); the bounds policy is to clip genes into [0, 1] (decode) and values into
the bounds (encode). Per-layer values are written as mergekit per-layer lists (one entry per layer,
so every layer reads its own value exactly; groups repeat their value).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evomerge.demo import DemoFamily
from evomerge.errors import ConfigError
from evomerge.merge.architecture import architecture_of
from evomerge.merge.catalog import CATALOG
from evomerge.merge.hub import is_hub_id, resolve_model
from evomerge.recipe import mergekit_ref
from evomerge.yamltext import parse_yaml

OTHER = "__other__"  # the filter group of tensors no filter names (norms, embeddings)


class Bounds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    low: float | None = None
    high: float | None = None


class SpaceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = "space"
    base: str | None = None
    parents: list[str] = Field(default_factory=list)
    demo_family: DemoFamily | None = None  # DEMO ONLY: tiny random models built on first use
    method: str
    granularity: Literal["global", "layer", "group"] = "layer"
    group_size: int = Field(default=1, ge=1)
    filters: list[str] = Field(default_factory=list)
    search: dict[str, Bounds] = Field(min_length=1)
    fixed: dict[str, float | bool] = Field(default_factory=dict)
    num_layers: int | None = Field(default=None, ge=1)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    seed: int = 0


@dataclass(frozen=True)
class Gene:
    param: str
    model: str | None  # the parent path for per-model parameters
    filter: str | None
    group: int  # index of the layer group (0 for global granularity)
    low: float
    high: float

    def name(self, parent_names: dict[str, str]) -> str:
        where = f"[{parent_names[self.model]}]" if self.model else ""
        part = f".{self.filter}" if self.filter else ""
        return f"{self.param}{where}{part}.g{self.group}"


class SearchSpace:
    def __init__(self, spec: SpaceSpec, root: Path = Path("."), source: str = "<dict>") -> None:
        self.spec = spec
        self.source = source
        self.method = CATALOG.get(spec.method)

        def resolve(path: str) -> str:  # relative to the space file; ~ and $VARS expanded
            expanded = os.path.expandvars(os.path.expanduser(path))
            local = root / expanded
            if not local.exists() and is_hub_id(expanded):
                return expanded  # a hub id, kept as written (as recipes keep it)
            return str(local.resolve())

        self.base = resolve(spec.base) if spec.base else None
        self.parents = [resolve(p) for p in spec.parents]
        if spec.demo_family is not None:
            if spec.base or spec.parents:
                raise ConfigError(f"{source}: give either 'demo_family' or 'base'/'parents', not both")
            base, parents = spec.demo_family.ensure()
            self.base, self.parents = str(base), [str(p) for p in parents]
        if not self.parents:
            raise ConfigError(f"{source}: 'parents' is empty; list the fine-tuned models to merge")
        if self.method.needs_base and self.base is None:
            raise ConfigError(
                f"{source}: method {spec.method!r} needs 'base'; add the model the parents share"
            )
        if self.method.n_models is not None and len(self.parents) != self.method.n_models:
            raise ConfigError(
                f"{source}: method {spec.method!r} merges {self.method.n_models} parent(s) with the base, "
                f"got {len(self.parents)} under 'parents'"
            )
        self.num_layers = spec.num_layers or self._read_num_layers()
        size = 1 if spec.granularity == "layer" else spec.group_size
        self.n_groups = 1 if spec.granularity == "global" else -(-self.num_layers // size)
        self._group_size = size
        self.filter_groups: list[str | None] = [*spec.filters, OTHER] if spec.filters else [None]
        self.genes = self._make_genes()
        self.parent_names = {p: Path(p).name for p in self.parents}
        self.gene_names = [g.name(self.parent_names) for g in self.genes]

    @property
    def _recipe_names_base(self) -> bool:
        """Whether the candidates' recipes name the base: as the origin of task vectors, as an end
        point, or as one more merged model (karcher). mergekit merges a base_model named in a linear
        recipe as one more model, which would need its own weight; a linear space's base is only the
        family's reference, so its recipes leave it out."""
        if self.base is None:
            return False
        if self.method.takes_base(self.base) or self._base_is_end_point:
            return True
        per_model = [spec for spec in self.method.params if spec.scope == "model"]
        return self.method.includes_base and all(spec.default is not None for spec in per_model)

    @property
    def _base_is_end_point(self) -> bool:
        """Methods of a fixed model count that need a base merge it with the parents as one of
        their models (mergekit lists it under `models`); nuslerp's optional base is no end point."""
        return self.base is not None and self.method.n_models is not None and self.method.needs_base

    # ----- construction ----------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"search space {str(path)!r} does not exist; pass a YAML file under search_spaces/"
            )
        data = parse_yaml(path.read_text(), f"search space {str(path)!r}")
        return cls.from_dict(data, root=path.parent, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, root: Path = Path("."), source: str = "<dict>") -> SearchSpace:
        if not isinstance(data, dict):
            raise ConfigError(f"search space {source}: expected a mapping, got {type(data).__name__}")
        try:
            spec = SpaceSpec.model_validate(data)
        except ValidationError as error:
            details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise ConfigError(f"search space {source}: {details}") from None
        return cls(spec, root, source)

    def _read_num_layers(self) -> int:
        config = resolve_model(self.base or self.parents[0]) / "config.json"  # a missing id: one line
        try:
            data = json.loads(config.read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(
                f"{self.source}: cannot read {config} ({error}); check the model paths or set 'num_layers'"
            ) from None
        return architecture_of(data, config).num_layers(data, str(config))

    def _make_genes(self) -> list[Gene]:
        specs = {p.name: p for p in self.method.params}
        for name in [*self.spec.search, *self.spec.fixed]:
            if name not in specs:
                raise ConfigError(
                    f"{self.source}: {name!r} is not a parameter of {self.method.name!r}; "
                    f"its parameters: {', '.join(specs)}"
                )
        for name in set(self.spec.search) & set(self.spec.fixed):
            raise ConfigError(f"{self.source}: {name!r} is both searched and fixed; keep one")
        for spec in self.method.params:
            if (
                spec.name not in self.spec.search
                and spec.name not in self.spec.fixed
                and spec.default is None
            ):
                raise ConfigError(
                    f"{self.source}: {self.method.name!r} needs {spec.name!r}; search it or fix it"
                )
        for name, value in self.spec.fixed.items():
            specs[name].check(value, f"{self.source}: fixed")
        genes: list[Gene] = []
        for name, bounds in self.spec.search.items():
            spec = specs[name]
            if spec.kind != "float":
                raise ConfigError(
                    f"{self.source}: search.{name}: a {spec.kind} parameter cannot be searched; fix it"
                )
            low = spec.search_low if bounds.low is None else bounds.low
            high = spec.search_high if bounds.high is None else bounds.high
            if low is None or high is None or not low < high:
                raise ConfigError(
                    f"{self.source}: search.{name}: bounds [{low}, {high}] need low < high; set both"
                )
            if (spec.low is not None and low < spec.low) or (spec.high is not None and high > spec.high):
                raise ConfigError(
                    f"{self.source}: search.{name}: bounds [{low}, {high}] leave {name!r}'s valid range "
                    f"[{spec.low}, {spec.high}]"
                )
            models: list[str | None] = list(self.parents) if spec.scope == "model" else [None]
            for model in models:
                for flt in self.filter_groups:
                    genes.extend(Gene(name, model, flt, g, low, high) for g in range(self.n_groups))
        return genes

    @property
    def dim(self) -> int:
        return len(self.genes)

    # ----- decode / encode -------------------------------------------------------------------
    def _layer_values(self, group_values: Sequence[float]) -> float | list[float]:
        if self.spec.granularity == "global":
            return group_values[0]
        return [group_values[layer // self._group_size] for layer in range(self.num_layers)]

    def decode_dict(self, genome: Sequence[float]) -> dict[str, Any]:
        """The mergekit recipe (a dict) of a point of the cube; genes are clipped into [0, 1]."""
        g = np.clip(np.asarray(genome, dtype=float), 0.0, 1.0)
        if g.shape != (self.dim,):
            raise ConfigError(f"genome has {g.size} genes; space {self.spec.name!r} has {self.dim}")
        values: dict[tuple[str, str | None, str | None], list[float]] = {}
        for gene, x in zip(self.genes, g, strict=True):
            value = round(float(gene.low + x * (gene.high - gene.low)), 6)
            values.setdefault((gene.param, gene.model, gene.filter), []).append(value)

        def param_value(param: str, model: str | None) -> Any:
            per_filter = [(f, self._layer_values(values[(param, model, f)])) for f in self.filter_groups]
            if per_filter[0][0] is None:
                return per_filter[0][1]
            return [{"filter": f, "value": v} if f != OTHER else {"value": v} for f, v in per_filter]

        model_params: dict[str, dict[str, Any]] = {p: {} for p in self.parents}
        global_params: dict[str, Any] = {}
        for spec in self.method.params:
            if spec.name in self.spec.search:
                if spec.scope == "model":
                    for p in self.parents:
                        model_params[p][spec.name] = param_value(spec.name, p)
                else:
                    global_params[spec.name] = param_value(spec.name, None)
            elif spec.name in self.spec.fixed:
                global_params[spec.name] = self.spec.fixed[spec.name]
        models = [{"model": mergekit_ref(p), "parameters": model_params[p]} for p in self.parents]
        if self._base_is_end_point:  # slerp, nearswap, arcee_fusion: the base is the other model
            models.insert(0, {"model": mergekit_ref(self.base)})
        recipe: dict[str, Any] = {
            "merge_method": self.method.name,
            "models": models,
            "dtype": self.spec.dtype,
        }
        if self._recipe_names_base:
            recipe["base_model"] = mergekit_ref(self.base)
        if global_params:
            recipe["parameters"] = global_params
        if self.method.random:
            recipe["seed"] = self.spec.seed
        return recipe

    def decode(self, genome: Sequence[float]) -> Any:
        return self.decode_recipe(self.decode_dict(genome))

    @staticmethod
    def decode_recipe(recipe: dict[str, Any]) -> Any:
        """A recipe dict as a validated MergeRecipe."""
        from evomerge.recipe import MergeRecipe

        return MergeRecipe.from_dict(recipe)

    def encode(self, recipe: Any) -> list[float]:
        """The point of a recipe of this space's method (values clipped into the search bounds)."""
        if recipe.merge_method != self.method.name:
            raise ConfigError(
                f"encode: recipe uses {recipe.merge_method!r}; "
                f"space {self.spec.name!r} searches {self.method.name!r}"
            )
        genome = []
        for gene in self.genes:
            layer = 0 if self.spec.granularity == "global" else gene.group * self._group_size
            flt = OTHER if gene.filter in (None, OTHER) else gene.filter
            tensor = f"model.layers.{layer}.{flt}.weight"
            value = recipe.resolve_param(
                gene.param, model=gene.model, tensor=tensor, layer=layer, n_layers=self.num_layers
            )
            if value is None:
                raise ConfigError(f"encode: the recipe sets no {gene.name(self.parent_names)}")
            genome.append(float(np.clip((float(value) - gene.low) / (gene.high - gene.low), 0.0, 1.0)))
        return genome

    def uniform_genome(self) -> list[float]:
        """The space's own uniform merge: every parent weighted 1/n, t = 0.5, every other searched
        parameter at the method's default (the middle of its bounds where it has none); values
        outside the searched bounds are clipped into them."""
        defaults = {p.name: p.default for p in self.method.params}
        genome = []
        for gene in self.genes:
            if gene.param == "weight":
                value = 1.0 / len(self.parents)
            elif gene.param == "t" or not isinstance(defaults.get(gene.param), float):
                value = (gene.low + gene.high) / 2
            else:
                value = float(defaults[gene.param])
            genome.append(float(np.clip((value - gene.low) / (gene.high - gene.low), 0.0, 1.0)))
        return genome

    def try_encode(self, recipe: Any) -> list[float] | None:
        """The point of `recipe` when it is one of this space (its genes decode back to the very
        same parameters on every layer, model and tensor group), else None: another method, a
        parameter the space fixes to another value, a value outside the search bounds."""
        if recipe.merge_method != self.method.name:
            return None
        try:
            genome = self.encode(recipe)
        except ConfigError:
            return None
        return genome if self._resolved(self.decode(genome)) == self._resolved(recipe) else None

    def _resolved(self, recipe: Any) -> dict[tuple[str, str | None, str, int], float | bool | None]:
        """Every parameter of the method as the engine reads it (method defaults filled in), on
        each layer, model and tensor group; floats rounded as `decode_dict` rounds them."""
        values = {}
        groups = [OTHER if f in (None, OTHER) else f for f in self.filter_groups]
        for spec in self.method.params:
            models: list[str | None] = list(self.parents) if spec.scope == "model" else [None]
            for model in models:
                for flt in groups:
                    for layer in range(self.num_layers):
                        tensor = f"model.layers.{layer}.{flt}.weight"
                        value = recipe.resolve_param(
                            spec.name, model=model, tensor=tensor, layer=layer, n_layers=self.num_layers
                        )
                        value = spec.default if value is None else value
                        if isinstance(value, float):
                            value = round(value, 6)
                        values[(spec.name, model, flt, layer)] = value
        return values

    # ----- recipes evaluated before the search -----------------------------------------------
    def parent_recipes(self) -> list[tuple[str, dict[str, Any]]]:
        """Each parent alone (a linear merge of one model), labelled by its directory name."""
        return [
            (
                self.parent_names[p],
                {
                    "merge_method": "linear",
                    "models": [{"model": mergekit_ref(p), "parameters": {"weight": 1.0}}],
                    "dtype": self.spec.dtype,
                },
            )
            for p in self.parents
        ]

    def baseline_recipe(self) -> tuple[str, dict[str, Any]]:
        """Uniform task arithmetic (every parent weighted 1/n); for two-point methods, t = 0.5."""
        if self.method.n_models is not None:
            recipe = self.decode_dict([0.5] * self.dim)
            if any(spec.name == "t" for spec in self.method.params):
                recipe["parameters"] = {**recipe.get("parameters", {}), "t": 0.5}
            return f"uniform_{self.method.name}", recipe
        weight = round(1.0 / len(self.parents), 6)
        models = [{"model": mergekit_ref(p), "parameters": {"weight": weight}} for p in self.parents]
        if self.base is None:  # no shared base: the uniform average of the parents
            return "linear", {**self.parent_recipes()[0][1], "models": models}
        recipe = {
            "merge_method": "task_arithmetic",
            "base_model": mergekit_ref(self.base),
            "models": models,
            "dtype": self.spec.dtype,
        }
        return "task_arithmetic", recipe

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.spec.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
