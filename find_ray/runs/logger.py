"""The run logger both training paths share: a progress bar, TensorBoard, the metrics history."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm


class RunLogger:
    """Logs each learner version's metrics to TensorBoard (`out/tensorboard`) and the history,
    and moves the bar to that version; `postfix` shows on the bar beside the latest reward."""

    def __init__(self, out: Path, total: int, initial: int = 0, desc: str = "find") -> None:
        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=initial)
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="update")
        self.history: list[dict[str, float]] = []
        self.versions: list[int] = []  # the learner version of each history entry
        self.last_reward = math.nan  # an update right after another may have no new rollouts

    def log(self, version: int, metrics: dict[str, float], **postfix: object) -> None:
        self.history.append(metrics)
        self.versions.append(version)
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, version)
        self.last_reward = metrics.get("reward_mean", self.last_reward)
        self.bar.update(version - self.bar.n)
        self.bar.set_postfix(reward=f"{self.last_reward:.3f}", **postfix)

    def rewind(self, version: int) -> None:
        """Forgets the history after `version` (training goes on from a checkpoint there)."""
        keep = sum(v <= version for v in self.versions)
        self.history, self.versions = self.history[:keep], self.versions[:keep]
        self.bar.n = version
        self.bar.refresh()

    def image(self, tag: str, image: np.ndarray, version: int) -> None:
        """A uint8 H x W x 3 image (a labelled grid) at `version`."""
        self.writer.add_image(tag, image, version, dataformats="HWC")

    def eval_figures(self, figures: dict, version: int) -> None:
        """The evaluation's quality and shell figures (`eval.report.quality_and_shell`) as
        scalars `eval/<figure>/base` and `eval/<figure>/trained`."""
        for name, figure in figures.items():
            for policy in ("base", "trained"):
                values = figure[policy] if name == "shell" else {name: figure[policy]}
                for key, value in values.items():
                    self.writer.add_scalar(f"eval/{key}/{policy}", value, version)

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
