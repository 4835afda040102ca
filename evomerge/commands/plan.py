"""`evomerge plan EXPERIMENT`: what a search's workers will hold and read, before starting one.

Everything comes from the experiment, its space and the checkpoints' safetensors headers:
nothing is loaded, so the plan of a 70B family prints in a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from evomerge.commands.inspect import Format, _print_json

# Reference bandwidths for the floor per candidate (bytes read / bandwidth), DESIGN.md.
HBM_BYTES_PER_S = 3.35e12  # H100 SXM
PCIE_BYTES_PER_S = 25e9  # PCIe 4.0 x16, sustained


def plan_payload(experiment_path: Path, device: str | None, free_gib: float | None) -> dict[str, Any]:
    """The plan as data: genes, models, tensors, bytes per placement and the chosen placement."""
    from evomerge.experiment import Experiment
    from evomerge.fitness.banks.suite import FitnessSuite
    from evomerge.merge.memory import PLACEMENTS, choose_placement, free_bytes, plan_memory, storage_dtype
    from evomerge.merge.memory import reader_bytes as weigh
    from evomerge.runtime.preflight import (
        live_dtype,
        local_worker_device,
        model_readers,
        search_plan,
        workers_per_device,
    )
    from evomerge.space import SearchSpace

    experiment = Experiment.load(experiment_path)
    workers = experiment.spec.workers
    space = SearchSpace.load(experiment.space_path)
    device = device or local_worker_device(workers.gpus_per_worker)
    readers = model_readers(space)
    dtype = live_dtype(workers.dtype, device)
    free = int(free_gib * 1024**3) if free_gib is not None else free_bytes(device)
    sharing = workers_per_device(workers.count, device)
    placements = []
    for placement in PLACEMENTS[1:]:
        plan = plan_memory(readers, placement, device, dtype)  # type: ignore[arg-type]
        # device: reads from HBM (or RAM); host: every input crosses PCIe; disk: page cache or storage
        bandwidth = HBM_BYTES_PER_S if placement == "device" else PCIE_BYTES_PER_S
        placements.append(
            {
                "placement": placement,
                "device_bytes": plan.device_bytes,
                "host_bytes": plan.host_bytes,
                "read_bytes_per_candidate": plan.read_bytes_per_candidate,
                "floor_s_per_candidate_gpu": plan.read_bytes_per_candidate / bandwidth,
                "fits": plan.refusal(free, sharing) is None,
            }
        )
    chosen = choose_placement(readers, workers.placement, device, dtype, free, sharing)
    evaluation = search_plan(experiment, FitnessSuite.load(experiment.suite_path))
    rungs = evaluation.rung_plan()
    budget, promotion = experiment.spec.budget, experiment.spec.promotion
    return {
        "experiment": experiment.name,
        "method": space.spec.method,
        "genes": space.dim,
        "gene_names": space.gene_names,  # gene i is the Optuna param g{i:04d} of the run's trials
        "models": [
            {"path": str(r.path), "dtype": str(storage_dtype(r)).removeprefix("torch."), "bytes": weigh(r)}
            for r in readers
        ],
        "tensors": len(readers[0].tensor_names),
        "device": device,
        "workers_on_device": sharing,
        "free_bytes": free,
        "placements": placements,
        "chosen": chosen.placement,
        "refusal": chosen.refusal(free, sharing),
        "fitness": {
            "estimator": evaluation.estimator,  # the suite's, or what `auto` chose
            "evaluation": evaluation.describe(),
            "items_per_trial": evaluation.items_per_trial,  # the anchors every candidate is scored on
            "rung_items": rungs.sizes() if rungs else [],  # items per promoted trial, rung by rung
            "promotion_share": promotion.share if promotion else 0.0,
            "budget_items": budget.items,
            "budget_trials": budget.trials,
        },
    }


def plan(
    experiment: Path = typer.Argument(..., help="Experiment YAML (see experiments/)."),
    device: str | None = typer.Option(
        None, "--device", help="Plan for this device (default: the local one)."
    ),
    free_gib: float | None = typer.Option(
        None, "--free-gib", help="Plan for this much free device memory (default: measured)."
    ),
    fmt: Format = typer.Option(Format.table, "--format", help="table (for people) or json (for scripts)."),
) -> None:
    """Print the genes, the models and, per placement, the bytes a worker holds and reads."""
    from rich.console import Console
    from rich.table import Table

    from evomerge.merge.memory import human_bytes

    data = plan_payload(experiment, device, free_gib)
    if fmt == Format.json:
        _print_json(data)
        return
    console = Console()
    shown = ", ".join(data["gene_names"][:4]) + (", ..." if data["genes"] > 4 else "")
    console.print(f"[bold]{data['experiment']}[/]: {data['method']}, {data['genes']} genes ({shown})")
    models = Table("model", "dtype", "size", box=None)
    for model in data["models"]:
        models.add_row(Path(model["path"]).name, model["dtype"], human_bytes(model["bytes"]))
    console.print(models)
    console.print(
        f"{data['tensors']} tensors per model; {data['workers_on_device']} worker(s) on {data['device']} "
        f"with {human_bytes(data['free_bytes'])} free"
    )
    table = Table("placement", "on device", "on host", "read/cand", "GPU floor", "fits")
    for row in data["placements"]:
        table.add_row(
            row["placement"],
            human_bytes(row["device_bytes"]),
            human_bytes(row["host_bytes"]),
            human_bytes(row["read_bytes_per_candidate"]),
            f"{1000 * row['floor_s_per_candidate_gpu']:.3g} ms",
            "yes" if row["fits"] else "no",
        )
    console.print(table)
    console.print(f"placement: {data['chosen']}")
    fitness = data["fitness"]
    line = f"fitness: {fitness['items_per_trial']} items per trial (the anchors)"
    if fitness["rung_items"]:
        sizes = ", ".join(map(str, fitness["rung_items"]))
        line += f"; promotion rungs of {sizes} items, at most {fitness['promotion_share']:.0%} of the items"
    if fitness["budget_items"]:
        line += f"; budget {fitness['budget_items']} items"
    console.print(line, soft_wrap=True)
    console.print(f"evaluation: {fitness['evaluation']}", soft_wrap=True)
    if data["refusal"]:
        console.print(data["refusal"], soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
