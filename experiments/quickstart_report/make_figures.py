"""Run the README's quickstart fresh and regenerate what the README shows of it.

    python experiments/quickstart_report/make_figures.py

A fresh run: a new cache (the demo family is built and its skills planted again, as on a first
use) and a new run directory. Writes, beside this file, the plots (`pareto.png`, `history.png`,
`coefficients.png`), the knee's recipe (`knee.yaml`, model paths relative to the cache) and
`numbers.json` (trials, front size, wall time, the knee). The README's quickstart paragraph is
`readme_paragraph(numbers)`; tests/test_quickstart.py checks that the README holds it verbatim.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
COMMAND = ["evomerge", "search", "experiments/quickstart.yaml"]
PLOTS = ("pareto.png", "history.png", "coefficients.png")


def readme_paragraph(numbers: dict[str, Any]) -> str:
    """The README's sentences about a quickstart run, from `numbers.json`."""
    knee = numbers["knee"]
    weights = ", ".join(f"{name} {w}" for name, w in knee["mean_weight"].items())
    estimates = " / ".join(f"{100 * v:.1f} %" for v in knee["estimates"].values())
    return (
        f"A fresh quickstart run ({numbers['date']}, {numbers['cpus']} CPU cores) took "
        f"{numbers['wall_s']:.0f} s with the demo family's first-use build ({numbers['build_s']:.0f} s "
        f"timed alone): {numbers['trials']} trials, {numbers['front_size']} on the front. Its knee, trial "
        f"{knee['trial']}, is a per-layer merge of {len(knee['mean_weight'])} experts (mean weight "
        f"{weights}) that scores {estimates} on {' / '.join(knee['estimates'])}; each parent scores "
        f"{numbers['parents_off_task']} on the other expert's task."
    )


def _run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def main() -> None:
    scratch = Path(tempfile.mkdtemp(prefix="evomerge-quickstart-"))
    env = {**os.environ, "EVOMERGE_CACHE": str(scratch / "cache")}
    run = scratch / "run"
    build = time.perf_counter()
    _run([sys.executable, "-c", _BUILD], env)  # the first-use cost, measured apart
    build_s = time.perf_counter() - build
    shutil.rmtree(scratch / "cache")  # the timed run below builds it again, as a first use does
    start = time.perf_counter()
    _run([*COMMAND, "--run-dir", str(run), "--quiet"], env)
    wall_s = time.perf_counter() - start
    status = json.loads(_run(["evomerge", "status", str(run), "--format", "json"], env))
    front = json.loads(_run(["evomerge", "front", str(run), "--format", "json"], env))
    _run(["evomerge", "export", str(run), "--knee", "--out", str(scratch / "knee.yaml"), "-q"], env)
    plots = scratch / "plots"
    _run(["evomerge", "plot", str(run), "--out", str(plots)], env)
    for name in PLOTS:
        shutil.copyfile(plots / name, HERE / name)
    recipe = (scratch / "knee.yaml").read_text().replace(str(scratch / "cache"), "$EVOMERGE_CACHE")
    (HERE / "knee.yaml").write_text(recipe)

    import yaml

    knee_row = next(r for r in front["front"] if r["number"] == front["knee"])
    models = yaml.safe_load(recipe)["models"]
    numbers = {
        "date": datetime.date.today().isoformat(),
        "cpus": os.cpu_count(),
        "command": " ".join(COMMAND),
        "wall_s": round(wall_s, 1),
        "build_s": round(build_s, 1),
        "trials": status["trials"]["complete"],
        "front_size": len(front["front"]),
        "knee": {
            "trial": front["knee"],
            "kind": knee_row["kind"],
            "estimates": knee_row["estimates"],
            "mean_weight": {
                Path(m["model"]).name: round(sum(w := _as_list(m["parameters"]["weight"])) / len(w), 2)
                for m in models
            },
        },
        "parents_off_task": _parents(run),
    }
    (HERE / "numbers.json").write_text(json.dumps(numbers, indent=1) + "\n")
    print(readme_paragraph(numbers))
    shutil.rmtree(scratch)


def _as_list(value: Any) -> list[float]:
    return value if isinstance(value, list) else [value]


def _parents(run: Path) -> str:
    """Each parent's estimate on the tasks it was not trained for, e.g. '43.8 % / 31.2 %'."""
    from evomerge.store import open_run

    store = open_run(run)
    off = []
    for trial in store.trials():
        if trial.user_attrs.get("kind") == "parent" and trial.values:
            own = trial.user_attrs["label"].removeprefix("expert_")
            pairs = zip(store.objectives, trial.values, strict=True)
            off += [f"{100 * v:.1f} %" for task, v in pairs if task != own]
    return " / ".join(off)


_BUILD = "from evomerge.space import SearchSpace; SearchSpace.load('search_spaces/quickstart_demo.yaml')"

if __name__ == "__main__":
    main()
