"""Calibration artifacts: a response matrix, the IRT model fitted to it, and where it came from.

A calibration is one JSON file holding the subjects x items 0/1 matrix (null = missing), the
items' tasks and groups, the fitted (multidimensional) 2PL, every subject's ability (the
parents' abilities are what mp-IRT combines), and the sha256 of the banks and subjects it was
made from, so a calibration used with changed banks or re-trained parents is refused.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evomerge.atomic import write_json_atomic
from evomerge.errors import ConfigError
from evomerge.fitness.banks.items import file_sha256
from evomerge.fitness.irt.model import IRTModel, check_responses, choose_dim, fit_2pl

FORMAT = "evomerge-calibration/1"
DEFAULT_DIMS = (1, 2, 3, 5)


@dataclass
class Calibration:
    item_ids: list[str]
    tasks: dict[str, list[str]]  # task -> item ids (all in item_ids)
    subjects: list[dict[str, str]]  # {"name": ..., optional "path", "sha256"}
    responses: np.ndarray  # (subjects, items), NaN = missing
    irt: IRTModel
    thetas: np.ndarray  # (subjects, D)
    groups: dict[str, str] = field(default_factory=dict)  # item id -> stratum
    dim_scores: dict[int, float] = field(default_factory=dict)
    suite: str | None = None
    bank_hashes: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    @property
    def item_index(self) -> dict[str, int]:
        return {item_id: index for index, item_id in enumerate(self.item_ids)}

    def subject_names(self) -> list[str]:
        return [subject["name"] for subject in self.subjects]

    def theta_of(self, subject: str | Path) -> np.ndarray:
        """A calibration subject's ability, found by name or by (resolved) model path."""
        wanted = str(subject)
        resolved = str(Path(subject).resolve())
        for row, info in enumerate(self.subjects):
            if wanted == info["name"] or resolved == info.get("path"):
                return self.thetas[row]
        raise ConfigError(
            f"model {wanted!r} (a base or parent whose ability mp-IRT needs) is not a subject of "
            f"calibration {self.path or ''} (subjects: {self.subject_names()}); calibrate with the "
            "base and the parents among --subjects"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "suite": self.suite,
            "bank_hashes": self.bank_hashes,
            "subjects": self.subjects,
            "item_ids": self.item_ids,
            "tasks": self.tasks,
            "groups": self.groups,
            "responses": [[None if np.isnan(v) else int(v) for v in row] for row in self.responses],
            "irt": {**self.irt.to_dict(), "dim": self.irt.dim, "dim_scores": self.dim_scores},
            "thetas": self.thetas.tolist(),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        write_json_atomic(self.to_dict(), path)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        path = Path(path)
        data = read_json(path, "calibration")
        if data.get("format") != FORMAT:
            raise ConfigError(
                f"{path}: not an evomerge calibration (format {data.get('format')!r}, expected {FORMAT!r}); "
                "make one with `evomerge calibrate` or `evomerge irt fit`"
            )
        responses = np.array(
            [[np.nan if v is None else v for v in row] for row in data["responses"]], dtype=float
        ).reshape(len(data["subjects"]), len(data["item_ids"]))
        irt = IRTModel.from_dict(data["irt"])
        return cls(
            item_ids=data["item_ids"],
            tasks=data["tasks"],
            subjects=data["subjects"],
            responses=responses,
            irt=irt,
            thetas=np.asarray(data["thetas"], dtype=float).reshape(len(data["subjects"]), irt.dim),
            groups=data.get("groups", {}),
            dim_scores={int(k): v for k, v in data["irt"].get("dim_scores", {}).items()},
            suite=data.get("suite"),
            bank_hashes=data.get("bank_hashes", {}),
            path=path,
        )

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def check_suite(self, suite: Any) -> None:
        """Refuse a calibration made on other banks, or missing some of the suite's eval items."""
        where = self.path or "calibration"
        current = suite.bank_hashes()
        for bank, digest in current.items():
            if bank in self.bank_hashes and self.bank_hashes[bank] != digest:
                raise ConfigError(
                    f"{where} does not match bank {bank!r} ({suite.bank_path(bank)}): the bank changed "
                    f"since calibration (sha256 {digest[:12]} != {self.bank_hashes[bank][:12]}); "
                    "re-run evomerge calibrate"
                )
        known = set(self.item_ids)
        for task in suite.tasks:
            missing = [i for i in suite.eval_ids[task] if i not in known]
            if missing:
                raise ConfigError(
                    f"{where} does not match suite {suite.name!r}: {len(missing)} eval items of task "
                    f"{task!r} are not calibrated (e.g. {missing[0]!r}); re-run evomerge calibrate"
                )

    def check_subject(self, subject: str | Path) -> None:
        """Refuse a parent whose weights changed since it was calibrated."""
        resolved = str(Path(subject).resolve())
        for info in self.subjects:
            if info.get("path") == resolved and "sha256" in info:
                if subject_sha256(Path(subject)) != info["sha256"]:
                    raise ConfigError(
                        f"model {resolved} changed since calibration {self.path or ''}; its stored ability "
                        "is stale: re-run evomerge calibrate"
                    )
                return


def fit_calibration(
    responses: np.ndarray,
    item_ids: Sequence[str],
    tasks: dict[str, list[str]],
    subjects: Sequence[dict[str, str]],
    *,
    dims: Sequence[int] = DEFAULT_DIMS,
    groups: dict[str, str] | None = None,
    suite: str | None = None,
    bank_hashes: dict[str, str] | None = None,
    seed: int = 0,
) -> Calibration:
    """Choose D by held-out likelihood, fit the 2PL on every cell, bundle the artifact."""
    matrix = check_responses(responses)
    if matrix.shape != (len(subjects), len(item_ids)):
        raise ConfigError(
            f"responses shape {matrix.shape} != ({len(subjects)} subjects, {len(item_ids)} items)"
        )
    if len(subjects) < 2:
        raise ConfigError(f"calibration needs at least 2 subjects, got {len(subjects)}; add --subjects")
    usable = [d for d in dims if d < len(subjects)] or [1]
    dim, scores = choose_dim(matrix, usable, seed=seed) if len(usable) > 1 else (usable[0], {})
    irt, thetas = fit_2pl(matrix, dim)
    return Calibration(
        item_ids=list(item_ids),
        tasks={task: list(ids) for task, ids in tasks.items()},
        subjects=[dict(s) for s in subjects],
        responses=matrix,
        irt=irt,
        thetas=thetas,
        groups=dict(groups or {}),
        dim_scores=scores,
        suite=suite,
        bank_hashes=dict(bank_hashes or {}),
    )


def read_responses_csv(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """CSV: first column `subject`, one column per item id, values 0/1/empty."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"responses file {str(path)!r} does not exist")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows or not rows[0] or rows[0][0].strip() != "subject":
        raise ConfigError(f"{path}: the first column must be named 'subject', then one column per item id")
    item_ids = [c.strip() for c in rows[0][1:]]
    if not item_ids:
        raise ConfigError(f"{path}: no item columns after 'subject'")
    duplicates = sorted({i for i in item_ids if item_ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"{path}: duplicate item id column(s) {duplicates}")
    subjects, matrix = [], []
    values = {"0": 0.0, "1": 1.0, "": np.nan}
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(item_ids) + 1:
            raise ConfigError(f"{path}:{number}: {len(row)} cells, expected {len(item_ids) + 1}")
        parsed = []
        for item_id, cell in zip(item_ids, row[1:], strict=True):
            if cell.strip() not in values:
                raise ConfigError(
                    f"{path}:{number}: subject {row[0]!r}, item {item_id!r} has value {cell!r}; "
                    "responses must be 0, 1 or empty (missing)"
                )
            parsed.append(values[cell.strip()])
        subjects.append(row[0])
        matrix.append(parsed)
    if not subjects:
        raise ConfigError(f"{path}: no subject rows")
    return subjects, item_ids, np.array(matrix, dtype=float)


def subject_sha256(model_dir: Path) -> str:
    """One digest over a model directory's config and weight files (names and contents)."""
    digest = hashlib.sha256()
    for file in sorted(model_dir.iterdir()):
        if file.name == "config.json" or file.suffix == ".safetensors" or file.name.endswith(".gguf"):
            digest.update(file.name.encode())
            digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{what} file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConfigError(f"{what} file {path} is not valid JSON ({error.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} file {path} does not hold a JSON object")
    return data
