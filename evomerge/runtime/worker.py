"""The search worker: holds base + parents (LiveMerger) and the fitness evaluator, evaluates recipes.

One worker is one Ray actor (`num_gpus=1` where the cluster has GPUs, CPU otherwise). It loads the
models once; each `evaluate` writes a candidate into the live model in memory and scores it. A
candidate that fails (NaN/inf scores, a bad recipe, any exception) comes back as a failure with its
reason, never as an exception: a failed candidate must not stop the search.
"""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from dataclasses import dataclass
from typing import Any

from evomerge.runtime.work import Rescore, WorkerResult


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker is made from, decided by the driver: the models, the suite and
    calibration files (the same on every node), the device settings, and the evaluation plan."""

    base: str | None
    parents: list[str]
    suite: str  # the suite file
    plan: Any  # the run's EvaluationPlan (fitness/selection/plan.py): estimator, anchors, seed
    calibration: str | None = None
    device: str = "cpu"
    batch_size: int = 16
    dtype: str = "auto"
    placement: str = "auto"
    token_budget: int | None = None


class Worker:
    def __init__(self, worker_id: str, spec: WorkerSpec) -> None:
        import torch

        from evomerge.merge.live import LiveMerger
        from evomerge.runtime.preflight import live_dtype, search_evaluator

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        import ray

        node = ray.get_runtime_context().get_node_id()[:8] if ray.is_initialized() else "local"
        self.worker_id = f"{worker_id}@{socket.gethostname()}:{os.getpid()}/node-{node}"
        self.merger = LiveMerger(
            spec.base,
            spec.parents,
            device=spec.device,
            model_dtype=live_dtype(spec.dtype, spec.device),
            placement=spec.placement,
        )
        self.evaluator = search_evaluator(
            spec.suite,
            self.merger.tokenizer_dir,
            spec.base,
            spec.parents,
            spec.plan,
            calibration=spec.calibration,
            device=spec.device,
            batch_size=spec.batch_size,
            token_budget=spec.token_budget,
        )

    def ping(self) -> str:
        return self.worker_id

    def evaluate(self, work: str | Rescore) -> WorkerResult:
        """A candidate's estimates, intervals, answers and timings (`work`: its recipe YAML), or a
        promotion's answers on its items (`work`: a Rescore); or the failure's reason."""
        from evomerge.recipe import MergeRecipe

        rescore = work if isinstance(work, Rescore) else None
        start = time.perf_counter()
        try:
            self.merger.apply(MergeRecipe.from_yaml(rescore.recipe_yaml if rescore else str(work)))
            merged = time.perf_counter()
            if rescore is not None:
                answers = self.evaluator.score_items(self.merger.model, rescore.items)
                end = time.perf_counter()
                return WorkerResult(
                    ok=True,
                    worker=self.worker_id,
                    answers={str(item): int(v) for item, v in answers.items()},
                    timings={"merge": merged - start, "score": end - merged, "total": end - start},
                    n_items=len(rescore.items),
                )
            result = self.evaluator.evaluate(self.merger.model)
            bad = {t: v for t, v in result.estimates.items() if not math.isfinite(v)}
            if bad:
                return self._failure(f"CandidateError: non-finite estimates {bad}")
        except Exception as error:  # any failure of one candidate is that candidate's FAIL
            return self._failure(f"{type(error).__name__}: {error}", traceback.format_exc())
        end = time.perf_counter()
        return WorkerResult(
            ok=True,
            worker=self.worker_id,
            estimates={t: float(v) for t, v in result.estimates.items()},
            intervals={t: (float(lo), float(hi)) for t, (lo, hi) in result.intervals.items()},
            answers={str(item): int(v) for item, v in result.answers.items()},
            timings={"merge": merged - start, "score": end - merged, "total": end - start},
            n_items=int(result.n_items),
            estimator=result.estimator,
        )

    def _failure(self, reason: str, trace: str = "") -> WorkerResult:
        """The reason as the user reads it (its first line, cut at 500 characters) and the full text
        with the traceback for the run's failure log."""
        first = reason.strip().splitlines()[0] if reason.strip() else "unknown error"
        summary = first[:500] + (" ..." if len(first) > 500 or "\n" in reason.strip() else "")
        return WorkerResult.failure(summary, self.worker_id, f"{reason}\n{trace}".strip())
