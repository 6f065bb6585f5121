"""The unet families (SD 1.x/2.x, SD-Turbo, the shapes world, SDXL, text-to-video) and the
entry point that loads any family's backend (`PipelineBackend.from_config`, `BACKENDS`).

The flow-matching families (SD3, FLUX.1, Wan) live in `flow`; both build on `base`.
"""

from __future__ import annotations

import logging

import torch

from find_ray.backends.base import DiffusersBackend
from find_ray.backends.families import AUTO_FAMILY
from find_ray.backends.flow import FlowBackend, FluxBackend, SD3Backend, WanBackend
from find_ray.backends.loading import load_pipeline
from find_ray.config import ModelConfig

log = logging.getLogger(__name__)


class PipelineBackend(DiffusersBackend):
    """A text-to-image unet pipeline (SD 1.x/2.x, SD-Turbo, the shapes world); DDIM's eta."""

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> DiffusersBackend:
        """The backend of the pipeline's family (BACKENDS), loaded with `cfg`'s options."""
        pipe = load_pipeline(cfg)
        backend = BACKENDS[AUTO_FAMILY[type(pipe).__name__]]
        return backend(
            pipe,
            cfg.steps,
            cfg.guidance,
            cfg.eta,
            height=cfg.height,
            width=cfg.width,
            num_frames=cfg.num_frames,
        )


class SDXLBackend(PipelineBackend):
    """SDXL (and SDXL-Turbo): two text encoders; the prompt embedding is the pooled one."""

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """text_encoder_2's projected pooled output (B, projection_dim), the embedding SDXL
        itself conditions on (its `text_embeds`); the per-token states of both encoders are
        not pooled into it."""
        pooled = self.pipe.encode_prompt(
            prompts, device=self.pipe._execution_device, do_classifier_free_guidance=False
        )[2]
        return pooled.float().cpu()


class VideoBackend(PipelineBackend):
    """Text-to-video (TextToVideoSDPipeline, AnimateDiffPipeline): z_T is (C, F, H, W) and
    `generate` returns videos (B, F, 3, H, W) in [0, 1]."""

    output = "frames"

    def _latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        self.call_args["num_frames"] = self.num_frames
        h, w = self._latent_hw(height, width)
        return (self.denoiser.config.in_channels, self.num_frames, h, w)


class T2VBackend(VideoBackend):
    """TextToVideoSDPipeline (legacy: diffusers keeps it under pipelines/deprecated; Wan is the
    text-to-video default). Its scheduler steps the batch's frames as one (B*F) batch, so a
    per-video generator list does not fit: its sampler noise (eta > 0, ancestral schedulers) is
    seeded per call by the first seed. With DDIM eta 0 (its default) there is none."""

    def __init__(self, *args, **kwargs) -> None:
        log.warning(
            "model.family t2v: TextToVideoSDPipeline is legacy (diffusers moved it to "
            "pipelines/deprecated); Wan 2.1 (model.family wan, configs/wan.yaml) is the "
            "text-to-video default"
        )
        super().__init__(*args, **kwargs)

    def _generators(self, seeds: list[int]) -> torch.Generator:
        return torch.Generator().manual_seed(seeds[0])


BACKENDS: dict[str, type[DiffusersBackend]] = {  # family (families.AUTO_FAMILY) -> backend
    "sd": PipelineBackend,
    "sdxl": SDXLBackend,
    "t2v": T2VBackend,
    "animatediff": VideoBackend,
    "sd3": SD3Backend,
    "flux": FluxBackend,
    "wan": WanBackend,
    "flow": FlowBackend,
}
