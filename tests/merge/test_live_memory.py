"""The memory model on a bfloat16 family: parents held once in their storage dtype, every
placement gives the on-disk merge's tensors, thresholds exact, nothing full-size derived."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from recipes import LIVE_CASES, recipes
from tiny import load_tensors, make_family
from torch import Tensor

from evomerge.merge.io import ModelReader, merge_to_directory
from evomerge.merge.live import LiveMerger, empty_model
from evomerge.merge.magnitude import DeltaStats
from evomerge.merge.memory import choose_placement, plan_memory, reader_bytes
from evomerge.recipe import MergeRecipe

PLACEMENTS = ["device", "host", "disk"]


@pytest.fixture(scope="module")
def bf16_family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    return make_family(tmp_path_factory.mktemp("bf16"), n_parents=2, dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def mergers(bf16_family) -> dict[tuple[str, str], LiveMerger]:
    """One merger per (placement, live dtype), built on first use."""
    return {}


def merger_for(mergers, bf16_family, placement: str, dtype: torch.dtype) -> LiveMerger:
    key = (placement, str(dtype))
    if key not in mergers:
        base, parents = bf16_family
        mergers[key] = LiveMerger(base, parents, placement=placement, model_dtype=dtype)
    return mergers[key]


def case_recipe(bf16_family, case: str, compute: str | None) -> MergeRecipe:
    base, parents = bf16_family
    data = recipes(base, parents)[case]
    return MergeRecipe.from_dict({**data, "dtype": compute} if compute else data)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("case", LIVE_CASES)
def test_every_placement_equals_the_disk_merge(case, placement, bf16_family, mergers, tmp_path) -> None:
    """float32 arithmetic from bf16 parents (the search's recipes), written as float32 on disk and
    into a float32 live model: bit-identical; and bf16 arithmetic with no `dtype` (mergekit: the
    checkpoint's dtype), bf16 out, for the deterministic TIES path."""
    recipe = case_recipe(bf16_family, case, "float32")
    merge_to_directory(recipe, tmp_path / "out", progress=False)
    disk = load_tensors(tmp_path / "out")
    live = merger_for(mergers, bf16_family, placement, torch.float32)
    live.apply(case_recipe(bf16_family, "linear", "float32"))  # a different candidate first
    state = live.apply(recipe).state_dict()
    for name, tensor in disk.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(state[name], tensor), f"{case}/{placement}: {name} differs"


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_bf16_arithmetic_without_dtype_equals_disk(placement, bf16_family, mergers, tmp_path) -> None:
    recipe = case_recipe(bf16_family, "ties", None)
    merge_to_directory(recipe, tmp_path / "out", progress=False)
    disk = load_tensors(tmp_path / "out")
    state = merger_for(mergers, bf16_family, placement, torch.bfloat16).apply(recipe).state_dict()
    for name, tensor in disk.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(state[name], tensor), f"{placement}: {name} differs"


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_resident_bytes_are_the_checkpoints_bytes(placement, bf16_family, mergers) -> None:
    """Base + parents held once in bf16 (device/host), nothing held on disk placement; the live
    model weighs one model; after every method ran, the indexes stay under 3% of the parents (per
    compute dtype the merger has seen: other tests share this merger) even
    in this tiny family, where 32-entry norms each still carry a 36-byte index (a real tensor's
    is under 0.1%: the next test)."""
    base, parents = bf16_family
    live = merger_for(mergers, bf16_family, placement, torch.bfloat16)
    for case in LIVE_CASES:
        live.apply(case_recipe(bf16_family, case, "float32"))
    checkpoints = [reader_bytes(ModelReader(path)) for path in [base, *parents]]
    held = live.resident_bytes()
    assert held["models"] == (0 if placement == "disk" else sum(checkpoints))
    assert held["live"] == checkpoints[0]  # one bf16 model
    compute_dtypes = {key[-1] for key in live._indexes}  # one index per parent tensor and compute dtype
    assert 0 < held["indexes"] <= 0.03 * sum(checkpoints[1:]) * len(compute_dtypes)
    assert live.memory.models_bytes == sum(checkpoints)


def test_index_bytes_are_under_one_percent_of_a_real_sized_tensor() -> None:
    """A 4096 x 1024 bf16 task vector (8 MiB) needs a ~3 KB index: 0.04%."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(4096, 1024, generator=generator).to(torch.bfloat16)
    parent = (base.float() + 0.01 * torch.randn(4096, 1024, generator=generator)).to(torch.bfloat16)
    stats = DeltaStats(parent, base, torch.float32)
    parent_bytes = parent.numel() * parent.element_size()
    assert stats.index.nbytes < 0.001 * parent_bytes


def _tied_pair(dtype: torch.dtype, shape: tuple[int, int] = (300, 70)) -> tuple[Tensor, Tensor]:
    """A base and a parent whose task vector has 500 exact zeros and, in bf16, thousands of ties."""
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(*shape, generator=generator).to(dtype)
    parent = (base.float() + 0.05 * torch.randn(*shape, generator=generator)).to(dtype)
    parent.view(-1)[:500] = base.view(-1)[:500]
    return parent, base


# A resident merger keeps each tensor's index (the `on_index` callback); a one-shot merge keeps
# none and finds each cut directly. Both must give the same cuts, selections and errors.
SELECTION_PATHS = ["indexed", "one_shot"]


def _stats(parent: Tensor, base: Tensor, path: str, **kwargs) -> DeltaStats:
    keep = {"on_index": lambda index: None} if path == "indexed" else {}
    stats = DeltaStats(parent, base, torch.float32, **keep, **kwargs)
    assert stats.one_shot == (path == "one_shot")
    return stats


@pytest.mark.parametrize("path", SELECTION_PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cut_is_the_stable_sort_entry_at_every_rank(dtype, path) -> None:
    """The index answers the entry at any rank of (|delta|, position) ascending exactly: its value,
    its place among equal magnitudes and its position, also where bf16 makes thousands equal."""
    parent, base = _tied_pair(dtype)
    stats = _stats(parent, base, path)
    magnitudes = (parent.float() - base.float()).abs().flatten()
    reference = magnitudes.sort(stable=True)
    n = magnitudes.numel()
    assert dtype == torch.float32 or n - magnitudes.unique().numel() > 1000
    for rank in [0, 1, 250, 499, 500, 501, n // 3, n // 2, n - 2, n - 1, *range(7, n, 997)]:
        cut = stats.cut_at(rank)
        value = reference.values[rank]
        assert cut.value == float(value), rank
        assert cut.tie == rank - int((magnitudes < value).sum()), rank
        assert cut.ties == int((magnitudes == value).sum()), rank
        assert stats.tie_position(cut) == int(reference.indices[rank]), rank
    kept, total = stats.l1_between(float(reference.values[n // 2]), math.inf)
    expected = float(magnitudes[magnitudes >= reference.values[n // 2]].double().sum())
    assert kept == pytest.approx(expected, rel=1e-12)
    assert total == pytest.approx(float(magnitudes.double().sum()), rel=1e-12)


def test_bf16_index_answers_most_ranks_without_a_pass() -> None:
    """On a bf16 task vector a few hundred magnitudes hold most entries: the index keeps the
    counts at and below each edge, so a rank that falls on an edge needs no pass at all."""
    parent, base = _tied_pair(torch.bfloat16, (1024, 512))
    index = DeltaStats(parent, base, torch.float32).index
    on_edges = sum(upto - below for below, upto in zip(index.below[:-1], index.upto[:-1], strict=True))
    assert on_edges > 0.5 * parent.numel()
    widest = max(below - upto for upto, below in zip(index.upto[:-1], index.below[1:], strict=True))
    assert widest < 0.02 * parent.numel()


@pytest.mark.parametrize("path", SELECTION_PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("ties", {"density": 0.3}),
        ("ties", {"density": 1e-6}),
        ("breadcrumbs", {"density": 0.4, "gamma": 0.05}),
    ],
)
def test_magnitude_selection_keeps_exactly_the_ranks_it_defines(
    dtype, method, params, path, monkeypatch
) -> None:
    """TIES keeps exactly k = max(1, int(density * n)) entries and breadcrumbs exactly the ranks
    [n_bottom, n_bottom + int(density * n)) of (|delta|, position) ascending, ties included: the
    kept set equals a stable sort's, entry for entry."""
    from evomerge.merge.inputs import TensorInputs
    from evomerge.merge.methods import METHODS

    monkeypatch.setenv("EVOMERGE_COMPILE", "0")
    parent, base = _tied_pair(dtype)
    n = parent.numel()
    specs = METHODS.get(method).params
    model = {s.name: s.default for s in specs if s.scope == "model"} | params | {"weight": 1.0}
    recipe_wide = {s.name: s.default for s in specs if s.scope == "global"}
    stats = [_stats(parent, base, path)]
    inputs = TensorInputs("w", base, [parent], [model], recipe_wide, stats=stats, compute_dtype=torch.float32)
    merged = METHODS.get(method).merge(inputs)
    kept = (merged.float() != base.float()).flatten()
    order = (parent.float() - base.float()).abs().flatten().sort(stable=True).indices
    density = params["density"]
    if method == "ties":
        k = max(1, int(density * n))
        wanted = order[n - k :]
    else:
        target = int(density * n)
        bottom = max(0, n - target - int(params["gamma"] * n))
        wanted = order[bottom : bottom + target]
    expected = torch.zeros(n, dtype=torch.bool)
    expected[wanted] = True
    expected &= (parent.float() != base.float()).flatten()  # a kept zero delta leaves the base as is
    assert torch.equal(kept, expected)


def test_live_model_is_built_without_random_initialisation(bf16_family, monkeypatch) -> None:
    """Init functions only ever touch meta tensors (no bytes), and every parameter is allocated
    directly on the device in the target dtype."""
    from transformers import AutoConfig

    real_inits: list[str] = []
    for name in (
        "normal_",
        "uniform_",
        "kaiming_uniform_",
        "trunc_normal_",
        "xavier_uniform_",
        "zeros_",
        "ones_",
    ):
        original = getattr(torch.nn.init, name)

        def watched(tensor, *args, _name=name, _original=original, **kwargs):
            if tensor.device.type != "meta":
                real_inits.append(f"{_name} on {tensor.device} {list(tensor.shape)}")
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.nn.init, name, watched)
    base, _ = bf16_family
    model = empty_model(AutoConfig.from_pretrained(base), torch.bfloat16, torch.device("cpu"))
    assert real_inits == []
    params = list(model.parameters())
    assert params and all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in params)
    rotary = [b for n, b in model.named_buffers() if "inv_freq" in n]
    assert rotary and all(torch.isfinite(b).all() and b.abs().sum() > 0 for b in rotary)


def test_tied_embeddings_stay_tied(tmp_path) -> None:
    from tiny import save_model, tiny_config
    from transformers import LlamaForCausalLM

    config = tiny_config()
    config.tie_word_embeddings = True
    directory = save_model(LlamaForCausalLM(config), tmp_path / "tied")
    live = LiveMerger(directory, [])
    model = live.model
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    expected = load_tensors(directory)["model.embed_tokens.weight"]
    assert torch.equal(model.lm_head.weight, expected)


def test_preflight_refuses_what_cannot_fit_in_one_line(bf16_family) -> None:
    base, parents = bf16_family
    readers = [ModelReader(p) for p in [base, *parents]]
    device = plan_memory(readers, "device")
    disk = plan_memory(readers, "disk")
    assert disk.device_bytes < device.device_bytes
    assert device.refusal(10 * device.device_bytes) is None
    line = device.refusal(device.device_bytes // 2)
    assert line is not None and "\n" not in line
    assert re.search(
        r"needs [\d.]+ [KM]iB on cpu \(one worker, placement device\) but [\d.]+ KiB is free", line
    )
    assert "use workers.placement: disk, fewer workers" in line
    chosen = choose_placement(
        readers, "auto", "cpu", None, free=(device.device_bytes + disk.device_bytes) // 2
    )
    assert chosen.placement == "disk"
    assert choose_placement(readers, "auto", "cpu", None, free=10 * device.device_bytes).placement == "device"
    assert "2 workers" in (device.refusal(device.device_bytes + 1, workers=2) or "")


@pytest.mark.parametrize("path", SELECTION_PATHS)
def test_a_nan_task_vector_is_a_candidate_error_naming_the_tensor(path) -> None:
    """A parent with NaN weights has no magnitude threshold: the selection says so, naming the
    model and tensor, instead of failing inside torch (a failed trial with its reason)."""
    from evomerge.errors import CandidateError

    parent, base = _tied_pair(torch.float32)
    parent.view(-1)[1000:1010] = float("nan")
    stats = _stats(parent, base, path, label="p0: layers.0.w")
    with pytest.raises(CandidateError, match=r"task vector of p0: layers.0.w has 10 NaN entries"):
        stats.cut_at(100)


# --- host reads: on a GPU each read of a device value waits for every queued kernel ----------------
# On a CPU nothing waits, but the same Python calls (tolist, item, int(), float(), bool()) are what
# would: counted here, they bound the host syncs of a candidate's selections on a GPU.
HOST_READS = ("tolist", "item", "__int__", "__float__", "__bool__", "__index__")


@pytest.fixture
def host_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


SMALL_CHUNK = 1000  # entries per pass step: the 21,000-entry pair below spans 21 chunks


@pytest.fixture
def small_chunks(monkeypatch) -> None:
    from evomerge.merge import kernels

    monkeypatch.setattr(kernels, "chunk_entries", lambda width, device: SMALL_CHUNK)


@pytest.mark.parametrize("path", SELECTION_PATHS)
def test_tie_search_reads_the_device_once_per_tensor(path, small_chunks, host_reads) -> None:
    """The tie at a cut is found in one pass with the running count kept on the device: one read
    for the whole tensor, where it was one per chunk (~3,500 per 7B TIES candidate)."""
    parent, base = _tied_pair(torch.bfloat16)
    stats = _stats(parent, base, path)
    assert stats.chunk == SMALL_CHUNK and stats.numel > 20 * SMALL_CHUNK
    magnitudes = (parent.float() - base.float()).abs().flatten()
    reference = magnitudes.sort(stable=True)
    value = reference.values[stats.numel // 2]  # a magnitude thousands of entries share
    equal = int((magnitudes == value).sum())
    rank = int((magnitudes < value).sum()) + equal - 2  # its next-to-last entry: in the last chunks
    cut = stats.cut_at(rank)
    assert 0 < cut.tie < cut.ties - 1  # inside a run of equal magnitudes: the search is needed
    assert reference.indices[rank] > 15 * SMALL_CHUNK
    host_reads.clear()
    assert stats.tie_position(cut) == reference.indices[rank].tolist()
    assert host_reads.count("tolist") == 2  # the search's one read, and the reference's above
    assert len(host_reads) == 2


def test_an_edge_cut_reads_nothing_and_a_bracket_cut_once(small_chunks, host_reads) -> None:
    """The index keeps its edges on the host: a rank on an edge is answered without touching the
    device (it read a device-resident edge before), one inside a bracket with one read."""
    parent, base = _tied_pair(torch.bfloat16)
    stats = _stats(parent, base, "indexed")
    index = stats.index
    on_edge = next(b for b, u in zip(index.below[1:-1], index.upto[1:-1], strict=True) if u > b)
    in_bracket = next(u for u, b in zip(index.upto[:-1], index.below[1:], strict=True) if b > u)
    host_reads.clear()
    stats.cut_at(on_edge)
    assert host_reads == []
    stats.cut_at(in_bracket)
    assert host_reads == ["tolist"]


@pytest.mark.parametrize("path", SELECTION_PATHS)
def test_index_and_l1_norms_read_the_device_once(path, small_chunks, host_reads) -> None:
    """The index's counts, NaN count and L1 total, and a band's L1 norm, are summed over the
    chunks on the device and read once (they were read chunk by chunk)."""
    parent, base = _tied_pair(torch.float32)
    stats = _stats(parent, base, path)
    if path == "indexed":
        host_reads.clear()
        assert stats.index.below[-1] == stats.numel
        assert host_reads == ["tolist"]
    host_reads.clear()
    kept, total = stats.l1_between(0.01, math.inf)
    assert len(host_reads) == 1
    magnitudes = (parent.float() - base.float()).abs().flatten().double()
    assert kept == pytest.approx(magnitudes[magnitudes >= 0.01].sum().tolist(), rel=1e-12)
    assert total == pytest.approx(magnitudes.sum().tolist(), rel=1e-12)
