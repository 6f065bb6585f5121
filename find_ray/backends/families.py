"""Model families: which pipeline classes each `model.family` accepts, and what each family's
sampler settings must be (checked from the config alone, before any weights load).

`auto` takes the family from model_index.json's `_class_name`. `turbo` is SD-Turbo /
SDXL-Turbo: an SD or SDXL pipeline sampled in 1-4 steps with guidance 0 and "trailing"
timestep spacing, as their model cards do. `sd3`, `flux`, `wan` and `flow` are flow-matching.

A new pipeline joins a family with one AUTO_FAMILY line (a class of this project, which
diffusers cannot import by name, also names its module in PROJECT_PIPELINES): e.g. a
flow-matching shapes model called like SD3's pipeline is `"ShapesFlowPipeline": "flow"`.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from find_ray.config import MODEL_SCHEDULERS, ModelConfig
from find_ray.errors import ConfigError, ModelPathError

log = logging.getLogger(__name__)
AUTO_FAMILY = {  # model_index.json's _class_name -> family (pipeline.BACKENDS: its backend)
    "ShapesPipeline": "sd",
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "TextToVideoSDPipeline": "t2v",
    "AnimateDiffPipeline": "animatediff",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
    "WanPipeline": "wan",
    "ShapesFlowPipeline": "flow",
}
PROJECT_PIPELINES = {  # class -> its module
    "ShapesPipeline": "find_ray.shapes.pipeline",
    "ShapesFlowPipeline": "find_ray.shapes.flow_pipeline",
}
FAMILY_CLASSES = {
    **{f: tuple(c for c, g in AUTO_FAMILY.items() if g == f) for f in AUTO_FAMILY.values()},
    "turbo": ("StableDiffusionPipeline", "StableDiffusionXLPipeline"),
}
FLOW_FAMILIES = ("sd3", "flux", "wan", "flow")
# the released models' pixels per transformer token side: an 8x VAE times 2x2 patches (FLUX:
# its 2x2 packing); the loaded pipeline's own geometry is checked again when it loads
TOKEN_PIXELS = {"sd3": 16, "flux": 16, "wan": 16}
WAN_FRAME_STRIDE = 4  # Wan's VAE: the first frame, then one latent frame per 4 frames


def resolve_family(family: str, class_name: str, where: str) -> str:
    """The family to drive the pipeline `class_name` found at `where` with (`family` or auto)."""
    if family == "auto":
        if class_name not in AUTO_FAMILY:
            raise ModelPathError(
                f"{where} holds a {class_name}; supported: {', '.join(AUTO_FAMILY)}"
            )
        return AUTO_FAMILY[class_name]
    expected = FAMILY_CLASSES.get(family, ())
    if class_name not in expected:
        raise ModelPathError(
            f"model.family {family!r} but {where} holds a {class_name} (expected "
            f"{' or '.join(expected) or 'a class registered for it in AUTO_FAMILY, none yet'}; "
            "model.family=auto picks it)"
        )
    return family


def reject_eta(eta: float) -> None:
    """One-line ConfigError for eta > 0: a flow-matching sampler has no per-step noise."""
    if eta > 0:
        raise ConfigError(
            f"config key 'model.eta': {eta:g}, but flow-matching models (sd3, flux, wan) "
            "sample an ODE with no per-step noise and their pipelines take no eta; set "
            "model.eta=0"
        )


def size_error(key: str, model: str, multiple: int, why: str, got: int) -> ConfigError:
    return ConfigError(
        f"config key 'model.{key}': {model} needs a multiple of {multiple} ({why}), got {got}"
    )


def check_sampler(cfg: ModelConfig, family: str) -> None:
    """One-line ConfigError for settings a flow-matching family cannot take: eta > 0, a
    noise-prediction scheduler, sizes its latent patches (FLUX: packing) or Wan's frame
    compression do not divide."""
    if family not in FLOW_FAMILIES:
        return
    reject_eta(cfg.eta)
    if cfg.scheduler:
        raise ConfigError(
            f"config key 'model.scheduler': {cfg.scheduler!r} is a noise-prediction sampler; "
            f"a flow-matching model ({family}) keeps its folder's scheduler: set "
            "model.scheduler=''"
        )
    multiple = TOKEN_PIXELS.get(family, 1)
    why = "an 8x VAE and 2x2 latent patches" + (" packed into tokens" if family == "flux" else "")
    for key in ("height", "width"):
        if getattr(cfg, key) % multiple:
            raise size_error(key, f"{family} (pixels)", multiple, why, getattr(cfg, key))
    if family == "wan" and (cfg.num_frames - 1) % WAN_FRAME_STRIDE:
        raise size_error(
            "num_frames",
            "wan (num_frames - 1)",
            WAN_FRAME_STRIDE,
            "its VAE keeps the first frame and packs each 4 after it into one latent frame; "
            "e.g. 81 or 33",
            cfg.num_frames,
        )


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
