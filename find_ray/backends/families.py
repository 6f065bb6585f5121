"""Model families: which diffusers pipeline classes each `model.family` accepts.

`auto` takes the family from model_index.json's `_class_name`. `turbo` is SD-Turbo /
SDXL-Turbo: an SD or SDXL pipeline sampled in 1-4 steps with guidance 0 and "trailing"
timestep spacing, as their model cards do.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from find_ray.config import MODEL_SCHEDULERS
from find_ray.errors import ModelPathError

log = logging.getLogger(__name__)
AUTO_FAMILY = {
    "ShapesPipeline": "sd",
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "TextToVideoSDPipeline": "t2v",
    "AnimateDiffPipeline": "animatediff",
}
FAMILY_CLASSES = {
    "sd": ("StableDiffusionPipeline", "ShapesPipeline"),
    "sdxl": ("StableDiffusionXLPipeline",),
    "turbo": ("StableDiffusionPipeline", "StableDiffusionXLPipeline"),
    "t2v": ("TextToVideoSDPipeline",),
    "animatediff": ("AnimateDiffPipeline",),
}


def resolve_family(family: str, class_name: str, where: str) -> str:
    """The family to drive the pipeline `class_name` found at `where` with (`family` or auto)."""
    if family == "auto":
        if class_name not in AUTO_FAMILY:
            raise ModelPathError(
                f"{where} holds a {class_name}; supported: {', '.join(AUTO_FAMILY)}"
            )
        return AUTO_FAMILY[class_name]
    if class_name not in FAMILY_CLASSES[family]:
        raise ModelPathError(
            f"model.family {family!r} but {where} holds a {class_name} "
            f"(expected {' or '.join(FAMILY_CLASSES[family])}; model.family=auto picks it)"
        )
    return family


def configure_scheduler(pipe: Any, scheduler: str, family: str) -> None:
    """Swaps in the `model.scheduler` class (if set, same config) and gives turbo models the
    "trailing" timestep spacing their model cards use."""
    import diffusers

    current = pipe.scheduler
    cls = getattr(diffusers, MODEL_SCHEDULERS[scheduler]) if scheduler else type(current)
    changes = {}
    if family == "turbo":
        if "timestep_spacing" in inspect.signature(cls.__init__).parameters:
            changes["timestep_spacing"] = "trailing"
        else:
            log.info("turbo: %s has no timestep_spacing; kept as is", cls.__name__)
    if scheduler or changes:
        pipe.scheduler = cls.from_config(current.config, **changes)
