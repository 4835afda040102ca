"""The merge methods' declarations: names, parameters (mergekit's names and semantics), model
counts and a reference for each. Torch-free: recipe validation and the search space's genes read
it without loading a kernel; `merge/methods.py` binds each declaration to its computation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from evomerge.errors import ConfigError
from evomerge.registry import Registry


@dataclass(frozen=True, kw_only=True)
class ParamSpec:
    """One declared merge parameter (mergekit name; scope 'model' = per model, 'global' = recipe-wide)."""

    name: str
    scope: Literal["model", "global"]
    kind: Literal["float", "bool", "int"]
    default: float | bool | None = None
    low: float | None = None
    high: float | None = None
    search_low: float | None = None
    search_high: float | None = None

    def check(self, value: object, where: str) -> None:
        """Raise ConfigError (a ValueError) when `value` is not a valid setting of this parameter."""
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: {self.name!r} must be true or false, got {value!r}")
            return
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{where}: {self.name!r} must be a finite number, got {value!r}")
        if self.kind == "int" and not float(value).is_integer():
            raise ConfigError(f"{where}: {self.name!r} must be a whole number, got {value!r}")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ConfigError(
                f"{where}: {self.name!r} = {value} is out of range [{self.low}, {self.high}]; "
                f"use a value inside it"
            )


@dataclass(frozen=True, kw_only=True)
class MethodSpec:
    """One merge method as recipes and search spaces see it."""

    name: str
    params: tuple[ParamSpec, ...]
    needs_base: bool
    reference: str  # where the method is defined (paper, or mergekit's documentation)
    random: bool = False  # draws random numbers (seeded per model)
    n_models: int | None = None  # exact number of merged models (besides the base), if fixed
    min_models: int = 1  # the fewest merged models (besides the base)
    optional_base: bool = False  # a base_model, when given, is the origin (nuslerp, multislerp)
    includes_base: bool = False  # mergekit adds base_model to a `models:` list as one more input

    def takes_base(self, base_model: str | None) -> bool:
        """Whether the base is set apart from the merged models (the origin of their task vectors)."""
        return self.needs_base or (self.optional_base and base_model is not None)

    def param(self, name: str) -> ParamSpec:
        for spec in self.params:
            if spec.name == name:
                return spec
        raise ConfigError(f"merge method {self.name!r} has no parameter {name!r}")


CATALOG: Registry[MethodSpec] = Registry("merge method")

# --- parameters -------------------------------------------------------------------------------

WEIGHT = ParamSpec(name="weight", scope="model", kind="float", search_low=0.0, search_high=1.0)
DENSITY = ParamSpec(
    name="density",
    scope="model",
    kind="float",
    default=1.0,
    low=0.0,
    high=1.0,
    search_low=0.1,
    search_high=1.0,
)
GAMMA = ParamSpec(
    name="gamma",
    scope="model",
    kind="float",
    default=0.01,
    low=0.0,
    high=1.0,
    search_low=0.0,
    search_high=0.1,
)
EPSILON = ParamSpec(
    name="epsilon",
    scope="model",
    kind="float",
    default=0.15,
    low=0.0,
    high=1.0,
    search_low=0.01,
    search_high=0.2,
)
LAMBDA = ParamSpec(name="lambda", scope="global", kind="float", default=1.0, search_low=0.5, search_high=1.5)
T = ParamSpec(name="t", scope="global", kind="float", low=0.0, high=1.0, search_low=0.0, search_high=1.0)
SCALE = ParamSpec(name="scale", scope="model", kind="float", default=1.0, search_low=0.0, search_high=1.0)
RAM_EPSILON = ParamSpec(name="epsilon", scope="global", kind="float", default=1e-5, low=0.0)


def _flag(name: str, default: bool) -> ParamSpec:
    return ParamSpec(name=name, scope="global", kind="bool", default=default)


def declare(spec: MethodSpec) -> None:
    CATALOG.add(spec.name, spec)


# --- the task-arithmetic family ---------------------------------------------------------------


def _task_method(
    name: str,
    reference: str,
    *,
    normalize: bool,
    rescale: bool | None = None,
    extra: tuple[ParamSpec, ...] = (),
    random: bool = False,
) -> MethodSpec:
    """base + lambda * sum_i w_i m_i d_i / divisor; sparsified (density, rescale) where `rescale` is
    given (its default)."""
    params: tuple[ParamSpec, ...] = (WEIGHT,)
    if rescale is not None:
        params += (DENSITY, *extra, _flag("rescale", rescale))
    params += (_flag("normalize", normalize), LAMBDA)
    return MethodSpec(name=name, params=params, needs_base=True, random=random, reference=reference)


TASK_ARITHMETIC = "https://arxiv.org/abs/2212.04089"  # Ilharco et al. 2023
TIES = "https://arxiv.org/abs/2306.01708"  # Yadav et al. 2023
DARE = "https://arxiv.org/abs/2311.03099"  # Yu et al. 2024
BREADCRUMBS = "https://arxiv.org/abs/2312.06795"  # Davari & Belilovsky 2023
DELLA = "https://arxiv.org/abs/2406.11617"  # Deep et al. 2024
MERGEKIT = "https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md"

# mergekit merges a linear recipe's unlisted base_model as one more model (with the global weight)
declare(
    MethodSpec(
        name="linear",
        params=(WEIGHT, _flag("normalize", True)),
        needs_base=False,
        includes_base=True,
        reference="https://arxiv.org/abs/2203.05482",  # model soups, Wortsman et al. 2022
    )
)
declare(_task_method("task_arithmetic", TASK_ARITHMETIC, normalize=False))
declare(_task_method("ties", TIES, normalize=True, rescale=False))
declare(_task_method("dare_ties", DARE, normalize=False, rescale=True, random=True))
declare(_task_method("dare_linear", DARE, normalize=False, rescale=True, random=True))
declare(_task_method("breadcrumbs", BREADCRUMBS, normalize=False, rescale=False, extra=(GAMMA,)))
declare(_task_method("breadcrumbs_ties", BREADCRUMBS, normalize=False, rescale=False, extra=(GAMMA,)))
declare(_task_method("della", DELLA, normalize=True, rescale=True, extra=(EPSILON,), random=True))
declare(_task_method("della_linear", DELLA, normalize=False, rescale=True, extra=(EPSILON,), random=True))

# --- the spherical family ---------------------------------------------------------------------

declare(
    MethodSpec(
        name="slerp",
        params=(T,),
        needs_base=True,
        n_models=1,
        reference="https://en.wikipedia.org/wiki/Slerp",  # Shoemake 1985
    )
)
declare(
    MethodSpec(
        name="nuslerp",
        params=(WEIGHT, _flag("nuslerp_row_wise", False), _flag("nuslerp_flatten", True)),
        needs_base=False,
        n_models=2,
        optional_base=True,
        reference=MERGEKIT,
    )
)
declare(
    MethodSpec(
        name="karcher",
        params=(
            ParamSpec(name="max_iter", scope="global", kind="int", default=10, low=1),
            ParamSpec(name="tol", scope="global", kind="float", default=1e-5, low=0.0),
        ),
        needs_base=False,
        includes_base=True,
        reference="https://en.wikipedia.org/wiki/Fr%C3%A9chet_mean",  # Karcher 1977
    )
)
declare(
    MethodSpec(
        name="multislerp",
        params=(
            WEIGHT,
            _flag("normalize_weights", True),
            ParamSpec(name="eps", scope="global", kind="float", default=1e-8, low=0.0),
        ),
        needs_base=False,
        optional_base=True,
        reference=MERGEKIT,
    )
)

# --- the rest ---------------------------------------------------------------------------------

declare(MethodSpec(name="passthrough", params=(SCALE,), needs_base=False, n_models=1, reference=MERGEKIT))
declare(
    MethodSpec(
        name="model_stock",
        params=(_flag("filter_wise", False),),
        needs_base=True,
        min_models=2,
        reference="https://arxiv.org/abs/2403.19522",  # Jang et al. 2024
    )
)
declare(
    MethodSpec(
        name="sce",
        params=(
            ParamSpec(
                name="select_topk", scope="global", kind="float", default=1.0, low=0.0, high=1.0,
                search_low=0.1, search_high=1.0,
            ),
            _flag("int8_mask", False),  # mergekit's mask storage type: no effect on the values
        ),
        needs_base=True,
        reference="https://arxiv.org/abs/2408.07990",  # FuseChat, Wan et al. 2024
    )
)  # fmt: skip
declare(
    MethodSpec(
        name="nearswap",
        params=(ParamSpec(name="t", scope="global", kind="float", search_low=0.0, search_high=0.001),),
        needs_base=True,
        n_models=1,
        reference=MERGEKIT,
    )
)
declare(MethodSpec(name="arcee_fusion", params=(), needs_base=True, n_models=1, reference=MERGEKIT))
RAM = "https://arxiv.org/abs/2601.13572"  # Reinforced Agent Merging
declare(MethodSpec(name="ram", params=(RAM_EPSILON,), needs_base=True, reference=RAM))
declare(
    MethodSpec(
        name="ramplus_tl",
        params=(
            ParamSpec(
                name="r", scope="global", kind="float", default=0.1, low=0.0, search_low=0.0, search_high=0.5
            ),
            ParamSpec(
                name="alpha",
                scope="global",
                kind="float",
                default=0.2,
                low=0.0,
                search_low=0.0,
                search_high=1.0,
            ),
            RAM_EPSILON,
        ),
        needs_base=True,
        reference=RAM,
    )
)
