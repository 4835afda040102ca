"""Merge methods as pure tensor functions: declared parameters and each method's semantics."""

from __future__ import annotations

import math

import pytest
import torch

from evomerge.errors import CandidateError, ConfigError
from evomerge.merge.inputs import TensorInputs
from evomerge.merge.magnitude import DeltaStats
from evomerge.merge.methods import METHODS

ALL = {
    "linear", "task_arithmetic", "ties", "dare_ties", "dare_linear",
    "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "slerp",
    "passthrough", "model_stock", "nuslerp", "sce", "karcher", "multislerp", "nearswap", "arcee_fusion",
    "ram", "ramplus_tl",
}  # fmt: skip
# numeric settings with no useful search range: a search space must give bounds to search them
UNBOUNDED = {
    ("karcher", "max_iter"), ("karcher", "tol"), ("multislerp", "eps"), ("ram", "epsilon"),
    ("ramplus_tl", "epsilon"),
}  # fmt: skip


def run(method: str, base, tensors, model_params, seed: int | None = None, **global_params) -> torch.Tensor:
    spec = METHODS.get(method)
    defaults = {s.name: s.default for s in spec.params if s.scope == "global"}
    model_defaults = {s.name: s.default for s in spec.params if s.scope == "model" and s.default is not None}
    inputs = TensorInputs(
        name="t",
        base=base,
        tensors=tensors,
        model_params=[model_defaults | p for p in model_params],
        global_params=defaults | global_params,
        stats=[DeltaStats(t, base) for t in tensors] if base is not None else [],
        seeds=[seed + i for i in range(len(tensors))] if seed is not None else None,
    )
    return METHODS.get(method).merge(inputs)


def test_registry_declares_mergekit_parameters() -> None:
    assert set(METHODS.names()) == ALL
    names = {m: {p.name for p in METHODS.get(m).params} for m in ALL}
    assert names["linear"] == {"weight", "normalize"}
    assert names["slerp"] == {"t"}
    assert names["ties"] == {"weight", "density", "normalize", "lambda", "rescale"}
    assert {"gamma"} <= names["breadcrumbs"] and {"epsilon"} <= names["della"]
    assert names["passthrough"] == {"scale"} and names["model_stock"] == {"filter_wise"}
    assert names["nuslerp"] == {"weight", "nuslerp_row_wise", "nuslerp_flatten"}
    assert names["sce"] == {"select_topk", "int8_mask"} and names["nearswap"] == {"t"}
    assert names["karcher"] == {"max_iter", "tol"} and names["arcee_fusion"] == set()
    assert names["multislerp"] == {"weight", "normalize_weights", "eps"}
    assert names["ram"] == {"epsilon"} and names["ramplus_tl"] == {"r", "alpha", "epsilon"}
    assert METHODS.get("ram").needs_base and METHODS.get("ram").param("epsilon").default == 1e-5
    assert METHODS.get("karcher").param("max_iter").default == 10
    assert METHODS.get("sce").param("select_topk").default == 1.0
    assert {m for m in ALL if METHODS.get(m).random} == {"dare_ties", "dare_linear", "della", "della_linear"}
    assert not METHODS.get("linear").needs_base and METHODS.get("ties").needs_base
    for name in ALL:
        for spec in METHODS.get(name).params:
            assert spec.scope in ("model", "global") and spec.kind in ("float", "bool", "int")
            if spec.kind == "float" and (name, spec.name) not in UNBOUNDED:
                assert spec.search_low is not None and spec.search_high is not None
                assert spec.search_low < spec.search_high
    density = METHODS.get("ties").param("density")
    with pytest.raises(ConfigError, match=r"out of range \[0.0, 1.0\]"):
        density.check(1.5, "models.0.parameters.density")
    with pytest.raises(ConfigError, match="unknown merge method 'nope'; available: arcee_fusion, breadc"):
        METHODS.get("nope")
    with pytest.raises(ConfigError, match="'max_iter' must be a whole number, got 2.5"):
        METHODS.get("karcher").param("max_iter").check(2.5, "parameters.max_iter")
    METHODS.get("karcher").param("max_iter").check(3.0, "parameters.max_iter")  # YAML reads 3 as 3.0


def test_linear_normalizes_by_default() -> None:
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])
    torch.testing.assert_close(
        run("linear", None, [a, b], [{"weight": 1.0}, {"weight": 3.0}]), (a + 3 * b) / 4
    )
    raw = run("linear", None, [a, b], [{"weight": 1.0}, {"weight": 3.0}], normalize=False)
    torch.testing.assert_close(raw, a + 3 * b)
    with pytest.raises(CandidateError, match="sum to 0"):
        run("linear", None, [a, b], [{"weight": 1.0}, {"weight": -1.0}])


def test_task_arithmetic_and_lambda() -> None:
    base = torch.tensor([1.0, 1.0, 1.0])
    p0, p1 = base + torch.tensor([1.0, -2.0, 0.0]), base + torch.tensor([2.0, 2.0, 4.0])
    out = run("task_arithmetic", base, [p0, p1], [{"weight": 0.5}, {"weight": 0.25}], **{"lambda": 2.0})
    torch.testing.assert_close(out, base + 2.0 * (0.5 * (p0 - base) + 0.25 * (p1 - base)))


def test_ties_trims_and_elects_sign() -> None:
    base = torch.zeros(4)
    d0 = torch.tensor([4.0, -3.0, 0.5, 2.0])
    d1 = torch.tensor([-1.0, -2.0, 3.0, -0.1])
    out = run("ties", base, [d0, d1], [{"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.5}])
    # trimmed: d0 -> [4, -3, 0, 0]; d1 -> [0, -2, 3, 0]; signs: +, -, +, (0 -> +)
    # kept per entry: [4], [-3, -2], [3], none; normalized by the agreeing weights.
    torch.testing.assert_close(out, torch.tensor([4.0, -2.5, 3.0, 0.0]))
    unnormalized = run(
        "ties",
        base,
        [d0, d1],
        [{"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.5}],
        normalize=False,
    )
    torch.testing.assert_close(unnormalized, torch.tensor([4.0, -5.0, 3.0, 0.0]))


def test_breadcrumbs_drops_the_top_and_the_bottom() -> None:
    base = torch.zeros(10)
    delta = torch.arange(1.0, 11.0)
    out = run("breadcrumbs", base, [delta], [{"weight": 1.0, "density": 0.5, "gamma": 0.2}])
    # 10 entries: the 2 largest (gamma) and 10 - 5 - 2 = 3 smallest go; 4..8 stay.
    expected = torch.where((delta >= 4) & (delta <= 8), delta, torch.zeros(10))
    torch.testing.assert_close(out, expected)


def test_dare_keeps_a_density_fraction_and_rescales() -> None:
    base = torch.zeros(100_000)
    delta = torch.ones(100_000)
    out = run("dare_linear", base, [delta], [{"weight": 1.0, "density": 0.3}], seed=1)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.01
    torch.testing.assert_close(out[kept], torch.full((int(kept.sum()),), 1 / 0.3))
    again = run("dare_linear", base, [delta], [{"weight": 1.0, "density": 0.3}], seed=1)
    other = run("dare_linear", base, [delta], [{"weight": 1.0, "density": 0.3}], seed=2)
    assert torch.equal(out, again) and not torch.equal(out, other)
    plain = run("dare_linear", base, [delta], [{"weight": 1.0, "density": 0.3}], seed=1, rescale=False)
    torch.testing.assert_close(plain[kept], torch.ones(int(kept.sum())))


def test_della_keeps_large_entries_more_often() -> None:
    base = torch.zeros(2000, 50)
    delta = torch.arange(1.0, 51.0).repeat(2000, 1)  # magnitude rank = column
    params = [{"weight": 1.0, "density": 0.5, "epsilon": 0.3}]
    out = run("della_linear", base, [delta], params, seed=0, rescale=False)
    keep_rate = (out != 0).float().mean(dim=0)
    assert abs(keep_rate[0].item() - 0.2) < 0.04 and abs(keep_rate[-1].item() - 0.8) < 0.04
    assert abs(keep_rate.mean().item() - 0.5) < 0.02
    with pytest.raises(ConfigError, match="lower epsilon"):
        run("della", base, [delta], [{"weight": 1.0, "density": 0.9, "epsilon": 0.3}], seed=0)


def test_slerp_endpoints_and_arc() -> None:
    v0, v1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    torch.testing.assert_close(run("slerp", v0, [v1], [{}], t=0.0), v0)
    torch.testing.assert_close(run("slerp", v0, [v1], [{}], t=1.0), v1)
    half = run("slerp", v0, [v1], [{}], t=0.5)
    torch.testing.assert_close(half, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))  # stays on the circle
    parallel = run("slerp", v0, [2 * v0], [{}], t=0.25)
    torch.testing.assert_close(parallel, 1.25 * v0)  # nearly parallel: linear interpolation


@pytest.mark.parametrize("method", ["ties", "breadcrumbs"])
def test_magnitude_trim_rescale_keeps_the_l1_norm(method: str) -> None:
    base = torch.zeros(1000)
    delta = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    params = [{"weight": 1.0, "density": 0.3, "gamma": 0.01}]
    kept = run(method, base, [delta], params, rescale=False)
    scaled = run(method, base, [delta], params, rescale=True)
    assert 0.25 < (kept != 0).float().mean().item() <= 0.31
    assert torch.equal(scaled != 0, kept != 0)
    torch.testing.assert_close(scaled.abs().sum(), delta.abs().sum())
    torch.testing.assert_close(scaled, kept * (delta.abs().sum() / kept.abs().sum()))


def test_passthrough_scales_its_one_source() -> None:
    a = torch.tensor([1.0, -2.0, 3.0])
    torch.testing.assert_close(run("passthrough", None, [a], [{"scale": 0.5}]), 0.5 * a)
    assert torch.equal(run("passthrough", None, [a], [{}]), a)


def test_model_stock_interpolates_by_the_angle() -> None:
    base = torch.zeros(2)
    d0, d1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])  # orthogonal: cos 0, t 0 -> base
    torch.testing.assert_close(run("model_stock", base, [d0, d1], [{}, {}]), base)
    same = run("model_stock", base, [d0, 2 * d0], [{}, {}])  # parallel: cos 1, t = 2 / 2 = 1 -> average
    torch.testing.assert_close(same, 1.5 * d0)
    rows = torch.stack([d0, d0]), torch.stack([d1, 2 * d0])  # row 0 orthogonal, row 1 parallel
    out = run("model_stock", torch.zeros(2, 2), list(rows), [{}, {}], filter_wise=True)
    torch.testing.assert_close(out, torch.stack([torch.zeros(2), 1.5 * d0]))


def test_karcher_and_multislerp_of_two_orthogonal_vectors_meet_halfway() -> None:
    a, b = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0])
    halfway = torch.tensor([math.sqrt(2.0), math.sqrt(2.0)])  # on the arc, mean norm 2
    torch.testing.assert_close(run("karcher", None, [a, b], [{}, {}]), halfway)
    weights = [{"weight": 1.0}, {"weight": 1.0}]
    torch.testing.assert_close(run("multislerp", None, [a, b], weights), halfway)


def test_nearswap_moves_at_most_t() -> None:
    base, other = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.05, 1.0, 1.0])
    out = run("nearswap", base, [other], [{}], t=0.1)
    torch.testing.assert_close(out, torch.tensor([0.05, 0.1, 1.0]))  # close: swapped; far: a 0.1 step


def test_sce_keeps_exactly_k_of_tied_variances() -> None:
    base = torch.zeros(10)
    d0, d1 = torch.ones(10), 3 * torch.ones(10)  # every variance 1: all tied
    out = run("sce", base, [d0, d1], [{}, {}], select_topk=0.3)
    # the last 3 by position; weights 1 : 9 (mean squares of the kept entries)
    torch.testing.assert_close(out, torch.tensor([0.0] * 7 + [2.8] * 3))


def test_ram_keeps_unique_entries_and_averages_shared_ones() -> None:
    """RAM: an entry one model alone changes (|delta| > epsilon) keeps its delta; an entry both
    change takes their mean; changes at or below epsilon count as none."""
    base = torch.zeros(4)
    d0 = torch.tensor([1.0, 2.0, 0.0, 1e-6])
    d1 = torch.tensor([0.0, 4.0, 3.0, 0.0])
    out = run("ram", base, [d0, d1], [{}, {}], epsilon=1e-5)
    torch.testing.assert_close(out, torch.tensor([1.0, 3.0, 3.0, 0.0]))


def test_ramplus_scales_each_model_s_unique_entries_by_its_overlap() -> None:
    """RAM+ (tensor-local): model i's unique entries times 1 + r * clamp(shared_i / unique_i, 0,
    alpha). d0: 2 shared, 1 unique -> rho 2, capped at alpha 0.5 -> 1.05 with r 0.1; d1: 2 shared,
    4 unique -> rho 0.5 -> 1.05 as well at alpha 0.5; at alpha 0.2 both scale by 1.02."""
    base = torch.zeros(7)
    d0 = torch.tensor([1.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0])
    d1 = torch.tensor([0.0, 4.0, 6.0, 1.0, 1.0, 1.0, 1.0])
    out = run("ramplus_tl", base, [d0, d1], [{}, {}], r=0.1, alpha=0.5)
    torch.testing.assert_close(out, torch.tensor([1.05, 3.0, 4.0, 1.05, 1.05, 1.05, 1.05]))
    out = run("ramplus_tl", base, [d0, d1], [{}, {}])  # defaults r 0.1, alpha 0.2
    torch.testing.assert_close(out, torch.tensor([1.02, 3.0, 4.0, 1.02, 1.02, 1.02, 1.02]))
