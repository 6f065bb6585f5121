"""The bench's unit of work and of resumption: a cell is one method with one training seed
(and, while tuning, one grid point), run budget by budget.

A cell's folder holds its evaluations (`evaluations.json`, one per budget or snapshot, with the
per-sample figures the table's CIs and seed spread are computed from) and the training state
at the last budget it reached (`state.pt`, not committed: a cell without it starts again and
keeps the evaluations it has), and each evaluation's first images per prompt
(`images/<label>.npz`, what the report's before/after figures show). Each evaluation is
written after its state and images, so an interrupted cell resumes at its last evaluation and
never counts a budget twice.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from find_ray.eval.evaluate import PromptResult

STATE = "state.pt"
EVALUATIONS = "evaluations.json"
ELAPSED = "elapsed.json"  # wall-clock seconds spent on the cell, evaluations included
IMAGES = "images"
SHOWN = 6  # images kept per prompt and evaluation: the first eval samples, on the shared noise


@dataclass
class Evaluation:
    """One evaluated point of a cell: its costs and each eval sample's figures (prompt-major)."""

    label: str  # "4000 NFE", "10 it", "N(0, I)"
    budget: int  # the training-NFE budget it answers (0: an inference-time point)
    train_nfe: int
    inference_nfe: float  # per eval image
    wall_s: float  # training (or optimisation) time up to this point
    exact: list[list[float]]  # (prompts, samples)
    scores: list[list[float]]
    diversity: list[float]  # per prompt
    quality: list[list[float]] | None = None
    kl: float = math.nan  # of the noise distribution from N(0, I), where defined
    shell: float = math.nan  # mean ||z_T||^2 / d of the eval noise, where the method draws it
    # the mean reward of the method's own training samples since the previous point, by the
    # reward it trains on (its own sampler: FIND's policy, DDPO's eta = 1 chain, Flow-GRPO's SDE)
    train_reward: float = math.nan

    @classmethod
    def of(cls, label: str, results: list[PromptResult], **costs: Any) -> Evaluation:
        """From `evaluate`'s per-prompt results; `costs`: budget, train_nfe, inference_nfe,
        wall_s and optionally kl (the shell comes with the results)."""
        quality = None
        if results[0].quality is not None:
            quality = [r.quality.tolist() for r in results]
        shell = math.nan
        if results[0].shell is not None:
            shell = float(np.mean([r.shell.mean() for r in results]))
        return cls(
            label,
            exact=[r.exact.tolist() for r in results],
            scores=[r.scores.tolist() for r in results],
            diversity=[r.diversity for r in results],
            quality=quality,
            shell=shell,
            **costs,
        )

    def array(self, name: str) -> np.ndarray:
        """A per-sample figure (exact, scores, quality) as a (prompts, samples) array."""
        return np.asarray(getattr(self, name), dtype=float)


@dataclass(frozen=True)
class CellKey:
    """Which cell: a method, a training seed, and while tuning the grid point it tries."""

    method: str
    seed: int
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        point = ",".join(f"{k}={v}" for k, v in self.params)
        return f"{self.method}/{point + '/' if point else ''}seed{self.seed}"


@dataclass
class Cell:
    """A cell's folder under the bench's `cells/` (or `tuning/cells/`)."""

    key: CellKey
    folder: Path
    evaluations: list[Evaluation] = field(default_factory=list)

    @classmethod
    def open(cls, root: Path, key: CellKey) -> Cell:
        folder = root / key.name
        saved = folder / EVALUATIONS
        found = json.loads(saved.read_text()) if saved.is_file() else []
        return cls(key, folder, [Evaluation(**e) for e in found])

    @property
    def budgets_done(self) -> set[int]:
        return {e.budget for e in self.evaluations}

    def state(self) -> dict[str, Any] | None:
        """The training state saved with the last evaluation (None: start from scratch)."""
        path = self.folder / STATE
        return torch.load(path, weights_only=False) if path.is_file() else None

    def add(
        self,
        evaluation: Evaluation,
        state: dict[str, Any] | None = None,
        results: list[PromptResult] | None = None,
    ) -> None:
        """Saves the state the evaluation was taken at and the first `SHOWN` images per prompt
        of its `results`, then the evaluation (each atomically)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if state is not None:
            _atomic(self.folder / STATE, lambda tmp: torch.save(state, tmp))
        if results is not None:
            images = np.stack([np.stack(r.images[:SHOWN]) for r in results])
            path = self._images_path(evaluation.label)
            path.parent.mkdir(exist_ok=True)
            _atomic(path, lambda tmp: _save_npz(tmp, images))
        self.evaluations = [e for e in self.evaluations if e.label != evaluation.label]
        self.evaluations.append(evaluation)
        text = json.dumps([asdict(e) for e in self.evaluations], indent=1)
        _atomic(self.folder / EVALUATIONS, lambda tmp: tmp.write_text(text))

    def images(self, label: str) -> np.ndarray | None:
        """The saved images of evaluation `label`, (prompts, SHOWN, H, W, 3) uint8 (None: not
        saved)."""
        path = self._images_path(label)
        return np.load(path)["images"] if path.is_file() else None

    def _images_path(self, label: str) -> Path:
        return self.folder / IMAGES / f"{slug(label)}.npz"

    @property
    def elapsed_s(self) -> float:
        """Wall-clock seconds spent on the cell so far, its evaluations included."""
        path = self.folder / ELAPSED
        return float(json.loads(path.read_text())["elapsed_s"]) if path.is_file() else 0.0

    def add_elapsed(self, seconds: float) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"elapsed_s": self.elapsed_s + seconds})
        _atomic(self.folder / ELAPSED, lambda tmp: tmp.write_text(text))


def slug(text: str) -> str:
    """`text` as a file or folder name: each run of non-word characters becomes one `_`."""
    return re.sub(r"\W+", "_", text).strip("_")


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _save_npz(path: Path, images: np.ndarray) -> None:
    with path.open("wb") as f:  # a file, not a name: numpy would append ".npz" to the name
        np.savez_compressed(f, images=images)
