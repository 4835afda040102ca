"""The CUDA paths: every placement on a GPU gives the GPU disk merge's tensors; nothing but the
live model and a tensor's inputs stays on the device for host and disk placements. Skipped, with
the reason, on machines without CUDA (the CPU suite covers the same code on the CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from recipes import LIVE_CASES, recipes
from tiny import load_tensors, make_family

from evomerge.merge.io import merge_to_directory
from evomerge.merge.live import LiveMerger
from evomerge.recipe import MergeRecipe

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device here: the GPU placements (device, pinned-host streaming, disk) run only on a GPU",
)


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    return make_family(tmp_path_factory.mktemp("cuda"), n_parents=2, dtype=torch.bfloat16)


@pytest.mark.parametrize("placement", ["device", "host", "disk"])
@pytest.mark.parametrize("case", LIVE_CASES)
def test_gpu_placements_equal_the_gpu_disk_merge(case: str, placement: str, family, tmp_path) -> None:
    base, parents = family
    recipe = MergeRecipe.from_dict({**recipes(base, parents)[case], "dtype": "float32"})
    merge_to_directory(recipe, tmp_path / "out", device="cuda", progress=False)
    disk = load_tensors(tmp_path / "out")
    live = LiveMerger(base, parents, device="cuda", placement=placement, model_dtype=torch.float32)
    state = live.apply(recipe).state_dict()
    torch.cuda.synchronize()
    for name, tensor in disk.items():
        assert torch.equal(state[name].cpu(), tensor), f"{case}/{placement}: {name}"


@pytest.mark.parametrize("placement", ["host", "disk"])
def test_streamed_placements_keep_the_models_off_the_device(placement: str, family) -> None:
    base, parents = family
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    live = LiveMerger(base, parents, device="cuda", placement=placement)
    live.apply(MergeRecipe.from_dict({**recipes(base, parents)["ties"], "dtype": "float32"}))
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() - before
    assert held <= 1.2 * live.resident_bytes()["live"] + 1024**2  # the live model, not the parents
    if placement == "host":
        tensor = next(iter(next(iter(live._resident.values())).values()))
        assert tensor.device.type == "cpu" and tensor.is_pinned()
        # one page-locked buffer per model: the host holds the checkpoints' bytes (+ alignment), not
        # each tensor rounded up to a power of two
        held_tensors = [t for tensors in live._resident.values() for t in tensors.values()]
        buffers = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in held_tensors}
        assert len(buffers) == len(live._resident)
        assert sum(buffers.values()) <= live.resident_bytes()["models"] + 64 * len(held_tensors)


def test_a_warm_ties_candidate_syncs_at_most_a_few_times_per_tensor(family) -> None:
    """Host syncs of one warm TIES candidate on the device tier, counted by CUDA's sync debug mode:
    per parent tensor at most a bracket's selection and read, and the tie search's one read; the
    kernels' scalars are queued from pinned memory (a blocking copy per chunk synced before)."""
    import warnings

    base, parents = family
    recipe = MergeRecipe.from_dict({**recipes(base, parents)["ties"], "dtype": "float32"})
    live = LiveMerger(base, parents, device="cuda", placement="device")
    live.apply(recipe)  # builds the indexes, compiles the kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            live.apply(recipe)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    tensors = len(live.state_dict())
    assert len(syncs) <= 3 * tensors * len(parents), f"{len(syncs)} syncs for {tensors} tensors"
