"""IRT calibration of the skills suite from the full-eval-split answers already measured.

Every model scored by evaluate.py / baselines.py (base, experts, baselines, search knees) left its
0/1 answer to each scored eval item in results/responses/TAG/NAME.json; these rows are the response
matrix (the items every model answered), fitted here (2PL, dimension chosen by held-out likelihood)
without scoring any model again. The calibration goes to results/calibration.json.

    python experiments/smollm2_skills/calibration.py [--tag full-bfloat16]

(`evomerge calibrate fitness/skills.yaml --subjects ... --space SPACE --merges N --dtype bfloat16`
scores a population itself, space-filling merges included; it costs one full-split scoring per
subject.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from build_base import DEFAULT_ROOT  # noqa: E402
from evaluate import RESULTS_DIR, SUITE  # noqa: E402

from evomerge.fitness.banks.suite import FitnessSuite  # noqa: E402
from evomerge.fitness.irt.calibration import fit_calibration, subject_sha256  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default="full-bfloat16")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "calibration.json")
    parser.add_argument("--dims", default="1,2,3,5")
    args = parser.parse_args()
    suite = FitnessSuite.load(SUITE)
    files = sorted((RESULTS_DIR / "responses" / args.tag).glob("*.json"))
    answered = [json.loads(path.read_text()) for path in files]
    # the items every subject answered: all eval items after a full-split scoring, else the subset
    tasks = {t: [i for i in suite.eval_ids[t] if all(i in a for a in answered)] for t in suite.tasks}
    item_ids = [i for task in suite.tasks for i in tasks[task]]
    rows, subjects = [], []
    for path, answers in zip(files, answered, strict=True):
        rows.append([answers[i] for i in item_ids])
        info = {"name": path.stem, "dtype": args.tag.split("-")[-1]}
        model_dir = DEFAULT_ROOT / path.stem
        recipe = RESULTS_DIR / "recipes" / f"{path.stem}.yaml"
        if model_dir.is_dir():
            info |= {"path": str(model_dir.resolve()), "sha256": subject_sha256(model_dir)}
        elif recipe.is_file():
            info["recipe"] = recipe.read_text()
        subjects.append(info)
    calibration = fit_calibration(
        np.array(rows, dtype=float),
        item_ids,
        tasks,
        subjects,
        dims=[int(d) for d in args.dims.split(",")],
        groups={i: suite.items[i].group or "" for i in item_ids},
        suite=suite.name,
        bank_hashes=suite.bank_hashes(),
    )
    calibration.save(args.out)
    shape = f"{len(subjects)} subjects x {len(item_ids)} items"
    print(f"{args.out}: {shape}, IRT dimension {calibration.irt.dim}")


if __name__ == "__main__":
    main()
