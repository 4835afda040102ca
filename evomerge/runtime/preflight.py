"""What a search checks before any worker starts: its fitness, and each worker's memory.

The fitness check builds the evaluator every worker builds, on the run's evaluation plan (suite and
banks, estimator, calibration, anchors, the tokenizer the workers score with), so what would stop
every worker at its start is refused in one line before a run exists. The memory check's bytes come from the
checkpoints' safetensors headers (nothing is loaded; see `evomerge/merge/memory.py`). A local run
checks the driver's own devices; a worker on a cluster checks its device again when it starts
(LiveMerger refuses in one line before loading).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from evomerge.errors import ConfigError
from evomerge.merge.io import ModelReader, check_compatible
from evomerge.merge.memory import MemoryPlan, choose_placement, free_bytes

GPU_TOKEN_BUDGET = 16384  # padded tokens per scoring batch on a GPU (workers.token_budget overrides)


def live_dtype(name: str, device: str) -> torch.dtype | None:
    """The live model's dtype for `workers.dtype`; None keeps the checkpoint's (auto on a CPU)."""
    if name != "auto":
        return getattr(torch, name)
    return torch.bfloat16 if device.startswith("cuda") else None


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bfloat16 arithmetic units (AVX512-BF16 or AMX): without them torch
    emulates bfloat16 matrix products, several times slower than float32 (SmolLM2-135M, 16 x 200
    tokens, 2 AMD EPYC cores without them: 62.6 s in bfloat16, 12.0 s in float32)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return True  # unknown (not Linux): say nothing
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def dtype_warning(dtype: str, device: str) -> str | None:
    """A line for the user where workers.dtype asks for bfloat16 scoring on a CPU that emulates it."""
    if dtype == "bfloat16" and device == "cpu" and not cpu_has_bf16():
        return (
            "workers.dtype bfloat16 on a CPU without AVX512-BF16/AMX units: scoring is several times "
            "slower than in float32 here (set workers.dtype: float32 or auto)"
        )
    return None


def local_worker_device(gpus_per_worker: float | None) -> str:
    """Where a local worker runs: a GPU when this machine has one and the experiment allows it."""
    return "cuda" if torch.cuda.is_available() and gpus_per_worker != 0 else "cpu"


def workers_per_device(count: int, device: str) -> int:
    """CPU workers all share the host's RAM; GPU workers are spread one set per GPU."""
    return count if device == "cpu" else math.ceil(count / max(torch.cuda.device_count(), 1))


def model_readers(space: Any) -> list[ModelReader]:
    """The space's base (or first parent) and parents, opened header-only and checked compatible."""
    paths = ([space.base] if space.base else []) + [p for p in space.parents if p != space.base]
    readers = {str(path): ModelReader(path) for path in paths}
    check_compatible(readers)
    return list(readers.values())


def check_worker_memory(experiment: Any, space: Any, device: str, free: int | None = None) -> MemoryPlan:
    """One worker's memory plan for the experiment's placement on `device` (free memory measured
    unless given), or a ConfigError whose one line names the need, the free memory and the fix."""
    workers = experiment.spec.workers
    sharing = workers_per_device(workers.count, device)
    free = free_bytes(device) if free is None else free
    readers = model_readers(space)
    plan = choose_placement(
        readers, workers.placement, device, live_dtype(workers.dtype, device), free, sharing
    )
    refusal = plan.refusal(free, sharing)
    if refusal is not None:
        raise ConfigError(refusal)
    return plan


def search_plan(experiment: Any, suite: Any) -> Any:
    """The run's evaluation plan (fitness/selection/plan.py), made once by the driver for a new run: the
    estimator (`auto` checked on the calibration), the anchors, and the promotion rungs."""
    from evomerge.fitness.irt.calibration import Calibration
    from evomerge.fitness.selection.plan import make_plan

    calibration = Calibration.load(experiment.calibration_path) if experiment.calibration_path else None
    promotion = experiment.spec.promotion
    return make_plan(
        suite, calibration, experiment.spec.seed, rungs=promotion.rungs if promotion is not None else None
    )


def search_evaluator(
    suite: Any,
    tokenizer: Any,
    base: str | None,
    parents: list[str],
    plan: Any,
    *,
    calibration: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    token_budget: int | None = None,
) -> Any:
    """The fitness evaluator a search worker scores its candidates with, on the run's `plan`
    (`suite`: a FitnessSuite or its path; `tokenizer`: a tokenizer or its directory)."""
    from evomerge.fitness.banks.suite import FitnessSuite
    from evomerge.fitness.irt.estimators import NEEDS_PARENTS, merge_endpoints
    from evomerge.fitness.scoring.evaluator import FitnessEvaluator

    suite = suite if isinstance(suite, FitnessSuite) else FitnessSuite.load(suite)
    return FitnessEvaluator(
        suite,
        tokenizer,
        calibration=calibration,
        device=device,
        batch_size=batch_size,
        token_budget=token_budget or (GPU_TOKEN_BUDGET if device.startswith("cuda") else None),
        parents=merge_endpoints(base, parents) if plan.estimator in NEEDS_PARENTS else None,
        plan=plan,
    )


def check_fitness(experiment: Any, space: Any, suite: Any, plan: Any) -> None:
    """Build the workers' evaluator once here, on the run's `plan`: a fault any worker would hit at
    its start is a ConfigError (one line) instead."""
    from evomerge.fitness.scoring.evaluator import load_tokenizer

    source = Path(space.base or space.parents[0])  # the workers' tokenizer: their reference model's
    if not source.is_dir():  # models only on a cluster's nodes: their workers check them at start
        return
    try:
        tokenizer = load_tokenizer(source)
    except Exception as error:  # transformers raises OSError, ValueError, ... for a missing tokenizer
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"cannot load a tokenizer from {str(source)!r} ({first}); the workers score with it: copy the "
            "model's tokenizer files (tokenizer.json, tokenizer_config.json, ...) there"
        ) from None
    vocabulary = ModelReader(source).config.get("vocab_size")
    if isinstance(vocabulary, int) and len(tokenizer) > vocabulary:
        raise ConfigError(
            f"the tokenizer of {str(source)!r} has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{vocabulary}; use the tokenizer the model was trained with"
        )
    search_evaluator(
        suite,
        tokenizer,
        space.base,
        space.parents,
        plan,
        calibration=experiment.calibration_path,
        batch_size=experiment.spec.workers.batch_size,
    )
