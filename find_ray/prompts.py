"""Prompt suites: the shapes world's train and held-out suites, or any file of prompts, and
the prompts a config trains on (checked against its reward before anything is loaded)."""

from __future__ import annotations

from pathlib import Path

from find_ray.algo.store import prompt_table
from find_ray.config import FindRayConfig
from find_ray.errors import ConfigError
from find_ray.rewards import check_prompts

SUITE_DIR = Path(__file__).resolve().parent / "shapes" / "prompts"


def load_suite(name: str) -> list[str]:
    """Prompts of a named suite (train | heldout) or of a text file, one prompt per line."""
    path = SUITE_DIR / f"{name}.txt" if (SUITE_DIR / f"{name}.txt").is_file() else Path(name)
    if not path.is_file():
        raise ConfigError(f"prompt suite {name!r} is neither train, heldout nor a file")
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def train_prompts(cfg: FindRayConfig) -> list[str]:
    """The prompts to learn (`train.prompts`, else the first `train.max_prompts` of
    `train.suite`), distinct and each one the reward can score."""
    prompts = list(cfg.train.prompts) or load_suite(cfg.train.suite)
    prompts = prompts[: cfg.train.max_prompts] if cfg.train.max_prompts else prompts
    check_prompts(cfg.reward, prompts)
    try:
        prompt_table(prompts)
    except ValueError as e:
        raise ConfigError(f"train.prompts: {e}") from None
    return prompts
