"""Prompt suites shipped with the shapes world (train and held-out), or any prompt file."""

from __future__ import annotations

from pathlib import Path

from find_ray.errors import ConfigError

SUITE_DIR = Path(__file__).resolve().parent / "prompts"


def load_suite(name: str) -> list[str]:
    """Prompts of a named suite (train | heldout) or of a text file, one prompt per line."""
    path = SUITE_DIR / f"{name}.txt" if (SUITE_DIR / f"{name}.txt").is_file() else Path(name)
    if not path.is_file():
        raise ConfigError(f"prompt suite {name!r} is neither train, heldout nor a file")
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]
