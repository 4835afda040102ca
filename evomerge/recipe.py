"""MergeRecipe: the validated, frozen subset of mergekit's YAML merge configuration.

Supported keys: `models` (each `model` + `parameters`), or `slices` (each with `sources`:
`model`, `layer_range`, `parameters`), `base_model`, `merge_method`, global `parameters`,
`dtype` (compute), `out_dtype` (written), `tokenizer_source` ('base', 'union' or a model),
`tokenizer` (its `source` only), `chat_template` and `seed` (for the random methods; mergekit
ignores it). Parameters mergekit accepts without effect (`IGNORED_PARAMS`) pass validation
and change nothing.
A parameter value is a scalar, a per-layer list (interpolated linearly across the layers,
mergekit's "gradient") or a list of `{filter, value}` entries (first entry whose filter is a
substring of the tensor name wins; an entry without filter is the fallback).

Precedence (as in mergekit): slice-source parameters > `models[]` parameters > global
parameters. `resolve_param` is the one place this is decided.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from evomerge.errors import ConfigError
from evomerge.merge.catalog import CATALOG
from evomerge.yamltext import parse_yaml

Scalar = StrictBool | float
_MERGEKIT_FORM = "mergekit_form"  # validation context: the data is a recipe as mergekit reads it


def _read_ref(value: Any, info: ValidationInfo) -> Any:
    """A model reference as mergekit reads it: a string (`A+B` is model A with LoRA B, `A@R`
    revision R of A), or its structured form `{model: {path, revision}, lora, ...}`, which reads a
    path that holds `+` or `@` as itself. LoRA adapters are refused: evomerge merges no adapters.
    Strings are checked only in a recipe read from its mergekit form (`from_dict`): inside, a
    path is a path."""
    if isinstance(value, str) and (info.context or {}).get(_MERGEKIT_FORM):
        if "+" in value:
            raise ValueError(
                f"{value!r}: mergekit reads 'A+B' as model A with LoRA adapter B; for a path that holds "
                f"'+', write it as {{model: {{path: {value!r}}}}}, or merge the adapter into its model first"
            )
        if "@" in value and Path(value).exists():
            raise ValueError(
                f"{value!r}: mergekit reads 'A@R' as revision R of A; for a path that holds '@', write it "
                f"as {{model: {{path: {value!r}}}}}"
            )
        return value
    if not isinstance(value, dict):
        return value  # pydantic names the wrong type
    unknown = set(value) - {"model", "lora", "override_architecture"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} of a model reference; give model (and only it)")
    for key, what in (("lora", "LoRA adapter"), ("override_architecture", "override_architecture")):
        if value.get(key) is not None:
            raise ValueError(
                f"{what} {value[key]!r} is not supported; merge it into its model first and name the result"
            )
    model = value.get("model")
    if isinstance(model, dict):
        if set(model) - {"path", "revision"} or not isinstance(model.get("path"), str):
            raise ValueError(f"model {model!r}: give {{path: PATH}} and optionally revision")
        revision = model.get("revision")
        return f"{model['path']}@{revision}" if revision else model["path"]
    return model


def mergekit_ref(path: str) -> str | dict[str, Any]:
    """How a recipe names `path` so that mergekit reads the same model: the structured form where a
    plain string would be split (a `+`, or an `@` inside a local path), else the path itself."""
    if "+" in path or ("@" in path and Path(path).exists()):
        return {"model": {"path": path}}
    return path


# A model named in a recipe: the path (or hub id) as a string inside, mergekit's form when written.
ModelRef = Annotated[str, BeforeValidator(_read_ref), PlainSerializer(mergekit_ref, when_used="json")]
Gradient = list[float]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FilterEntry(_Frozen):
    filter: str | None = None
    value: Scalar | Gradient


ParamValue = Scalar | Gradient | list[FilterEntry]
Params = dict[str, ParamValue]


class ModelEntry(_Frozen):
    model: ModelRef
    parameters: Params = Field(default_factory=dict)


class SliceSource(_Frozen):
    model: ModelRef
    layer_range: tuple[int, int]
    parameters: Params = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ordered_range(self) -> SliceSource:
        start, end = self.layer_range
        if not 0 <= start < end:
            raise ValueError(
                f"layer_range {list(self.layer_range)} of {self.model!r} must satisfy 0 <= start < end"
            )
        return self


class Slice(_Frozen):
    sources: list[SliceSource]
    parameters: Params = Field(default_factory=dict)  # below its sources', above the global ones

    @model_validator(mode="after")
    def _same_lengths(self) -> Slice:
        if not self.sources:
            raise ValueError("a slice needs at least one entry under 'sources'")
        lengths = {s.layer_range[1] - s.layer_range[0] for s in self.sources}
        if len(lengths) > 1:
            raise ValueError(
                f"the sources of a slice must span the same number of layers, got {sorted(lengths)}"
            )
        return self

    @property
    def num_layers(self) -> int:
        start, end = self.sources[0].layer_range
        return end - start


def _leaf_values(value: ParamValue) -> list[float | bool]:
    """Every scalar a parameter value can take (for range checks)."""
    if isinstance(value, bool | float | int):
        return [value]
    leaves: list[float | bool] = []
    for item in value:
        leaves.extend(_leaf_values(item.value) if isinstance(item, FilterEntry) else [item])
    return leaves


def _interpolate(values: list[float], t: float) -> float:
    """mergekit's gradient: a list spread evenly over [0, 1], read at t by linear interpolation."""
    scaled = t * (len(values) - 1)
    low = math.floor(scaled)
    high = min(low + 1, len(values) - 1)
    frac = scaled - low
    return (1 - frac) * values[low] + frac * values[high]


def evaluate_value(value: ParamValue, tensor: str, t: float) -> float | bool | None:
    """The value of one parameter setting for `tensor` at layer position t in [0, 1]."""
    if isinstance(value, bool | float | int):
        return value
    if value and isinstance(value[0], FilterEntry):
        for entry in value:
            if entry.filter is None or entry.filter == "*" or entry.filter in tensor:  # "*": mergekit's any
                return evaluate_value(entry.value, tensor, t)
        return None
    return _interpolate(list(value), t)


def layer_position(layer: int | None, n_layers: int) -> float:
    """t in [0, 1] for layer `layer` of a slice of `n_layers`; non-layer tensors (embeddings, final
    norm, head) are read at t = 0 and the layer of a one-layer slice at t = 1, as mergekit 0.1.5
    does."""
    if layer is None:
        return 0.0
    if n_layers <= 1:
        return 1.0
    return layer / (n_layers - 1)


Dtype = Literal["float32", "float16", "bfloat16"]
# Parameters mergekit 0.1.5 accepts for a method and that change no tensor here: int8_mask only
# sets the dtype of mergekit's internal sign mask; the methods that declare no weight read none
# (mergekit's own tests give every method per-model weights); task_arithmetic reads no density.
_GTA = ("task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties")
IGNORED_PARAMS: dict[str, frozenset[str]] = {
    "int8_mask": frozenset((*_GTA, "della", "della_linear")),
    "weight": frozenset(
        ("slerp", "sce", "ram", "ramplus_tl", "model_stock", "arcee_fusion", "nearswap", "karcher")
    ),
    "density": frozenset(("task_arithmetic",)),
}


class TokenizerBlock(_Frozen):
    """mergekit's `tokenizer:` block; only `source` is supported (`tokens` and
    `pad_to_multiple_of` build new embedding rows, which evomerge does not)."""

    source: ModelRef = "union"
    tokens: dict[str, Any] | None = None
    pad_to_multiple_of: int | None = None

    @model_validator(mode="after")
    def _only_source(self) -> TokenizerBlock:
        for key in ("tokens", "pad_to_multiple_of"):
            if getattr(self, key) is not None:
                raise ValueError(
                    f"tokenizer.{key} (new or resized embedding rows) is not supported; "
                    f"remove it and merge models that share a vocabulary"
                )
        return self


class MergeRecipe(_Frozen):
    merge_method: str
    models: list[ModelEntry] | None = None
    slices: list[Slice] | None = None
    base_model: ModelRef | None = None
    parameters: Params = Field(default_factory=dict)
    dtype: Dtype | None = None
    out_dtype: Dtype | None = None
    tokenizer_source: ModelRef | None = None
    tokenizer: TokenizerBlock | None = None
    chat_template: str | None = None
    seed: int | None = None

    @model_validator(mode="after")
    def _check(self) -> MergeRecipe:
        if (self.models is None) == (self.slices is None):
            raise ValueError("give exactly one of 'models' or 'slices'")
        if self.models is not None and not self.models:
            raise ValueError("'models' is empty; list at least one model")
        if self.slices is not None and not self.slices:
            raise ValueError("'slices' is empty; list at least one slice")
        if self.tokenizer is not None and self.tokenizer_source is not None:
            raise ValueError("give 'tokenizer_source' or a 'tokenizer' block, not both")
        template = self.chat_template
        if template is not None and template != "auto" and "{" not in template:
            from evomerge.merge.chat_templates import NAMED_TEMPLATES

            if template not in NAMED_TEMPLATES:
                raise ValueError(
                    f"chat_template {template!r} is not a template evomerge ships (it ships "
                    f"{', '.join(NAMED_TEMPLATES)}); give the Jinja template text itself, or 'auto'"
                )
        _validate_parameters(self)
        return self

    @property
    def tokenizer_from(self) -> str:
        """Where the tokenizer comes from: 'base', 'union' or a model (mergekit's default: base)."""
        if self.tokenizer is not None:
            return self.tokenizer.source
        return self.tokenizer_source or "base"

    # --- construction and serialization -------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MergeRecipe:
        if not isinstance(data, dict):
            raise ConfigError(f"a recipe must be a mapping of mergekit keys, got {type(data).__name__}")
        try:
            return cls.model_validate(data, context={_MERGEKIT_FORM: True})
        except ValidationError as error:
            raise ConfigError(_describe(error)) from None

    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> MergeRecipe:
        text = str(text_or_path)
        if isinstance(text_or_path, Path) or ("\n" not in text and text.endswith((".yaml", ".yml"))):
            path = Path(text_or_path)
            if not path.is_file():
                raise ConfigError(f"recipe file {str(path)!r} does not exist; pass a mergekit YAML file")
            text = path.read_text()
        return cls.from_dict(parse_yaml(text, "recipe"))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=True) | {
            "merge_method": self.merge_method
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # --- queries ---------------------------------------------------------------------------

    def model_paths(self) -> list[str]:
        """Every model referenced, base first (if any), each once."""
        paths = [self.base_model] if self.base_model else []
        for name in self._input_models():
            if name not in paths:
                paths.append(name)
        return paths

    def _input_models(self) -> list[str]:
        if self.models is not None:
            return [m.model for m in self.models]
        names: list[str] = []
        for piece in self.slices or []:
            names.extend(s.model for s in piece.sources if s.model not in names)
        return names

    def resolve_param(
        self,
        name: str,
        *,
        model: str | None,
        tensor: str,
        layer: int | None,
        n_layers: int,
        source: SliceSource | None = None,
        piece: Slice | None = None,
    ) -> float | bool | None:
        """The value of parameter `name` for `model` on `tensor` (layer index within its slice, or
        None for embeddings/norm/head), or None when no setting applies.

        Precedence: the slice source's parameters (or the `models[]` entry), then the slice's
        `parameters`, then the globals.
        """
        t = layer_position(layer, n_layers)
        scopes: list[Params] = []
        if source is not None:
            scopes.append(source.parameters)
        if model is not None and self.models is not None:
            scopes.extend(m.parameters for m in self.models if m.model == model)
        if piece is not None:
            scopes.append(piece.parameters)
        scopes.append(self.parameters)
        for scope in scopes:
            if name in scope:
                value = evaluate_value(scope[name], tensor, t)
                if value is not None:
                    return value
        return None


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "recipe"
        message = item["msg"]
        if item["type"] == "extra_forbidden" and where == "modules":
            message = (
                "mergekit's per-module recipes (one per module of a multimodal model) are not "
                "supported; use models:, which merges every module with the same parameters"
            )
        elif item["type"] == "extra_forbidden":
            message = "unknown key (not in the supported mergekit subset; remove it)"
        parts.append(f"{where}: {message}")
    return "invalid recipe: " + "; ".join(parts)


def _validate_parameters(recipe: MergeRecipe) -> None:
    """Method known, parameter names and scopes declared by the method, values in range."""
    method = CATALOG.get(recipe.merge_method)
    specs = {spec.name: spec for spec in method.params}
    if method.needs_base and not recipe.base_model:
        raise ValueError(f"merge_method {method.name!r} needs 'base_model'; add the model the parents share")

    def check(params: Params, where: str, allowed_scope: str | None) -> None:
        for key, value in params.items():
            spec = specs.get(key)
            if spec is None and method.name in IGNORED_PARAMS.get(key, ()):
                continue
            if spec is None:
                known = ", ".join(specs) or "(none)"
                raise ValueError(f"{where}.{key}: unknown parameter of {method.name!r}; known: {known}")
            if allowed_scope is not None and spec.scope != allowed_scope:
                raise ValueError(f"{where}.{key}: {key!r} is a global parameter; move it to 'parameters'")
            for leaf in _leaf_values(value):
                spec.check(leaf, f"{where}.{key}")

    check(recipe.parameters, "parameters", None)
    for s_index, piece in enumerate(recipe.slices or []):
        check(piece.parameters, f"slices.{s_index}.parameters", None)
    # (model, its parameters, where, the parameter names set above it: its slice's and the globals)
    sources: list[tuple[str, Params, str, set[str]]] = []
    if recipe.models is not None:
        sources = [
            (m.model, m.parameters, f"models.{i}.parameters", set(recipe.parameters))
            for i, m in enumerate(recipe.models)
        ]
    for s_index, piece in enumerate(recipe.slices or []):
        above = set(piece.parameters) | set(recipe.parameters)
        for i, source in enumerate(piece.sources):
            sources.append(
                (source.model, source.parameters, f"slices.{s_index}.sources.{i}.parameters", above)
            )
    for _, params, where, _ in sources:
        check(params, where, "model")
    # A required per-model parameter must be set somewhere for every merged (non-base) model.
    for spec in method.params:
        if spec.default is not None or spec.scope != "model":
            continue
        for model, params, where, above in sources:
            if model == recipe.base_model and method.takes_base(recipe.base_model):
                continue
            if spec.name not in params and spec.name not in above:
                raise ValueError(
                    f"{where}: {method.name!r} needs {spec.name!r} for model {model!r}; "
                    f"set it there or in a 'parameters' above it (its slice's or the global one)"
                )
