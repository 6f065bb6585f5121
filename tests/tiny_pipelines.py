"""Tiny random diffusers pipelines of each family, built from configs, with character-level
CLIP and T5 tokenizers written to disk (nothing is downloaded). The flow-matching families
(SD3, FLUX.1, Wan) have the real 16-channel latents, tiny T5 / umT5 encoders and their
models' own scheduler kinds.

`save_tiny(family, folder)` writes one with save_pretrained and returns its folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import (
    AnimateDiffPipeline,
    AutoencoderKL,
    AutoencoderKLWan,
    DDIMScheduler,
    DiffusionPipeline,
    EulerAncestralDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    MotionAdapter,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    TextToVideoSDPipeline,
    UNet2DConditionModel,
    UNet3DConditionModel,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    UMT5Config,
    UMT5EncoderModel,
)

from find_ray.backends.offline_tokenizer import char_tokenizer, t5_tokenizer
from find_ray.config import load_config
from tests.tiny_rewards import tiny_reward

TEXT_DIM = 16  # hidden size of each tiny text encoder
T5_DIM = 32  # d_model of the tiny T5 / umT5 encoders
BLOCKS = (8, 16)  # unet / vae channels; the VAE downsamples 2x (latent 8x8 -> image 16x16)


def _text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=32,
        projection_dim=TEXT_DIM,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _vae(latent_channels: int = 4, **extra) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=BLOCKS,
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        sample_size=16,
        **extra,
    )


def _unet(cross_attention_dim: int = TEXT_DIM, **extra) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=BLOCKS,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=2,
        norm_num_groups=8,
        **extra,
    )


def _ddim() -> DDIMScheduler:
    return DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, steps_offset=1)


def tiny_sd(scratch: Path) -> StableDiffusionPipeline:
    tokenizer = char_tokenizer(scratch / "tokenizer-src")
    return StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        tokenizer=tokenizer,
        unet=_unet(),
        scheduler=_ddim(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_turbo(scratch: Path) -> StableDiffusionPipeline:
    """SD-Turbo-like: an SD pipeline with an ancestral Euler scheduler (spacing set on load)."""
    pipe = tiny_sd(scratch)
    pipe.scheduler = EulerAncestralDiscreteScheduler(beta_schedule="scaled_linear", steps_offset=1)
    return pipe


def tiny_sdxl(scratch: Path) -> StableDiffusionXLPipeline:
    """Two text encoders (the second with a projection); the unet takes both (concatenated
    per-token states) and the pooled embedding plus 6 size ids as added conditioning."""
    tokenizer = char_tokenizer(scratch / "tokenizer-src")
    time_dim = 8
    return StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tokenizer)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=_unet(
            cross_attention_dim=2 * TEXT_DIM,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=6 * time_dim + TEXT_DIM,
        ),
        scheduler=_ddim(),
    )


def tiny_t2v(scratch: Path) -> TextToVideoSDPipeline:
    tokenizer = char_tokenizer(scratch / "tokenizer-src")
    unet = UNet3DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=BLOCKS,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    return TextToVideoSDPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_ddim(),
    )


def tiny_animatediff(scratch: Path) -> AnimateDiffPipeline:
    """An SD unet plus a motion adapter (the pipeline merges them into a UNetMotionModel)."""
    tokenizer = char_tokenizer(scratch / "tokenizer-src")
    adapter = MotionAdapter(
        block_out_channels=BLOCKS,
        motion_layers_per_block=1,
        motion_norm_num_groups=8,
        motion_num_attention_heads=2,
        motion_max_seq_length=8,
    )
    return AnimateDiffPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        tokenizer=tokenizer,
        unet=_unet(),
        motion_adapter=adapter,
        scheduler=_ddim(),
    )


def _t5_config(tokenizer, cls: type[T5Config] = T5Config) -> T5Config:
    return cls(
        vocab_size=len(tokenizer),
        d_model=T5_DIM,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )


def tiny_sd3(scratch: Path) -> StableDiffusion3Pipeline:
    """Two CLIP encoders with projections (their pooled outputs concatenated condition the
    transformer) and a T5 encoder; an MMDiT with 2x2 patches; flow-matching Euler (shift 3)."""
    clip = char_tokenizer(scratch / "tokenizer-src")
    t5 = t5_tokenizer(scratch / "t5-src")
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=T5_DIM,
        caption_projection_dim=16,
        pooled_projection_dim=2 * TEXT_DIM,
        pos_embed_max_size=16,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(16, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=CLIPTextModelWithProjection(_text_config(clip)),
        tokenizer=clip,
        text_encoder_2=CLIPTextModelWithProjection(_text_config(clip)),
        tokenizer_2=clip,
        text_encoder_3=T5EncoderModel(_t5_config(t5)),
        tokenizer_3=t5,
    )


def tiny_flux(scratch: Path, guidance_embeds: bool = True) -> FluxPipeline:
    """FLUX.1-dev-like (its transformer embeds the distilled guidance scale): a CLIP encoder
    (pooled) and a T5 encoder (per token); the transformer takes 2x2-packed 16-channel latents
    (64 features a token); flow-matching Euler with resolution-dependent shift."""
    clip = char_tokenizer(scratch / "tokenizer-src")
    t5 = t5_tokenizer(scratch / "t5-src")
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=T5_DIM,
        pooled_projection_dim=TEXT_DIM,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 4, 8),
    )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=_vae(16, shift_factor=0.1159, scaling_factor=0.3611),
        text_encoder=CLIPTextModel(_text_config(clip)),
        tokenizer=clip,
        text_encoder_2=T5EncoderModel(_t5_config(t5)),
        tokenizer_2=t5,
        transformer=transformer,
    )


def tiny_flux_schnell(scratch: Path) -> FluxPipeline:
    """FLUX.1-schnell-like: no guidance embedding (timestep-distilled, sampled without guidance)."""
    return tiny_flux(scratch, guidance_embeds=False)


def tiny_wan(scratch: Path) -> WanPipeline:
    """Wan 2.1-like: a umT5 encoder, the Wan VAE (8x spatial, 4x temporal: 5 frames -> 2 latent
    frames), a video DiT with (1, 2, 2) patches, and UniPC on flow sigmas (shift 3) as the
    Wan-AI folders ship."""
    t5 = t5_tokenizer(scratch / "t5-src")
    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=16,
        out_channels=16,
        text_dim=T5_DIM,
        freq_dim=16,
        ffn_dim=16,
        num_layers=1,
        rope_max_seq_len=32,
    )
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    return WanPipeline(
        tokenizer=t5,
        text_encoder=UMT5EncoderModel(_t5_config(t5, UMT5Config)),
        vae=vae,
        scheduler=scheduler,
        transformer=transformer,
    )


TINY = {
    "sd": tiny_sd,
    "turbo": tiny_turbo,
    "sdxl": tiny_sdxl,
    "t2v": tiny_t2v,
    "animatediff": tiny_animatediff,
    "sd3": tiny_sd3,
    "flux": tiny_flux,
    "flux-schnell": tiny_flux_schnell,
    "wan": tiny_wan,
}


def save_tiny(family: str, scratch: Path) -> Path:
    """A tiny random pipeline of `family` (a TINY key, seeded) saved under scratch/pipe; its
    folder."""
    torch.manual_seed(0)
    pipe: DiffusionPipeline = TINY[family](scratch)
    pipe.save_pretrained(scratch / "pipe")
    return scratch / "pipe"


def pack(z: torch.Tensor) -> torch.Tensor:
    """FLUX's packing written out: 2x2 patches of (B, C, H, W) -> (B, H/2 * W/2, 4C)."""
    b, c, h, w = z.shape
    patches = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), 4 * c)


def tiny_folders(tmp_path_factory) -> Callable[[str], Path]:
    """TINY key -> folder of its tiny pipeline, each built once (a module fixture's value)."""
    folders: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in folders:
            folders[family] = save_tiny(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return folders[family]

    return get


TINY_RUN = [  # overrides that shrink a shipped GPU config to a tiny model on 2 CPU cores
    "model.device=cpu",
    "model.dtype=float32",
    "model.height=0",
    "model.width=0",
    "model.num_frames=2",
    "reward.device=cpu",
    "reward.dtype=float32",
    "eval.quality.device=cpu",
    "ray.rollout_num_gpus=0",
    "ray.reward_num_gpus=0",
    "ray.rollout_num_cpus=0.5",
    "ray.num_rollout_actors=1",
    "ray.rollouts_per_task=4",
    "ray.grid_every=0",
    "ray.max_restarts=0",
    "train.prompts=[a red circle,two blue squares]",
    "train.iterations=2",
    "train.samples_per_prompt=4",
    "train.rollout_batch_size=4",
    "eval.samples_per_prompt=2",
    "eval.batch_size=4",
    "learner.drcm_pool=2",
    "learner.drcm_steps=2",
    "learner.loss.drcm_hidden=8",
]


SIZED = ["model.height=16", "model.width=16"]  # FLUX's default is 1024 px
SHIPPED = {  # shipped config -> (tiny pipeline, overrides that shrink it further, policy shape)
    "sd15": ("sd", [], (4, 8, 8)),
    "sdxl": ("sdxl", [], (4, 8, 8)),
    "sd-turbo": ("turbo", ["model.steps=1"], (4, 8, 8)),
    "t2v": ("t2v", [], (4, 2, 8, 8)),
    "sd35": ("sd3", [], (16, 8, 8)),
    "flux-schnell": ("flux-schnell", SIZED, (16, 8, 8)),
    "flux-dev": ("flux", SIZED, (16, 8, 8)),
    "wan": ("wan", ["model.height=32", "model.width=32", "model.num_frames=5"], (16, 2, 4, 4)),
}


def tiny_run_argv(tiny, config: str, folder) -> list[str]:
    """`find-ray train --config configs/<config>.yaml model.path=DIR ...`: the shipped config
    shrunk to its tiny pipeline on the CPU and scored by its own reward (and quality scorer),
    tiny weights in their real formats."""
    key, shrink, _ = SHIPPED[config]
    path = f"configs/{config}.yaml"
    argv = ["train", "--config", path, *TINY_RUN, f"model.path={tiny(key)}", "model.steps=2"]
    argv += tiny_reward(load_config(path).reward.name, folder / "reward")
    argv += tiny_reward("aesthetic", folder / "quality", key="eval.quality")
    return [*argv, *shrink, f"train.out_dir={folder / 'run'}"]
