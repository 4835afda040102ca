"""Reading checkpoints lazily and writing merged Hugging Face directories atomically.

`ModelReader` opens a model directory's (sharded) safetensors without loading them; a tensor is
read when asked for. `merge_to_directory` streams the merge one output tensor at a time: the
safetensors headers are written first (shapes and dtypes are known from the inputs), then each
merged tensor's bytes, so peak memory is a few tensors, not a model. Everything is written in a
temporary directory beside OUT_DIR and renamed into place at the end.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from evomerge.errors import ConfigError, ModelLoadError
from evomerge.merge import kernels
from evomerge.merge.architecture import architecture_of
from evomerge.merge.chat_templates import NAMED_TEMPLATES
from evomerge.merge.hub import resolve_model
from evomerge.merge.magnitude import DeltaStats
from evomerge.merge.plan import MergePlan, build_plan
from evomerge.recipe import MergeRecipe

SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
TORCH_DTYPES = {code: dtype for dtype, code in SAFETENSORS_DTYPES.items()}
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "consolidated.pt")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)
DEFAULT_SHARD_BYTES = 2 * 1024**3
Entry = tuple[str, tuple[int, ...], torch.dtype]  # (tensor name, shape, dtype) of an output tensor


class ModelReader:
    """Lazy access to one model directory's weights (safetensors; pickles only when allowed); a hub
    id (`org/name[@revision]`) is read from the local Hugging Face cache."""

    def __init__(self, path: str | Path, allow_pickle: bool = False) -> None:
        self.path = resolve_model(path)
        if not self.path.is_dir():
            raise ModelLoadError(f"model directory {str(self.path)!r} does not exist; check the path")
        config_file = self.path / "config.json"
        if not config_file.is_file():
            raise ModelLoadError(
                f"{str(self.path)!r} has no config.json; point to a Hugging Face model directory"
            )
        try:
            config = json.loads(config_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ModelLoadError(
                f"{str(config_file)!r} is not valid JSON ({error}); restore the model's config.json"
            ) from None
        if not isinstance(config, dict):
            raise ModelLoadError(
                f"{str(config_file)!r} holds a JSON {type(config).__name__}, not an object; "
                "restore the model's config.json"
            )
        self.config: dict[str, Any] = config
        self.architecture = architecture_of(config, config_file)  # an unknown model_type: one line
        self._files: dict[str, Any] = {}
        self._where: dict[str, str] = {}
        self._pickled: dict[str, torch.Tensor] | None = None
        index = self.path / "model.safetensors.index.json"
        single = self.path / "model.safetensors"
        if index.is_file():
            self._where = dict(json.loads(index.read_text())["weight_map"])
            for file in sorted(set(self._where.values())):
                self._open(file)
        elif single.is_file():
            handle = self._open(single.name)
            self._where = {name: single.name for name in handle.keys()}  # noqa: SIM118
        else:
            self._load_pickle(allow_pickle)

    def _open(self, file: str) -> Any:
        try:
            handle = safe_open(self.path / file, framework="pt", device="cpu")
        except (SafetensorError, OSError, ValueError) as error:
            raise ModelLoadError(
                f"cannot read {str(self.path / file)!r}: {error}; the file is corrupt or not safetensors, "
                f"re-download or re-save it"
            ) from None
        self._files[file] = handle
        return handle

    def _load_pickle(self, allow_pickle: bool) -> None:
        pickles = [self.path / name for name in PICKLE_FILES if (self.path / name).is_file()]
        pickles += sorted(self.path.glob("pytorch_model-*.bin"))
        if not pickles:
            raise ModelLoadError(
                f"{str(self.path)!r} holds no model.safetensors(.index.json); nothing to merge"
            )
        if not allow_pickle:
            raise ModelLoadError(
                f"{str(pickles[0])!r} is a pickle checkpoint, which can run code when loaded; convert it to "
                f"safetensors, or pass --allow-pickle to load it with torch.load(weights_only=True)"
            )
        self._pickled = {}
        for file in pickles:
            if file.suffix == ".json":
                continue
            try:
                self._pickled.update(torch.load(file, map_location="cpu", weights_only=True))
            except Exception as error:  # torch raises many types for bad pickles
                raise ModelLoadError(f"cannot load {str(file)!r} with weights_only=True: {error}") from None
        self._where = {name: "" for name in self._pickled}

    @property
    def tensor_names(self) -> list[str]:
        return list(self._where)

    @property
    def num_layers(self) -> int:
        return self.architecture.num_layers(self.config, str(self.path / "config.json"))

    def has(self, name: str) -> bool:
        return name in self._where

    def _check(self, name: str) -> None:
        if name not in self._where:
            raise ModelLoadError(
                f"tensor {name!r} is missing from {str(self.path)!r}; the models must share one architecture"
            )

    def shape(self, name: str) -> tuple[int, ...]:
        self._check(name)
        if self._pickled is not None:
            return tuple(self._pickled[name].shape)
        return tuple(self._files[self._where[name]].get_slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        self._check(name)
        if self._pickled is not None:
            return self._pickled[name].dtype
        return TORCH_DTYPES[self._files[self._where[name]].get_slice(name).get_dtype()]

    def get(self, name: str) -> torch.Tensor:
        self._check(name)
        if self._pickled is not None:
            return self._pickled[name]
        return self._files[self._where[name]].get_tensor(name)


def open_models(recipe: MergeRecipe, allow_pickle: bool = False) -> dict[str, ModelReader]:
    """One reader per referenced model, checked for a common architecture and vocabulary."""
    readers = {path: ModelReader(path, allow_pickle) for path in recipe.model_paths()}
    check_compatible(readers)
    return readers


def check_compatible(readers: dict[str, ModelReader]) -> None:
    items = list(readers.items())
    ref_path, ref = items[0]
    for path, reader in items[1:]:
        for key in ("model_type", "architectures", "hidden_size"):
            if reader.config.get(key) != ref.config.get(key):
                raise ModelLoadError(
                    f"{path!r} has {key}={reader.config.get(key)!r} but {ref_path!r} has "
                    f"{ref.config.get(key)!r}; merge models of one architecture"
                )
        if reader.config.get("vocab_size") != ref.config.get("vocab_size"):
            raise ModelLoadError(
                f"vocabulary sizes differ: {path!r} has {reader.config.get('vocab_size')}, {ref_path!r} has "
                f"{ref.config.get('vocab_size')}; merge models that share a tokenizer and vocabulary "
                f"(tokenizer_source picks the tokenizer files the merge ships; it does not resize embeddings)"
            )


def plan_for(recipe: MergeRecipe, readers: dict[str, ModelReader]) -> MergePlan:
    """The merge plan, after checking every input tensor exists with the reference shape."""
    reference = readers[recipe.model_paths()[0]]
    counts = {p: r.num_layers for p, r in readers.items()}
    plan = build_plan(recipe, reference.tensor_names, counts, reference.architecture)
    for job in plan.jobs:
        wanted = [job.base] if job.base else []
        wanted += list(job.sources)
        shapes = {(model, name): readers[model].shape(name) for model, name in wanted}
        if len(set(shapes.values())) > 1:
            detail = ", ".join(f"{m}:{n} {list(s)}" for (m, n), s in shapes.items())
            raise ModelLoadError(
                f"tensor shapes differ for {job.name!r} ({detail}); merge models of one architecture and size"
            )
    return plan


def fetch(readers: dict[str, ModelReader], device: torch.device | str) -> Any:
    """A tensor loader for a plan: each tensor on `device` in its storage dtype (the kernels upcast)."""

    def tensor(model: str, name: str) -> torch.Tensor:
        return readers[model].get(name).to(device)

    return tensor


class ShardWriter:
    """Writes safetensors shards whose layout is fixed up front, then tensor by tensor."""

    def __init__(
        self, directory: Path, layout: list[tuple[str, tuple[int, ...], torch.dtype]], max_bytes: int
    ):
        self.directory = directory
        shards: list[list[Entry]] = [[]]
        size = 0
        for entry in layout:
            nbytes = _nbytes(entry[1], entry[2])
            if shards[-1] and size + nbytes > max_bytes:
                shards.append([])
                size = 0
            shards[-1].append(entry)
            size += nbytes
        count = len(shards)
        self.files = (
            ["model.safetensors"]
            if count == 1
            else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        )
        self.file_of: dict[str, str] = {}
        self._handles: dict[str, Any] = {}
        self._expected: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for file, entries in zip(self.files, shards, strict=True):
            header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
            offset = 0
            for name, shape, dtype in entries:
                end = offset + _nbytes(shape, dtype)
                header[name] = {
                    "dtype": SAFETENSORS_DTYPES[dtype],
                    "shape": list(shape),
                    "data_offsets": [offset, end],
                }
                offset = end
                self.file_of[name] = file
                self._expected[name] = (shape, dtype)
            encoded = json.dumps(header, separators=(",", ":")).encode()
            encoded += b" " * (-len(encoded) % 8)  # align the data section to 8 bytes
            handle = open(directory / file, "wb")  # noqa: SIM115 - closed in close()
            handle.write(struct.pack("<Q", len(encoded)) + encoded)
            self._handles[file] = handle
        self.total_bytes = sum(_nbytes(s, d) for _, s, d in layout)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Tensors must arrive in layout order (the order they were declared)."""
        shape, dtype = self._expected[name]
        data = tensor.detach().to("cpu", dtype).contiguous()
        if tuple(data.shape) != shape:
            raise ModelLoadError(
                f"merged tensor {name!r} has shape {list(data.shape)}, expected {list(shape)}"
            )
        self._handles[self.file_of[name]].write(data.view(torch.uint8).numpy().tobytes())

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        if len(self.files) > 1:
            index = {
                "metadata": {"total_size": self.total_bytes},
                "weight_map": dict(sorted(self.file_of.items())),
            }
            (self.directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    count = 1
    for size in shape:
        count *= size
    return count * torch.empty((), dtype=dtype).element_size()


@contextmanager
def atomic_directory(out_dir: Path, force: bool) -> Iterator[Path]:
    """A temporary directory beside `out_dir`: on success it replaces `out_dir`, on error it is removed."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise ConfigError(f"output directory {str(out_dir)!r} already exists; choose another or pass --force")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    except OSError as error:
        raise ConfigError(
            f"cannot write the model to {str(out_dir)!r} ({error.strerror}); choose a writable directory"
        ) from None
    try:
        yield staging
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            old.rmdir()
            out_dir.rename(old)
            staging.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out_dir)
    except OSError as error:  # a full disk, a quota, a vanished directory: nothing half-written stays
        shutil.rmtree(staging, ignore_errors=True)
        raise ConfigError(
            f"writing the model to {str(out_dir)!r} failed ({error.strerror}); nothing was written"
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def output_dtype(recipe: MergeRecipe, stored: torch.dtype) -> torch.dtype:
    """The written dtype: out_dtype, else the compute dtype, else the checkpoint's (as mergekit)."""
    wanted = recipe.out_dtype or recipe.dtype
    if not stored.is_floating_point or wanted is None:
        return stored
    return getattr(torch, wanted)


def _vocabulary(directory: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory).get_vocab()
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"cannot load the tokenizer of {str(directory)!r} ({error}); give it tokenizer files or use "
            f"tokenizer_source 'base'"
        ) from None


def tokenizer_dir(recipe: MergeRecipe) -> Path:
    """Where the merged model's tokenizer comes from: the base; 'union' or another model only where
    its vocabulary equals the base's (mergekit re-maps embedding rows otherwise; we do not)."""
    source = recipe.tokenizer_from
    base = resolve_model(recipe.model_paths()[0])
    if source == "base":
        return base
    if source == "union":
        donors = [resolve_model(path) for path in recipe.model_paths()[1:]]
    else:
        directory = resolve_model(source)  # a path, or a hub id in the local cache
        if not directory.is_dir():
            raise ConfigError(
                f"tokenizer_source {source!r} is not a directory; use 'base', 'union', a model directory "
                f"or a hub id"
            )
        donors = [directory]
    vocabulary = _vocabulary(base)
    for donor in donors:
        if _vocabulary(donor) != vocabulary:
            raise ConfigError(
                f"tokenizer_source {source!r}: {str(donor)!r} has a vocabulary other than the base's, "
                f"which needs new embedding rows; use tokenizer_source 'base' or models of one vocabulary"
            )
    return base if source == "union" else donors[0]


def _chat_template(recipe: MergeRecipe) -> str | None:
    """The recipe's template: its text, or for 'auto' the input models' most common one."""
    if recipe.chat_template != "auto":
        return NAMED_TEMPLATES.get(recipe.chat_template, recipe.chat_template)  # a name, or the text
    from transformers import AutoTokenizer

    templates = []
    for path in recipe.model_paths():
        try:
            template = AutoTokenizer.from_pretrained(resolve_model(path)).chat_template
        except (OSError, ValueError):
            continue  # a model without a tokenizer has no vote, as in mergekit
        if isinstance(template, dict):
            template = template.get("default")
        if template:
            templates.append(template.strip())
    return Counter(templates).most_common(1)[0][0] if templates else None


def _write_tokenizer(recipe: MergeRecipe, source: Path, directory: Path) -> None:
    """Copy the tokenizer files; with a chat template, save the tokenizer again carrying it."""
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, directory / name)
    template = _chat_template(recipe) if recipe.chat_template else None
    if template is None:
        return
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(directory)


def merge_to_directory(
    recipe: MergeRecipe,
    out_dir: str | Path,
    *,
    device: str = "cpu",
    force: bool = False,
    allow_pickle: bool = False,
    progress: bool = True,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    compile: bool | None = None,
) -> Path:
    """Materialize `recipe` as a complete Hugging Face model directory at `out_dir`; `compile`
    None compiles the kernels only where it pays for one merge (`kernels.compile_pays`)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise ConfigError(f"output directory {str(out_dir)!r} already exists; choose another or pass --force")
    readers = open_models(recipe, allow_pickle)
    plan = plan_for(recipe, readers)
    reference = readers[recipe.model_paths()[0]]
    tokenizer_source = tokenizer_dir(recipe)
    layout = []
    for job in plan.jobs:
        model, name = job.base or job.sources[0]
        layout.append(
            (job.name, readers[model].shape(name), output_dtype(recipe, readers[model].dtype(name)))
        )
    tensor = fetch(readers, device)
    out_dtypes = {name: dtype for name, _, dtype in layout}
    if compile is None:
        merged = sum(math.prod(readers[m].shape(n)) for job in plan.jobs for m, n in job.sources)
        compile = kernels.compile_pays(merged)

    def fresh_stats(
        model: str, name: str, value: torch.Tensor, base: torch.Tensor, compute: Any
    ) -> DeltaStats:
        return DeltaStats(value, base, compute, label=f"{Path(model).name}: {name}")

    with atomic_directory(out_dir, force) as staging:
        writer = ShardWriter(staging, layout, max_shard_bytes)
        try:
            from evomerge.progress import progress_bar

            with progress_bar(disable=not progress) as bar, torch.no_grad(), kernels.compiling(compile):
                task = bar.add_task("merge", total=len(plan.jobs), info="tensors")
                for job in plan.jobs:
                    inputs = plan.inputs(job, tensor, fresh_stats)
                    inputs.out_dtype = out_dtypes[job.name]  # written by the kernel, as in memory
                    writer.write(job.name, plan.method.merge(inputs))
                    bar.advance(task)
        finally:
            writer.close()
        _write_config(reference, plan.num_layers, recipe, staging, layout)
        for name in ("generation_config.json",):
            if (reference.path / name).is_file():
                shutil.copy2(reference.path / name, staging / name)
        _write_tokenizer(recipe, tokenizer_source, staging)
        (staging / "mergekit_config.yml").write_text(recipe.to_yaml())
    return out_dir


def _write_config(
    reference: ModelReader,
    num_layers: int,
    recipe: MergeRecipe,
    directory: Path,
    layout: list[Entry],
) -> None:
    config = reference.architecture.with_num_layers(reference.config, num_layers)
    floating = [dtype for _, _, dtype in layout if dtype.is_floating_point]
    if floating:
        key = "dtype" if "dtype" in config else "torch_dtype"
        config[key] = str(floating[0]).removeprefix("torch.")
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
