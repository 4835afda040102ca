"""Architectures: which tensors of a checkpoint are its embeddings, its layers and the rest (final
norm, head), how its layers are numbered, and where its config keeps their count.

A checkpoint's architecture is its config's `model_type`, looked up here; a model type that is
not listed is refused in one line (merging one we do not know could put its tensors in the wrong
place silently). Layer tensors are the ones a slice renumbers and a gradient reads at the layer's
position; every other tensor is merged as itself, the embeddings from the first slice's sources
and the rest from the last slice's (as mergekit 0.1.5's pre- and post-weights).

A multimodal model (llava-style: a vision tower, a projector and a language model) has several
modules, each with its own layers: a layer parameter (a gradient) is read at the layer's position
in its own module, as mergekit 0.1.5 reads it; slices, which mergekit refuses there without its
`modules:` syntax, are refused. Its language model's layers are the layer sequence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evomerge.errors import ModelLoadError


@dataclass(frozen=True)
class Architecture:
    name: str
    model_types: tuple[str, ...]
    count_key: str  # where config.json keeps the layer count (dotted: "text_config.num_hidden_layers")
    layer: re.Pattern[str]  # a layer tensor's name: (?P<head>...)(?P<index>\d+)(?P<tail>\..+)
    pre: tuple[str, ...]  # name fragments of the tensors that come before the layers
    # other modules' layers (a vision tower's): merged as themselves, each read at its position
    # in its own module (the module's layer count: the indices its tensors carry)
    modules: tuple[re.Pattern[str], ...] = ()

    def split(self, name: str) -> tuple[str, int, str] | None:
        """(head, layer index, tail) of a layer tensor; None for any other tensor."""
        match = self.layer.match(name)
        return (match["head"], int(match["index"]), match["tail"]) if match else None

    def is_pre(self, name: str) -> bool:
        return any(fragment in name for fragment in self.pre)

    def module_positions(self, tensor_names: list[str]) -> dict[str, tuple[int, int]]:
        """(layer, the module's layer count) of every tensor of another module's layers."""
        positions: dict[str, tuple[int, int]] = {}
        for pattern in self.modules:
            found = {name: int(m["index"]) for name in tensor_names if (m := pattern.match(name))}
            count = len(set(found.values()))
            positions.update({name: (index, count) for name, index in found.items()})
        return positions

    def num_layers(self, config: Mapping[str, Any], where: str = "config.json") -> int:
        node: Any = config
        for key in self.count_key.split("."):
            node = node.get(key) if isinstance(node, Mapping) else None
        if not isinstance(node, int):
            raise ModelLoadError(
                f"{where} (model_type {config.get('model_type')!r}) has no integer {self.count_key!r}; "
                "restore the model's config.json"
            )
        return node

    def with_num_layers(self, config: Mapping[str, Any], count: int) -> dict[str, Any]:
        """A copy of `config` with the layer count set (a merge whose slices change it)."""
        out = dict(config)
        node = out
        *parents, last = self.count_key.split(".")
        for key in parents:
            node[key] = dict(node[key])
            node = node[key]
        node[last] = count
        return out


def _layers(head: str) -> re.Pattern[str]:
    return re.compile(rf"^(?P<head>{head})(?P<index>\d+)(?P<tail>\..+)$")


ARCHITECTURES = (
    Architecture(
        "decoder",
        (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen2_moe",
            "qwen3",
            "qwen3_moe",
            "gemma",
            "gemma2",
            "gemma3_text",
            "phi3",
            "olmo",
            "olmo2",
            "granite",
            "cohere",
            "cohere2",
            "starcoder2",
            "stablelm",
            "smollm3",
        ),  # fmt: skip
        "num_hidden_layers",
        _layers(r"(?:model\.)?layers\."),
        ("embed_tokens",),
    ),
    Architecture(
        "gpt-neox", ("gpt_neox",), "num_hidden_layers", _layers(r"(?:gpt_neox\.)?layers\."), ("embed_in",)
    ),
    Architecture("gpt2", ("gpt2",), "n_layer", _layers(r"(?:transformer\.)?h\."), ("wte", "wpe")),
    Architecture(
        "llava",
        ("llava",),
        "text_config.num_hidden_layers",
        _layers(r"(?:model\.)?language_model\.(?:model\.)?layers\."),
        ("embed_tokens", "vision_tower", "multi_modal_projector"),
        (_layers(r"(?:model\.)?vision_tower\.(?:vision_model\.)?encoder\.layers\."),),
    ),
)
_BY_TYPE = {model_type: arch for arch in ARCHITECTURES for model_type in arch.model_types}


def architecture_of(config: Mapping[str, Any], where: str | Path = "config.json") -> Architecture:
    """The architecture of a checkpoint's config; an unknown model_type is refused in one line."""
    model_type = config.get("model_type")
    if model_type in _BY_TYPE:
        return _BY_TYPE[str(model_type)]
    known = ", ".join(sorted(_BY_TYPE))
    raise ModelLoadError(
        f"{where}: model_type {model_type!r} is not an architecture evomerge knows (it knows {known}); "
        "merge models of one of those types"
    )
