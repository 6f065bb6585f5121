"""Finding, checking and loading a diffusers pipeline: a local folder or, online, a hub id.

`check_model` reads model_index.json only (no weights), so the driver and Serve can fail in
one line before any actor starts. `load_pipeline` silences the libraries' progress bars and
logs (actors must not draw "Loading pipeline components..." bars) and applies the
`model.*` options where the pipeline supports them.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from find_ray.backends.families import (
    PROJECT_PIPELINES,
    check_sampler,
    configure_scheduler,
    resolve_family,
)
from find_ray.config import SHAPES_FLOW_MODEL, SHAPES_MODEL, ModelConfig
from find_ray.errors import ModelPathError

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

log = logging.getLogger(__name__)
SHAPES_MODEL_DIR = Path(__file__).resolve().parent.parent / "shapes" / "model"
SHIPPED = {  # model.path aliases of the folders shipped inside the package -> how to make them
    SHAPES_MODEL: (SHAPES_MODEL_DIR, "find-ray pretrain-shapes"),
    SHAPES_FLOW_MODEL: (
        SHAPES_MODEL_DIR.with_name("model_flow"),
        "find-ray pretrain-shapes --flow",
    ),
}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
HOW = "download it (`huggingface-cli download HUB_ID --local-dir DIR`) and set model.path=DIR"


@dataclass(frozen=True)
class ModelSource:
    """Where a pipeline comes from: what `from_pretrained` gets, and its pipeline class."""

    where: str  # a local folder or a hub id
    class_name: str  # model_index.json's _class_name
    local: bool


def hub_offline() -> bool:
    from find_ray.rewards.hub import offline

    return offline()


def _class_name(index: Path) -> str:
    return json.loads(index.read_text())["_class_name"]


def _hub_index(repo_id: str) -> Path:
    """model_index.json of a hub repo (the cached copy when offline or the hub does not
    answer: `rewards.hub.unavailable`)."""
    from huggingface_hub import hf_hub_download

    from find_ray.rewards.hub import hub_file, unavailable

    index = hub_file(repo_id, "model_index.json")
    why = unavailable(index)
    if why:
        raise ModelPathError(
            f"model.path {repo_id!r}: no folder {Path(repo_id).resolve()}, and the hub pipeline "
            f"{index.what} {why}; {HOW.replace('HUB_ID', repo_id)}"
        )
    try:
        local = index.cached or hub_offline()
        return Path(hf_hub_download(repo_id, "model_index.json", local_files_only=local))
    except Exception as e:  # no such repo, gated, the network went: all one line for the user
        raise ModelPathError(
            f"model.path {repo_id!r}: no folder {Path(repo_id).resolve()} and no hub pipeline "
            f"({type(e).__name__}); {HOW.replace('HUB_ID', repo_id)}"
        ) from None


def locate_model(path: str) -> ModelSource:
    """The pipeline `model.path` names: "shapes" or "shapes-flow" (the shipped models), a
    local folder, or a hub id (online or cached)."""
    folder = SHIPPED[path][0] if path in SHIPPED else Path(path).expanduser()
    if (folder / "model_index.json").is_file():
        return ModelSource(str(folder), _class_name(folder / "model_index.json"), True)
    if path in SHIPPED:
        raise ModelPathError(f"no {path} model at {folder} (run `{SHIPPED[path][1]}`)")
    if HUB_ID.fullmatch(path) and not folder.exists():
        return ModelSource(path, _class_name(_hub_index(path)), False)
    raise ModelPathError(
        f"model.path: no diffusers pipeline (model_index.json) at {folder.resolve()}; {HOW}, "
        "or give a hub id when online"
    )


def resolve_model_path(path: str) -> Path:
    """The local folder of a pipeline (the shipped shapes model for "shapes")."""
    source = locate_model(path)
    if not source.local:
        raise ModelPathError(f"model.path {path!r} is a hub id, not a local folder; {HOW}")
    return Path(source.where)


def check_model(cfg: ModelConfig) -> str:
    """The family of the pipeline `cfg` names, from model_index.json alone (no weights).

    Raises a one-line ModelPathError for a missing model or one that does not fit
    `model.family`, a ConfigError for sampler settings the family cannot take (flow-matching:
    eta, scheduler, sizes); "" for the simulated backend.
    """
    if cfg.backend != "pipeline":
        return ""
    source = locate_model(cfg.path)
    family = resolve_family(cfg.family, source.class_name, source.where)
    check_sampler(cfg, family)
    return family


def quiet_libraries() -> None:
    """No progress bars and only errors from diffusers, transformers and huggingface_hub."""
    import diffusers.utils.logging as diffusers_logging
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.disable_progress_bar()
        library.set_verbosity_error()
    hub_utils.disable_progress_bars()
    hub_utils.logging.set_verbosity_error()


def load_pipeline(model: ModelConfig | str) -> DiffusionPipeline:
    """The pipeline `model` names (a ModelConfig, or a path with default options), ready."""
    import importlib

    from diffusers import DiffusionPipeline

    cfg = model if isinstance(model, ModelConfig) else ModelConfig(path=model)
    source = locate_model(cfg.path)
    family = resolve_family(cfg.family, source.class_name, source.where)
    check_sampler(cfg, family)
    quiet_libraries()
    module = PROJECT_PIPELINES.get(source.class_name)  # diffusers finds its own classes
    cls = (
        getattr(importlib.import_module(module), source.class_name) if module else DiffusionPipeline
    )
    pipe = cls.from_pretrained(
        source.where,
        dtype=getattr(torch, cfg.dtype),
        local_files_only=source.local or hub_offline(),
    )
    pipe.set_progress_bar_config(disable=True)
    if family == "wan":  # Wan's VAE decodes in float32 (its model card loads it so)
        pipe.vae.to(torch.float32)
    configure_scheduler(pipe, cfg.scheduler, family)
    apply_options(pipe, cfg)
    return pipe


def apply_options(pipe: DiffusionPipeline, cfg: ModelConfig) -> None:
    """Device placement (or model CPU offload), attention slicing, VAE tiling and slicing, and
    a compiled denoiser (the unet, or the transformer of a DiT pipeline)."""
    if cfg.cpu_offload and cfg.device.startswith("cuda") and torch.cuda.is_available():
        pipe.enable_model_cpu_offload(device=cfg.device)
    else:
        if cfg.cpu_offload:
            log.info("model.cpu_offload ignored: it needs a CUDA model.device (%s)", cfg.device)
        pipe.to(cfg.device)
    if cfg.attention_slicing:
        pipe.enable_attention_slicing()
    vae = getattr(pipe, "vae", None)
    for option, method in (("vae_tiling", "enable_tiling"), ("vae_slicing", "enable_slicing")):
        if getattr(cfg, option) and hasattr(vae, method):
            getattr(vae, method)()
        elif getattr(cfg, option):
            log.info("model.%s ignored: %s has no VAE that does it", option, type(pipe).__name__)
    if cfg.compile:
        denoisers = [getattr(pipe, n, None) for n in ("unet", "transformer", "transformer_2")]
        for denoiser in [d for d in denoisers if d is not None]:  # Wan 2.2 A14B has two
            denoiser.compile()
        if not any(d is not None for d in denoisers):
            log.info("model.compile ignored: %s has no unet or transformer", type(pipe).__name__)
