"""Recipes over a tiny family (base, parent_0, parent_1) covering every method, per-layer lists,
filters and slices; shared by the live-vs-disk and mergekit conformance tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def recipes(base: Path, parents: list[Path]) -> dict[str, dict[str, Any]]:
    b, p0, p1 = str(base), str(parents[0]), str(parents[1])
    filtered = [{"filter": "self_attn", "value": [0.2, 0.9]}, {"filter": "mlp", "value": 0.6}, {"value": 0.4}]

    def task(method: str, sparse: bool = True, **extra: Any) -> dict[str, Any]:
        density = {"density": 0.4} if sparse else {}
        return {
            "merge_method": method,
            "base_model": b,
            "parameters": ({"density": 0.6} if sparse else {}) | extra,
            "models": [
                {"model": b},
                {"model": p0, "parameters": {"weight": [0.3, 1.0, 0.5], **density}},
                {"model": p1, "parameters": {"weight": filtered}},
            ],
            "seed": 11,
        }

    def sliced(method: str, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "merge_method": method,
            "base_model": b,
            "parameters": params,
            "slices": [
                {
                    "sources": [
                        {"model": b, "layer_range": [0, 2]},
                        {"model": p0, "layer_range": [0, 2], "parameters": {"weight": [0.1, 0.9]}},
                        {"model": p1, "layer_range": [0, 2]},
                    ]
                },
                {
                    "sources": [
                        {"model": b, "layer_range": [2, 4]},
                        {"model": p0, "layer_range": [2, 4], "parameters": {"weight": 0.7}},
                        {"model": p1, "layer_range": [2, 4], "parameters": {"weight": filtered}},
                    ]
                },
            ],
            "seed": 5,
        }

    def three(method: str, **params: Any) -> dict[str, Any]:  # base + both parents, no weights
        models = [{"model": b}, {"model": p0}, {"model": p1}]
        return {"merge_method": method, "base_model": b, "parameters": params, "models": models}

    def weighted(method: str, origin: str | None, **params: Any) -> dict[str, Any]:
        models = [
            {"model": p0, "parameters": {"weight": [0.3, 1.0, 0.5]}},
            {"model": p1, "parameters": {"weight": filtered}},
        ]
        if origin is None:
            return {"merge_method": method, "parameters": params, "models": models}
        models.insert(0, {"model": origin})
        return {"merge_method": method, "base_model": origin, "parameters": params, "models": models}

    return {
        "linear": {
            "merge_method": "linear",
            "models": [
                {"model": p0, "parameters": {"weight": [0.1, 0.9, 0.3]}},
                {"model": p1, "parameters": {"weight": filtered}},
            ],
        },
        "task_arithmetic": task("task_arithmetic", sparse=False, **{"lambda": 0.9}),
        "ties": task("ties"),
        "ties_unnormalized": task("ties", normalize=False, rescale=True),
        "breadcrumbs": task("breadcrumbs", gamma=0.05),
        "breadcrumbs_ties": task("breadcrumbs_ties", gamma=0.02),
        "dare_ties": task("dare_ties"),
        "dare_linear": task("dare_linear", rescale=False),
        "della": task("della", epsilon=0.1),
        "della_linear": task("della_linear", epsilon=0.05),
        "slerp": {
            "merge_method": "slerp",
            "base_model": b,
            "parameters": {"t": [{"filter": "self_attn", "value": [0.0, 0.5, 1.0]}, {"value": 0.3}]},
            "models": [{"model": b}, {"model": p1}],
        },
        "task_arithmetic_slices": sliced("task_arithmetic", {"weight": 0.5}),
        "ties_slices": sliced("ties", {"weight": 0.5, "density": [0.3, 0.8]}),
        "dare_ties_slices": sliced("dare_ties", {"weight": 0.5, "density": 0.5}),
        "slerp_slices": {
            "merge_method": "slerp",
            "base_model": b,
            "parameters": {"t": [0.0, 1.0]},
            "slices": [
                {"sources": [{"model": b, "layer_range": [0, 3]}, {"model": p0, "layer_range": [0, 3]}]},
                {"sources": [{"model": b, "layer_range": [1, 3]}, {"model": p0, "layer_range": [1, 3]}]},
            ],
        },
        "passthrough": {
            "merge_method": "passthrough",
            "slices": [
                {"sources": [{"model": b, "layer_range": [0, 2]}]},
                {"sources": [{"model": p0, "layer_range": [2, 4], "parameters": {"scale": filtered}}]},
            ],
        },
        # layers 0-2 of the base, 1-4 of p0 (scaled), 3 of p1: 6 layers from 4-layer models
        "passthrough_stack": {
            "merge_method": "passthrough",
            "parameters": {"scale": [{"filter": "mlp", "value": [0.5, 1.0]}, {"value": 1.0}]},
            "slices": [
                {"sources": [{"model": b, "layer_range": [0, 2]}]},
                {"sources": [{"model": p0, "layer_range": [1, 4]}]},
                {"sources": [{"model": p1, "layer_range": [3, 4], "parameters": {"scale": [0.2, 0.8]}}]},
            ],
        },
        "model_stock": three("model_stock"),
        "model_stock_filter_wise": three("model_stock", filter_wise=True),
        "nuslerp": weighted("nuslerp", b),
        "nuslerp_rows": weighted("nuslerp", None, nuslerp_flatten=False),
        "nuslerp_columns": weighted("nuslerp", b, nuslerp_flatten=False, nuslerp_row_wise=True),
        "multislerp": weighted("multislerp", b),
        "multislerp_unnormalized": weighted("multislerp", None, normalize_weights=False),
        "sce": three("sce", select_topk=0.4),
        "sce_all": three("sce"),
        # mergekit adds base_model to the models: a Karcher mean of three
        "karcher": {"merge_method": "karcher", "base_model": b, "models": [{"model": p0}, {"model": p1}]},
        "karcher_short": {
            "merge_method": "karcher",
            "parameters": {"max_iter": 2, "tol": 1e-3},
            "models": [{"model": b}, {"model": p0}, {"model": p1}],
        },
        "arcee_fusion": {
            "merge_method": "arcee_fusion",
            "base_model": b,
            "models": [{"model": b}, {"model": p1}],
        },
        # epsilon about the median |delta| of the tiny family (noise 0.02): unique and shared
        # entries both common
        "ram": three("ram", epsilon=0.015),
        "ramplus_tl": three("ramplus_tl", epsilon=0.015, r=0.5, alpha=0.5),
        "nearswap": {
            "merge_method": "nearswap",
            "base_model": b,
            "parameters": {"t": [{"filter": "mlp", "value": [0.005, 0.03]}, {"value": 0.01}]},
            "models": [{"model": b}, {"model": p0}],
        },
    }


# The cases an in-memory merge can take (these change the layer count).
OTHER_LAYER_COUNTS = ("slerp_slices", "passthrough_stack")
LIVE_CASES = [name for name in recipes(Path("b"), [Path("p0"), Path("p1")]) if name not in OTHER_LAYER_COUNTS]


def tied_recipes(base: Path, parents: list[Path]) -> dict[str, dict[str, Any]]:
    """Recipes for a bfloat16 family, computed in float32 as the search does: bf16 task vectors
    take few distinct magnitudes, so the selections' thresholds fall inside runs of tied entries."""
    b, p0, p1 = str(base), str(parents[0]), str(parents[1])

    def recipe(method: str, models: list[str], **params: Any) -> dict[str, Any]:
        return {
            "merge_method": method,
            "base_model": b,
            "parameters": params,
            "models": [{"model": b}] + [{"model": m} for m in models],
            "dtype": "float32",
        }

    return {
        "ties_one": recipe("ties", [p0], weight=1.0, density=[0.3, 0.7]),
        "ties_two": recipe("ties", [p0, p1], weight=0.6, density=0.5),
        "breadcrumbs_one": recipe("breadcrumbs", [p0], weight=1.0, density=0.6, gamma=0.05),
        "breadcrumbs_ties_two": recipe("breadcrumbs_ties", [p0, p1], weight=0.8, density=0.5, gamma=0.1),
        "model_stock": recipe("model_stock", [p0, p1]),
        "sce": recipe("sce", [p0, p1], select_topk=0.5),
        "sce_all": recipe("sce", [p0, p1]),
        "nuslerp": recipe("nuslerp", [p0, p1], weight=0.5),
        "ram": recipe("ram", [p0, p1], epsilon=0.015),
        "passthrough": {
            "merge_method": "passthrough",
            "slices": [
                {"sources": [{"model": p1, "layer_range": [1, 3]}]},
                {"sources": [{"model": b, "layer_range": [0, 4], "parameters": {"scale": 0.5}}]},
            ],
        },
    }
