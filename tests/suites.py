"""Small suites built from the committed banks, for tests that score real items."""

from __future__ import annotations

from pathlib import Path

import yaml

from evomerge.fitness.banks.items import load_bank, write_bank

FITNESS = Path(__file__).resolve().parents[1] / "fitness"


def write_mini_suite(root: Path) -> Path:
    """Two tasks of 10 real eval items each (arithmetic, dates), 4 anchors per task."""
    arithmetic = [i for i in load_bank(FITNESS / "bigbench_arithmetic.jsonl") if i.split == "eval"][:10]
    dates = [i for i in load_bank(FITNESS / "bigbench_date_understanding.jsonl") if i.split == "eval"][:10]
    write_bank(arithmetic, root / "arith.jsonl")
    write_bank(dates, root / "dates.jsonl")
    spec = {
        "name": "mini",
        "banks": {"arith": {"path": "arith.jsonl"}, "dates": {"path": "dates.jsonl", "normalization": "sum"}},
        "tasks": {
            "arithmetic": {"banks": ["arith"], "anchors": 4},
            "dates": {"banks": ["dates"], "anchors": 4},
        },
        "estimator": "gpirt",
    }
    (root / "mini.yaml").write_text(yaml.safe_dump(spec))
    return root / "mini.yaml"
